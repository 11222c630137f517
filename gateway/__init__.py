"""rtgateway: a real-time gateway daemon for multiplayer games."""

__version__ = "0.1.0"

#: The WebSocket subprotocol this server speaks.
SUBPROTOCOL = "rtgateway.v1"
