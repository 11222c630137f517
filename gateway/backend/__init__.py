"""Backends: the bus and store shared by gateway instances (see base.py)."""

from gateway.backend.base import Backend, BackendUnavailable, MessageHandler

__all__ = ["Backend", "BackendUnavailable", "MessageHandler"]
