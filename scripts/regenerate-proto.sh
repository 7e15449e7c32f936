#!/usr/bin/env bash
# Regenerates parm-serve's gRPC code (src/oip/generated/inference.rs) from
# proto/grpc_predict_v2.proto and records the .proto's digest, which .ci/run checks.
# Run after changing the .proto file; commit both files it writes.
set -euo pipefail
cd "$(dirname "$0")/../crates/parm-serve"
cargo build --quiet -p parm-serve --features regenerate-proto
sha256sum proto/grpc_predict_v2.proto > src/oip/generated/proto.sha256
echo "regenerated src/oip/generated/inference.rs and proto.sha256"
