#!/bin/sh
# Regenerates the protobuf modules. Run from the repository root after editing a .proto;
# commit the .proto, _pb2.py and _pb2.pyi together (pip install -e '.[dev]' brings grpcio-tools).
set -eu
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. protocol/*.proto
