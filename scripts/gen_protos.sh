#!/usr/bin/env bash
# Regenerates visearch/v1/*_pb2*.py from protos/. Usage: scripts/gen_protos.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python -m grpc_tools.protoc -Iprotos --python_out="$out" --pyi_out="$out" \
  --grpc_python_out="$out" protos/visearch/v1/*.proto
