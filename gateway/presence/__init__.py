"""Presence: who is online, where and doing what, across instances, with privacy.

* ``core``: the sans-io rules (connections and grace, visibility, the watch
  index, population): no reactor, no I/O, time passed in;
* ``store``: the backend key layout, retention, export and erase;
* ``relations``: ``IRelationshipProvider`` and the default backend provider;
* ``cluster``: liveness, dead-instance clean-up and population (heartbeat);
* ``admin``: the ``/admin/presence`` resources.

The Twisted adapter is the ``presence`` plugin (plugins/presence.py); the
chapter is docs/Presence.md.
"""
