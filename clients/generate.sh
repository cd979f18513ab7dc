#!/usr/bin/env bash
# Generates the Python (grpcio) and TypeScript (Connect) clients from proto/
# into clients/python/gen and clients/typescript/gen (both ignored by git).
# Needs a Python with clients/python/requirements.txt (PYTHON, default
# python3) and `npm ci` in clients/typescript (buf and protoc-gen-es).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
rm -rf "$ROOT/clients/python/gen" "$ROOT/clients/typescript/gen"
mkdir -p "$ROOT/clients/python/gen"
"$PYTHON" -m grpc_tools.protoc -I "$ROOT/proto" \
  --python_out="$ROOT/clients/python/gen" --pyi_out="$ROOT/clients/python/gen" \
  --grpc_python_out="$ROOT/clients/python/gen" \
  "$ROOT"/proto/portcullis/v1/*.proto
cd "$ROOT/proto"
PATH="$ROOT/clients/typescript/node_modules/.bin:$PATH" buf generate -o "$ROOT/clients/typescript"
