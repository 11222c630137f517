"""Generated protobuf modules of the rtgateway wire protocol (see events.proto)."""
