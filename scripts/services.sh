# Shell functions shared by .ci/run, scripts/run-agent and bench/: start the
# real services the agent and its tests use, on loopback only, when they are
# not already running. Source this file; every function is idempotent.

# True when a containerd answers on its default socket. A socket file alone
# proves nothing: /run can keep one from an engine that is long gone.
containerd_alive() {
    [ -S /run/containerd/containerd.sock ] &&
        timeout 5 ctr --address /run/containerd/containerd.sock version >/dev/null 2>&1
}

# dockerd on its default socket (/run/docker.sock), with containerd under it.
ensure_dockerd() {
    if timeout 10 docker version >/dev/null 2>&1; then
        return 0
    fi
    echo "starting dockerd (log: /var/log/containeros-ci-dockerd.log)"
    # containerd first when the package ships it, as its unit would. dockerd
    # (and every private dockerd the tests start) uses a containerd it finds
    # on the default socket, so a stale socket must go before either starts.
    if ! containerd_alive; then
        rm -f /run/containerd/containerd.sock /run/containerd/containerd.sock.ttrpc
        if command -v containerd >/dev/null 2>&1; then
            nohup containerd >/var/log/containeros-ci-containerd.log 2>&1 &
            for _ in $(seq 1 100); do containerd_alive && break; sleep 0.2; done
            if ! containerd_alive; then
                echo "containerd did not start; its log:" >&2
                tail -n 40 /var/log/containeros-ci-containerd.log >&2
                return 1
            fi
        fi
    fi
    # A pid file left by a dockerd that did not exit cleanly stops the next.
    local pid
    pid=$(cat /run/docker.pid 2>/dev/null || true)
    if [ -n "$pid" ] && ! grep -qs dockerd "/proc/$pid/comm"; then
        rm -f /run/docker.pid
    fi
    local containerd_arg=()
    containerd_alive && containerd_arg=(--containerd=/run/containerd/containerd.sock)
    nohup dockerd "${containerd_arg[@]}" --host=unix:///run/docker.sock >/var/log/containeros-ci-dockerd.log 2>&1 &
    for _ in $(seq 1 150); do
        timeout 10 docker version >/dev/null 2>&1 && return 0
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
