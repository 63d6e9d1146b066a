#!/usr/bin/env bash
# The agent against `docker-compose up -d` (Debian's docker-compose 1.29) on
# the same private dockerd and local registry: a 5-service release installed
# from scratch (every image pulled), then a one-service change; BENCH_RUNS
# runs (default 3). Prints times, ratios (agent / compose, lower is better)
# and the agent's peak RSS. Needs root, like the system tests.
#
#   bench/apps-vs-compose.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
command -v docker-compose >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose
}
ensure_dockerd
ensure_registry
ensure_containeros_group
cargo test --release --locked -p containeros-tests --test system bench_apps_vs_compose -- --ignored --nocapture 2>&1 |
    sed -n '/^5-service release/,$p'
