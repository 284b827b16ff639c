#!/usr/bin/env bash
# One command: builds the gateway, the mock upstream and the harness in release mode, then runs
# the harness (about a minute, everything on 127.0.0.1). Extra arguments go to the harness
# (`--quick` for a short run).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p llmgw-gateway -p llmgw-mock-provider -p llmgw-load-harness
exec target/release/llmgw-load "$@"
