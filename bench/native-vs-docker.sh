#!/usr/bin/env bash
# The same 3-service release on both engines: resident memory of the agent
# with the built-in engine (runc, no daemon) against the agent plus dockerd,
# containerd and the per-container shims with the Docker backend, and the
# on-disk size of the engine binaries (crun or runc against dockerd +
# containerd + shim + runc + docker-proxy + docker-init). Needs root, like
# the system tests; installs Debian's crun to measure its size.
#
#   bench/native-vs-docker.sh          (BENCH_SETTLE=seconds, default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
command -v crun >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends crun
}
ensure_dockerd
ensure_registry
ensure_containeros_group
cargo test --release --locked -p containeros-tests --test system bench_native_vs_docker -- --ignored --nocapture 2>&1 |
    sed -n '/^3-service release/,$p'
