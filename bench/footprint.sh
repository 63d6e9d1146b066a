#!/usr/bin/env bash
# Footprint of the agent: stripped release binary sizes, and the daemon's
# resident memory after it has idled with the engine connected.
#
#   bench/footprint.sh [IDLE_SECONDS]     (default 60; needs root, dockerd)
#
# Prints numbers only; nothing is asserted. Targets: daemon binary
# <= 6 MiB, idle RSS <= 8 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
idle=${1:-60}

cargo build --release --locked --bin containeros-agent --bin containeros >/dev/null 2>&1
ensure_dockerd >/dev/null

dir=$(mktemp -d /tmp/cos-bench.XXXXXX)
address=$(start_private_bus "$dir")
cleanup() {
    [ -n "${agent:-}" ] && kill "$agent" 2>/dev/null || true
    kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# The sample configuration, on the private bus; no unit to restart here.
cat >"$dir/agent.toml" <<TOML
[agent]
state_dir = "$dir/state"
[dbus]
bus = "$address"
[engine]
socket = "/run/docker.sock"
unit = ""
TOML
target/release/containeros-agent --config "$dir/agent.toml" 2>"$dir/agent.log" &
agent=$!
for _ in $(seq 1 100); do
    DBUS_SYSTEM_BUS_ADDRESS=$address target/release/containeros status --json 2>/dev/null |
        grep -q '"engine_state": "up"' && break
    sleep 0.1
done
sleep "$idle"
rss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$agent/status")
hwm_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$agent/status")
state=$(DBUS_SYSTEM_BUS_ADDRESS=$address target/release/containeros status --json | sed -n 's/.*"engine_state": "\(.*\)".*/\1/p')

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
printf 'binary containeros-agent (stripped): %s bytes (%s)\n' "$(stat -c %s target/release/containeros-agent)" "$(mib "$(stat -c %s target/release/containeros-agent)")"
printf 'binary containeros (stripped):       %s bytes (%s)\n' "$(stat -c %s target/release/containeros)" "$(mib "$(stat -c %s target/release/containeros)")"
printf 'agent RSS after %ss idle (engine %s): %s KiB (%s), peak %s KiB\n' "$idle" "$state" "$rss_kib" "$(mib $((rss_kib * 1024)))" "$hwm_kib"
