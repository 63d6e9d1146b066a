# Shell functions shared by .ci/run, scripts/run-agent and bench/: start the
# real services the agent and its tests use, on loopback only, when they are
# not already running. Source this file; every function is idempotent.

# dockerd on its default socket (/run/docker.sock).
ensure_dockerd() {
    if docker version >/dev/null 2>&1; then
        return 0
    fi
    echo "starting dockerd (log: /var/log/containeros-ci-dockerd.log)"
    # containerd first when the package ships it, as its unit would.
    if command -v containerd >/dev/null 2>&1 && [ ! -S /run/containerd/containerd.sock ]; then
        nohup containerd >/var/log/containeros-ci-containerd.log 2>&1 &
        for _ in $(seq 1 50); do [ -S /run/containerd/containerd.sock ] && break; sleep 0.2; done
    fi
    local containerd_arg=()
    [ -S /run/containerd/containerd.sock ] && containerd_arg=(--containerd=/run/containerd/containerd.sock)
    nohup dockerd "${containerd_arg[@]}" --host=unix:///run/docker.sock >/var/log/containeros-ci-dockerd.log 2>&1 &
    for _ in $(seq 1 150); do
        docker version >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "dockerd did not start; its log:" >&2
    tail -n 40 /var/log/containeros-ci-dockerd.log >&2
    return 1
}

# A Docker Distribution registry on 127.0.0.1:5000 (Debian docker-registry).
ensure_registry() {
    if curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1; then
        return 0
    fi
    local dir=/var/lib/containeros-ci-registry
    mkdir -p "$dir"
    cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
YAML
    echo "starting docker-registry on 127.0.0.1:5000"
    nohup docker-registry serve "$dir/config.yml" >/var/log/containeros-ci-registry.log 2>&1 &
    for _ in $(seq 1 100); do
        curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "docker-registry did not start; its log:" >&2
    tail -n 40 /var/log/containeros-ci-registry.log >&2
    return 1
}

# A private system-like bus in directory $1 with the agent's shipped policy
# (scripts/private-bus.conf.in); prints its address.
start_private_bus() {
    local dir=$1 repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    mkdir -p "$dir"
    sed -e "s|@SOCKET@|$dir/bus|" -e "s|@POLICY@|$repo/agent/dist/org.containeros.Agent1.conf|" \
        "$repo/scripts/private-bus.conf.in" >"$dir/bus.conf"
    dbus-daemon --config-file="$dir/bus.conf" --fork --print-address=1 --print-pid=3 3>"$dir/pid" 2>/dev/null
}

# The system group the D-Bus policy grants method calls to.
ensure_containeros_group() {
    getent group containeros >/dev/null || groupadd --system containeros
}
