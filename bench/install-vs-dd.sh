#!/usr/bin/env bash
# Install throughput against raw write speed: a 512 MiB random image
# installed into a loop device by the agent's slot installer — streamed from
# an HTTPS server on 127.0.0.1 (TLS, SHA-256 of every byte, fsync) and, for
# reference, from a local file — against `dd` of the same file into the same
# loop device. RUNS runs each (default 3), interleaved; medians are compared.
#
#   bench/install-vs-dd.sh [RUNS]      (needs root: losetup)
#
# dd writes with `bs=1M conv=fsync`: through the device's page cache, one
# fsync at the end. The installer writes with O_DIRECT (1 MiB aligned
# chunks; the last partial block through the page cache) and fsyncs at the
# end, as on a device, where it keeps the page cache from growing by the
# image's size; `dd oflag=direct` is timed too, as the like-for-like
# reference; ratios to both are printed. The image is read once
# beforehand, so every reader gets it from the page cache, and
# one uncounted dd run first allocates the loop device's backing file, so
# no run pays for that. The loop device uses direct I/O to its backing file
# (no second page cache, closer to a real disk). Between runs only `sync`.
# The kernel drops a block device's page cache when its last opener closes
# it, so every buffered dd run allocates 512 MiB of cache afresh; on a VM
# whose host takes freed memory back (seen on Firecracker) that allocation
# makes dd's time vary several-fold: compare medians, and CPU seconds.
# The installer also hashes every byte, and over HTTPS decrypts what the
# server (another process on the same CPUs; its CPU seconds per install
# are printed) encrypts. Times are wall-clock around each command, process
# start included for all; CPU seconds (user+sys) are printed alongside, as
# the bench is CPU-bound on a fast disk.
#
# Peak RSS of the installer process (the server runs apart) is /usr/bin/time's
# maximum resident set size. Prints numbers only; nothing is asserted.
# Targets: installer >= 0.9 x dd over HTTPS, peak RSS <= 16 MiB.
# Other work on the machine skews the numbers: the load average is printed.
#
# A loop device over a file on the build machine's disk takes writes at
# memory speed (GB/s), far beyond a device's SD card or eMMC, so the runs
# above measure the installer's CPU ceiling. Then, for each write speed in
# MEDIA (MiB/s, default "25 100 400": an SD card, an eMMC, a USB SSD), the
# same loop device is throttled to that speed with the block cgroup
# controller (v1 blkio.throttle.write_bps_device, or v2 io.max), and dd
# (both ways) and the HTTPS install run again inside that cgroup: the ratio
# to dd there is what a device with that medium sees. MEDIA="" skips them;
# without a block cgroup controller they are skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
media=${MEDIA-25 100 400}
size_mib=512
target=${CARGO_TARGET_DIR:-target}

cargo build --release --locked -p containeros-update --example install-bench >/dev/null 2>&1 ||
    cargo build --release --locked -p containeros-update --example install-bench
bench=$target/release/examples/install-bench

dir=$(mktemp -d /tmp/cos-install-bench.XXXXXX)
loop=""
server=""
cg=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    [ -n "$cg" ] && rmdir "$cg" 2>/dev/null || true
    [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

head -c $((size_mib << 20)) /dev/urandom >"$dir/image"
size=$(stat -c %s "$dir/image")
sha=$(sha256sum "$dir/image" | cut -d' ' -f1)
truncate -s $(((size_mib + 16) << 20)) "$dir/slot"
loop=$(losetup --find --show --direct-io=on "$dir/slot")

"$bench" serve "$dir/image" "$dir" 2>"$dir/server.log" &
server=$!
for _ in $(seq 1 100); do
    [ -s "$dir/port" ] && break
    sleep 0.1
done
port=$(cat "$dir/port")
url="https://127.0.0.1:$port/rootfs.ext4"
cat "$dir/image" >/dev/null
dd if="$dir/image" of="$loop" bs=1M conv=fsync status=none

now() { date +%s.%N; }
mibs() { awk -v s="$size" -v t="$1" 'BEGIN { printf "%.1f", s / t / 1048576 }'; }
# One timed run of "$@": wall seconds appended to $dir/$name, CPU seconds
# (user+sys) to $dir/$name.cpu, peak RSS (KiB) to $dir/$name.rss. With
# $cg_run set (a cgroup.procs file), the command runs in that cgroup.
cg_run=""
timed() {
    local name=$1 t0 t1
    shift
    sync
    if [ -n "$cg_run" ]; then
        set -- sh -c 'echo $$ >"$0" && exec "$@"' "$cg_run" "$@"
    fi
    t0=$(now)
    /usr/bin/time -f '%U %S %M' -o "$dir/time" "$@" >/dev/null
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }' >>"$dir/$name"
    awk '{ print $1 + $2 }' "$dir/time" >>"$dir/$name.cpu"
    awk '{ print $3 }' "$dir/time" >>"$dir/$name.rss"
}

# The server's CPU seconds (user+sys) so far.
server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$server/stat"; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$runs"); do
    timed dd dd if="$dir/image" of="$loop" bs=1M conv=fsync status=none
    timed dd-direct dd if="$dir/image" of="$loop" bs=1M oflag=direct conv=fsync status=none
    s0=$(server_cpu)
    timed https "$bench" install "$url" "$dir/ca.pem" "$loop" "$size" "$sha"
    awk -v a="$s0" -v b="$(server_cpu)" 'BEGIN { print b - a }' >>"$dir/server.cpu"
    timed file "$bench" install-file "$dir/image" "$loop" "$size" "$sha"
    printf 'run %d: dd %s MiB/s, dd direct %s MiB/s, installer https %s MiB/s (peak RSS %s KiB), installer file %s MiB/s (peak RSS %s KiB)\n' \
        "$run" "$(mibs "$(tail -1 "$dir/dd")")" "$(mibs "$(tail -1 "$dir/dd-direct")")" \
        "$(mibs "$(tail -1 "$dir/https")")" "$(tail -1 "$dir/https.rss")" \
        "$(mibs "$(tail -1 "$dir/file")")" "$(tail -1 "$dir/file.rss")"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

median() { sort -g "$1" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
dd_m=$(median "$dir/dd")
https_m=$(median "$dir/https")
file_m=$(median "$dir/file")
rss_max=$(cat "$dir/https.rss" "$dir/file.rss" | sort -g | tail -1)
echo
printf '%d MiB image, %d runs, medians (loop device %s, direct I/O to its backing file):\n' "$size_mib" "$runs" "$loop"
printf '  dd bs=1M conv=fsync:    %7s MiB/s  %.2f s wall, %.2f s CPU\n' \
    "$(mibs "$dd_m")" "$dd_m" "$(median "$dir/dd.cpu")"
printf '  dd oflag=direct:        %7s MiB/s  %.2f s wall, %.2f s CPU\n' \
    "$(mibs "$(median "$dir/dd-direct")")" "$(median "$dir/dd-direct")" "$(median "$dir/dd-direct.cpu")"
ddd_m=$(median "$dir/dd-direct")
printf '  installer, HTTPS:       %7s MiB/s  %.2f s wall, %.2f s CPU (+ %.2f s the server'"'"'s)  ratio to dd %.2f, to dd direct %.2f\n' \
    "$(mibs "$https_m")" "$https_m" "$(median "$dir/https.cpu")" "$(median "$dir/server.cpu")" \
    "$(awk -v a="$dd_m" -v b="$https_m" 'BEGIN { print a / b }')" \
    "$(awk -v a="$ddd_m" -v b="$https_m" 'BEGIN { print a / b }')"
printf '  installer, local file:  %7s MiB/s  %.2f s wall, %.2f s CPU  ratio to dd %.2f, to dd direct %.2f\n' \
    "$(mibs "$file_m")" "$file_m" "$(median "$dir/file.cpu")" \
    "$(awk -v a="$dd_m" -v b="$file_m" 'BEGIN { print a / b }')" \
    "$(awk -v a="$ddd_m" -v b="$file_m" 'BEGIN { print a / b }')"
printf '  installer peak RSS (max of all runs): %s KiB (%.1f MiB)\n' "$rss_max" \
    "$(awk -v k="$rss_max" 'BEGIN { print k / 1024 }')"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# A block cgroup that throttles writes to the loop device: sets $cg and
# $cg_dev and defines limit MIB_PER_S; fails when the kernel offers no such controller.
throttle_cgroup() {
    cg_dev=$(cat "/sys/block/${loop#/dev/}/dev")
    if [ -f /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device ]; then
        cg=/sys/fs/cgroup/blkio/containeros-bench.$$
        mkdir "$cg" || return 1
        limit() { echo "$cg_dev $(($1 << 20))" >"$cg/blkio.throttle.write_bps_device"; }
    elif grep -qw io /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        grep -qw io /sys/fs/cgroup/cgroup.subtree_control ||
            echo +io >/sys/fs/cgroup/cgroup.subtree_control || return 1
        cg=/sys/fs/cgroup/containeros-bench.$$
        mkdir "$cg" || return 1
        limit() { echo "$cg_dev wbps=$(($1 << 20))" >"$cg/io.max"; }
    else
        return 1
    fi
}

if [ -n "$media" ]; then
    echo
    if ! throttle_cgroup; then
        echo "media speeds skipped: no block cgroup controller (blkio or io) to throttle $loop with"
        exit 0
    fi
    echo "the same, with $loop throttled to a device's write speed ($cg):"
    cg_run=$cg/cgroup.procs
    for speed in $media; do
        limit "$speed"
        for _ in $(seq 1 "$runs"); do
            timed "dd@$speed" dd if="$dir/image" of="$loop" bs=1M conv=fsync status=none
            timed "dd-direct@$speed" dd if="$dir/image" of="$loop" bs=1M oflag=direct conv=fsync status=none
            timed "https@$speed" "$bench" install "$url" "$dir/ca.pem" "$loop" "$size" "$sha"
        done
        d=$(median "$dir/dd@$speed")
        dd_direct=$(median "$dir/dd-direct@$speed")
        h=$(median "$dir/https@$speed")
        printf '  %4d MiB/s medium: dd %7s MiB/s, dd direct %7s MiB/s, installer HTTPS %7s MiB/s (%.2f s CPU, peak RSS %s KiB)  ratio to dd %s, to dd direct %s\n' \
            "$speed" "$(mibs "$d")" "$(mibs "$dd_direct")" "$(mibs "$h")" "$(median "$dir/https@$speed.cpu")" \
            "$(sort -g "$dir/https@$speed.rss" | tail -1)" "$(ratio "$d" "$h")" "$(ratio "$dd_direct" "$h")"
    done
fi
