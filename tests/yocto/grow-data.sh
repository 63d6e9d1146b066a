#!/usr/bin/env bash
# containeros-grow-data against a real disk: a loop device with the image's
# layout (MBR and GPT), the data partition small and mounted, the "medium"
# four times bigger than the image. After the script the partition and its
# mounted ext4 must end at the end of the disk, with the files still there,
# and a second run must be a no-op (marker).
# Needs root, loop devices, sfdisk, partx, resize2fs; prints SKIPPED otherwise.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
grow=$root/meta-containeros/recipes-core/containeros-base/files/containeros-grow-data

for t in sfdisk partx resize2fs mkfs.ext4 losetup findmnt; do
    command -v $t >/dev/null 2>&1 || { echo "SKIPPED: grow-data: $t missing"; exit 0; }
done
if [ "$(id -u)" != 0 ] || ! losetup -f >/dev/null 2>&1; then
    echo "SKIPPED: grow-data: needs root and a free loop device"; exit 0
fi

work=$(mktemp -d)
loop=
cleanup() {
    mountpoint -q "$work/mnt" && umount "$work/mnt"
    if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null; losetup -d "$loop"; fi
    rm -rf "$work"
}
trap cleanup EXIT

check() {   # label
    local label=$1
    truncate -s 0 "$work/disk.img"
    truncate -s 64M "$work/disk.img"
    # boot 8M, rootA 16M, rootB 16M, data 8M: the layout of the wks files.
    printf 'label: %s\n,8M,%s\n,16M\n,16M\n,8M\n' "$label" \
        "$([ "$label" = gpt ] && echo U || echo c)" | sfdisk -q "$work/disk.img" >/dev/null
    loop=$(losetup -f --show -P "$work/disk.img")
    # Some containers do not scan loop partitions: add them by hand (BLKPG).
    [ -e "${loop}p4" ] || partx -a "$loop"
    mkfs.ext4 -q -L data "${loop}p4"
    mkdir -p "$work/mnt"
    mount "${loop}p4" "$work/mnt"
    echo keep > "$work/mnt/file"
    rm -f "$work/mnt/.containeros-grown"
    # the medium is bigger than the image
    truncate -s 256M "$work/disk.img"
    losetup -c "$loop"

    local online=yes
    if ! sh "$grow" "$work/mnt" >"$work/log" 2>&1; then
        if grep -q 'Permission denied to resize' "$work/log"; then
            # Online ext4 growth needs CAP_SYS_RESOURCE, which some
            # containers withhold; the device's root has it.
            online=no
        else
            cat "$work/log"; echo "FAIL: grow-data ($label): script failed"; return 1
        fi
    fi
    local disk_end part_end fs_size part_size
    disk_end=$(( $(blockdev --getsz "$loop") ))
    part_end=$(( $(cat /sys/class/block/$(basename "$loop")p4/start) + $(cat /sys/class/block/$(basename "$loop")p4/size) ))
    part_size=$(( $(blockdev --getsize64 "${loop}p4") ))
    fs_size=$(( $(df -B1 --output=size "$work/mnt" | tail -1) ))
    # GPT keeps its 33-sector backup at the end.
    if [ $(( disk_end - part_end )) -gt 2048 ]; then
        echo "FAIL: grow-data ($label): partition ends at sector $part_end of $disk_end"; return 1
    fi
    sfdisk --verify "$loop" >/dev/null 2>&1 || { echo "FAIL: grow-data ($label): sfdisk --verify"; return 1; }
    [ "$(cat "$work/mnt/file")" = keep ] || { echo "FAIL: grow-data ($label): data lost"; return 1; }
    if [ $online = no ]; then
        echo "PASS: grow-data ($label): data partition $((part_size >> 20)) MiB on a 256 MiB disk (ext4 growth not checked: no CAP_SYS_RESOURCE here)"
    else
        if [ "$fs_size" -lt $(( part_size * 9 / 10 )) ]; then
            echo "FAIL: grow-data ($label): file system $fs_size bytes on a $part_size-byte partition"; return 1
        fi
        [ -e "$work/mnt/.containeros-grown" ] || { echo "FAIL: grow-data ($label): no marker"; return 1; }
        sh "$grow" "$work/mnt" >"$work/log" 2>&1 || { cat "$work/log"; echo "FAIL: grow-data ($label): second run"; return 1; }
        echo "PASS: grow-data ($label): data partition $((part_size >> 20)) MiB, ext4 $((fs_size >> 20)) MiB, on a 256 MiB disk"
    fi
    umount "$work/mnt"
    partx -d "$loop" 2>/dev/null; losetup -d "$loop"; loop=
}

status=0
for label in dos gpt; do
    check $label || status=1
    mountpoint -q "$work/mnt" && umount "$work/mnt"
    if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null; losetup -d "$loop"; loop=; fi
done
exit $status
