#!/bin/sh
# Regenerates plugins/emotes_pb2.py and .pyi from emotes.proto (run from anywhere).
# Commit the .proto and both generated files together.
# Needs grpcio-tools: pip install -e '.[dev]' in the rtgateway checkout.
set -eu
cd "$(dirname "$0")"
python -m grpc_tools.protoc -I. --python_out=plugins --pyi_out=plugins emotes.proto
