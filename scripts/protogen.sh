#!/usr/bin/env bash
# Regenerates src/grpc/gen/ from proto/ with tools/protogen (protox and
# tonic-prost-build: pure Rust, no protoc), and records the inputs' SHA-256
# in src/grpc/gen/inputs.sha256, which a unit test checks against proto/
# so a forgotten regeneration fails the build's tests. The generated code
# is committed: CI and developers build Perch without these tools.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${PERCH_PROTOGEN_TARGET:-$HOME/.cache/perch-protogen-target}"
cargo run --quiet --release --manifest-path tools/protogen/Cargo.toml -- "$PWD"
(cd proto && find . -name '*.proto' | LC_ALL=C sort | xargs sha256sum) > src/grpc/gen/inputs.sha256
echo "protogen: src/grpc/gen/ regenerated from $(wc -l < src/grpc/gen/inputs.sha256) proto file(s)"
