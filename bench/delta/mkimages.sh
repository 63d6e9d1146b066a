#!/usr/bin/env bash
# Two versions of a realistic root filesystem image, built reproducibly
# from Debian 12 packages, for the delta-update benchmark (bench/delta/run.sh).
#
#   bench/delta/mkimages.sh            prints the directory holding v1.img, v2.img
#
# Needs root, mmdebstrap, e2fsprogs (mkfs.ext4, debugfs) and the machine's
# apt mirror (the one in /etc/apt/sources.list.d/debian.sources).
#
# v1: `mmdebstrap --variant=minbase bookworm` plus what a small device
#     root needs (systemd, udev, dbus, iproute2, openssh-server, curl,
#     ca-certificates, tzdata, jq, rsync, ...), all from bookworm (the point
#     release), with bookworm-security listed but pinned away.
# v2: the same, but four libraries (libssl3, libexpat1, liblzma5,
#     libpcre2-8-0) and one application (rsync: its binary) upgraded from
#     bookworm-security — an ordinary security update of a device OS.
#
# Both are ext4 images of the same size made with `mkfs.ext4 -d`, pinned as
# a Yocto build pins them: SOURCE_DATE_EPOCH (Yocto's default
# REPRODUCIBLE_TIMESTAMP_ROOTFS, the same for both versions), every mtime
# clamped to it and every atime set to it, E2FSPROGS_FAKE_TIME for the
# file system's own times, a fixed UUID and directory hash seed,
# root_owner=0:0, and the tree copied in name order onto tmpfs first (mke2fs
# 1.47.0 adds entries in readdir order and takes each inode's ctime from the
# source file: the copy fixes the order, debugfs then sets every ctime and
# atime). Logs, apt caches and machine-id are removed, as a read-only root
# ships without them, and so are the SSH host keys openssh-server generated
# (a device makes its own on first boot). Two builds give the same bytes;
# what the images hold depends only on the package versions the mirror
# serves (recorded beside the images).
#
# Cached under $CONTAINEROS_BENCH_CACHE (default /var/cache/containeros-bench)
# in delta-<hash of this script's code>/; delete it to rebuild.
set -euo pipefail

sde=1520598896 # Yocto's REPRODUCIBLE_TIMESTAMP_ROOTFS
uuid=6f8e3a52-1c0b-4d1e-9a57-3e2b4c5d6e7f
cache=${CONTAINEROS_BENCH_CACHE:-/var/cache/containeros-bench}
out="$cache/delta-$(grep -v "^ *#" "$0" | sha256sum | cut -c1-12)"
if [ -f "$out/done" ]; then
    echo "$out"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "mkimages.sh: needs root (mmdebstrap, mkfs.ext4 -d of a root tree)" >&2; exit 1; }
for tool in mmdebstrap mkfs.ext4 debugfs; do
    command -v "$tool" >/dev/null || { echo "mkimages.sh: $tool missing (apt-get install mmdebstrap e2fsprogs)" >&2; exit 1; }
done

mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
security=${mirror%/debian}/debian-security
case "$mirror" in */debian) ;; *) security=http://deb.debian.org/debian-security ;; esac

packages=systemd,systemd-sysv,udev,dbus,kmod,iproute2,iputils-ping,openssh-server,ca-certificates,tzdata,curl,jq,rsync,less,procps,libssl3,libexpat1,liblzma5,libpcre2-8-0
upgraded="libssl3 libexpat1 liblzma5 libpcre2-8-0 rsync"

mkdir -p "$out"
work=$(mktemp -d /dev/shm/cos-delta-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

build() { # build VERSION PREFERENCES
    local v=$1 prefs=$2
    printf '%s' "$prefs" >"$work/$v.pref"
    SOURCE_DATE_EPOCH=$sde mmdebstrap --variant=minbase --quiet \
        --include="$packages" \
        --setup-hook="mkdir -p \"\$1/etc/apt/preferences.d\" && cp $work/$v.pref \"\$1/etc/apt/preferences.d/bench\"" \
        --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" > '"$out/$v.packages" \
        --customize-hook='rm -rf "$1"/etc/apt/preferences.d/bench "$1"/var/log/* "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/cache/ldconfig/aux-cache "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/lib/dbus/machine-id "$1"/etc/ssh/ssh_host_*; : > "$1"/etc/machine-id' \
        bookworm "$work/$v.tar" \
        "deb $mirror bookworm main" "deb $security bookworm-security main"
    # Name order onto tmpfs, times pinned.
    mkdir "$work/$v"
    tar -C "$work/$v" --numeric-owner --xattrs --xattrs-include='*' -xpf "$work/$v.tar"
    rm "$work/$v.tar"
    find "$work/$v" -newermt "@$sde" -exec touch --no-dereference --date="@$sde" {} +
    find "$work/$v" -exec touch --no-dereference -a --date="@$sde" {} +
}

build v1 $'Package: *\nPin: release n=bookworm-security\nPin-Priority: -1\n'
build v2 "Package: $upgraded"$'\nPin: release n=bookworm-security\nPin-Priority: 990\n\nPackage: *\nPin: release n=bookworm-security\nPin-Priority: -1\n'

# One size for both: the larger tree's disk usage plus 30% (Yocto's
# IMAGE_OVERHEAD_FACTOR), rounded up to 16 MiB.
kib=$(du -sk "$work/v1" "$work/v2" | sort -n | tail -1 | cut -f1)
size_mib=$(( (kib * 13 / 10 / 1024 + 15) / 16 * 16 ))

for v in v1 v2; do
    rm -f "$out/$v.img"
    truncate -s "${size_mib}M" "$out/$v.img"
    E2FSPROGS_FAKE_TIME=$sde mkfs.ext4 -q -F -b 4096 -I 256 -L rootfs -U "$uuid" \
        -E "hash_seed=$uuid,root_owner=0:0,nodiscard" -d "$work/$v" "$out/$v.img"
    # Reading the tree (find, mke2fs itself) moved directories' atimes.
    (cd "$work/$v" && find . | sed -e 's|^\.||' -e 's|^$|/|') |
        awk -v t="@$sde" '{ printf "sif \"%s\" ctime %s\nsif \"%s\" atime %s\n", $0, t, $0, t }' >"$work/$v.debugfs"
    E2FSPROGS_FAKE_TIME=$sde debugfs -w -f "$work/$v.debugfs" "$out/$v.img" >/dev/null 2>"$work/$v.debugfs.err"
    if grep -v '^debugfs [0-9.]* (' "$work/$v.debugfs.err" >&2; then
        echo "mkimages.sh: debugfs could not pin every time (above)" >&2
        exit 1
    fi
    rm -rf "${work:?}/$v"
done
diff "$out/v1.packages" "$out/v2.packages" >"$out/upgraded.diff" || true
(cd "$out" && sha256sum v1.img v2.img >sha256sums)
touch "$out/done"
echo "$out"
