#!/usr/bin/env bash
# Bytes downloaded by an OS update, delta against the alternatives, on a
# realistic pair of root images (bench/delta/mkimages.sh: Debian 12, v2 = v1
# plus four upgraded libraries and an upgraded rsync).
#
#   bench/delta/run.sh [IMAGES_DIR]      (needs root to build the images)
#
# Measured:
# - the agent's delta: v2's archive built by `build_archive` (default
#   options), served over HTTPS on 127.0.0.1 by another process, cloned by
#   `clone_into` into a fresh slot file with v1 as the running slot's seed;
#   the bytes are what the client received (header, chunks), checked
#   against the bytes the two archive headers say are needed;
# - the agent's binary patch: `make_patch` as the publisher runs it
#   (xdelta3 -S none -W 8 MiB -B <v1 size>, the smaller of -9 and -3,
#   Brotli q11 over the whole), the bytes a device on v1 fetches of the OS,
#   then applied by `apply_patch` with v1 as the running slot (time, RSS);
# - the whole image compressed: `zstd -19 --long=N` (and the full archive);
# - binary deltas: `zstd -19 --long=N --patch-from=v1` (single thread, for
#   its best ratio), `xdelta3 -9 -B <v1 size>`, and `bsdiff` (Debian's
#   bsdiff 4.3; skipped with BSDIFF=0 — it needs about 17x the image size
#   in memory).
# Ratios are to the raw image size. Targets: delta <= 1.5x the
# zstd --patch-from size and <= 5% of the raw image. Baseline sizes are
# cached beside the images (they depend on the images only).
#
# Archive options for the delta may be overridden as delta-bench takes them,
# e.g. `DELTA_OPTS="avg=16384 min=8192" bench/delta/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
images=${1:-$(bench/delta/mkimages.sh)}
target=${CARGO_TARGET_DIR:-target}

cargo build --release --locked -p containeros-delta --example delta-bench >/dev/null 2>&1 ||
    cargo build --release --locked -p containeros-delta --example delta-bench
bench=$target/release/examples/delta-bench

dir=$(mktemp -d /tmp/cos-delta-bench.XXXXXX)
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

v1=$images/v1.img
v2=$images/v2.img
size=$(stat -c %s "$v2")
sha=$(sha256sum "$v2" | cut -d' ' -f1)
# A zstd window that covers the whole image.
wlog=$(awk -v s="$size" 'BEGIN { w = 10; while (2 ^ w < s) w++; print w }')
pct() { awk -v a="$1" -v b="$size" 'BEGIN { printf "%.2f%%", 100 * a / b }'; }

# Baselines, cached: they depend on the images (and tools) only.
baselines=$images/baselines
if [ ! -f "$baselines" ]; then
    {
        echo "zstd_full $(zstd -q -19 --long="$wlog" -T0 -c "$v2" | wc -c)"
        echo "zstd_patch $(zstd -q -19 --long="$wlog" --single-thread --patch-from="$v1" -c "$v2" | wc -c)"
        if command -v xdelta3 >/dev/null; then
            xdelta3 -e -9 -f -B "$(stat -c %s "$v1")" -s "$v1" "$v2" "$dir/v2.xd3"
            echo "xdelta3 $(stat -c %s "$dir/v2.xd3")"
            rm -f "$dir/v2.xd3"
        fi
        if [ "${BSDIFF:-1}" != 0 ] && command -v bsdiff >/dev/null; then
            bsdiff "$v1" "$v2" "$dir/v2.bsdiff"
            echo "bsdiff $(stat -c %s "$dir/v2.bsdiff")"
            rm -f "$dir/v2.bsdiff"
        fi
    } >"$dir/baselines"
    mv "$dir/baselines" "$baselines"
fi
get() { awk -v k="$1" '$1 == k { print $2 }' "$baselines"; }

# The delta.
# shellcheck disable=SC2086 # DELTA_OPTS is a list of words
read -r a1_bytes _ _ _ a1_secs < <("$bench" archive "$v1" "$dir/v1.cba" ${DELTA_OPTS:-})
# shellcheck disable=SC2086
read -r a2_bytes a2_header a2_chunks a2_unique a2_secs < <("$bench" archive "$v2" "$dir/v2.cba" ${DELTA_OPTS:-})
read -r ideal ideal_chunks < <("$bench" ideal "$dir/v2.cba" "$dir/v1.cba")
"$bench" serve "$dir/v2.cba" "$dir" 2>"$dir/server.log" &
server=$!
for _ in $(seq 1 100); do
    [ -s "$dir/url" ] && break
    sleep 0.1
done
truncate -s "$size" "$dir/slot"
read -r fetched reused fetched_chunks reused_chunks clone_secs rss < <(
    "$bench" clone "$(cat "$dir/url")" "$dir/ca.pem" "$v1" "$dir/slot" "$size" "$sha"
)
[ "$fetched" = "$ideal" ] || echo "note: fetched $fetched bytes, the headers say $ideal"

# The binary patch, made and applied.
read -r patch_bytes vcdiff_bytes patch_secs < <("$bench" patch "$v1" "$v2" "$dir/v2.patch")
rm -f "$dir/slot"
truncate -s "$size" "$dir/slot"
read -r apply_secs apply_rss < <("$bench" apply-patch "$dir/v2.patch" "$v1" "$dir/slot" "$size" "$sha")

zstd_patch=$(get zstd_patch)
echo "images: $images (v1 -> v2, $size bytes raw each; $(cat "$images/upgraded.diff" | grep -c '^>') packages upgraded)"
echo "archives: v1 $a1_bytes bytes (${a1_secs} s), v2 $a2_bytes bytes (${a2_secs} s): $a2_chunks chunks, $a2_unique distinct, header $a2_header bytes"
printf '%-40s %12s %9s %9s\n' "download for v1 -> v2" bytes "of raw" "x patch"
row() { printf '%-40s %12s %9s %9s\n' "$1" "$2" "$(pct "$2")" "$(awk -v a="$2" -v b="$zstd_patch" 'BEGIN { printf "%.2f", a / b }')"; }
row "raw image" "$size"
row "zstd -19 --long=$wlog (whole image)" "$(get zstd_full)"
row "bitar archive (whole, brotli chunks)" "$a2_bytes"
row "agent delta over HTTPS (v1 as seed)" "$fetched"
row "  of which archive header" "$a2_header"
row "agent patch (VCDIFF + brotli, from v1)" "$patch_bytes"
row "zstd -19 --long=$wlog --patch-from=v1" "$zstd_patch"
[ -n "$(get xdelta3)" ] && row "xdelta3 -9 -B <v1 size>" "$(get xdelta3)"
[ -n "$(get bsdiff)" ] && row "bsdiff 4.3" "$(get bsdiff)"
echo "agent patch: VCDIFF $vcdiff_bytes bytes before Brotli, made in ${patch_secs} s; applied in ${apply_secs} s, peak RSS $apply_rss KiB"
echo "agent delta: $fetched_chunks chunks fetched, $reused_chunks reused ($reused bytes from the seed), ${clone_secs} s, peak RSS $rss KiB"
for what in "patch $patch_bytes" "delta $fetched"; do
    # shellcheck disable=SC2086 # two words: name and bytes
    set -- $what
    awk -v n="$1" -v d="$2" -v p="$zstd_patch" -v s="$size" 'BEGIN {
        printf "targets (%s): <= 1.5x zstd --patch-from: %.2fx (%s); <= 5%% of raw: %.2f%% (%s)\n", n,
            d / p, (d <= 1.5 * p) ? "met" : "NOT met", 100 * d / s, (d <= 0.05 * s) ? "met" : "NOT met" }'
done
