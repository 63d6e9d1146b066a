#!/usr/bin/env bash
# containeros-preinit in a read-only root (busybox, chroot, private mount
# namespace) with a loop device as the partition labelled "data": first boot
# copies the listed /etc paths to /data/etc and binds them, a later boot binds
# what /data holds (changes persist), writes through the binds land on /data,
# and the init it execs gets its arguments. Without the data partition the
# system still reaches init.
# Needs root, unshare, chroot, losetup, mkfs.ext4 and a static busybox with
# mount LABEL= support; SKIPPED otherwise.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
preinit_in=$root/meta-containeros/recipes-core/containeros-base/files/containeros-preinit.in
bb=$(command -v busybox || true)

for t in unshare chroot losetup mkfs.ext4; do
    command -v $t >/dev/null 2>&1 || { echo "SKIPPED: preinit: $t missing"; exit 0; }
done
if [ -z "$bb" ] || ! file -L "$bb" 2>/dev/null | grep -q static; then
    echo "SKIPPED: preinit: needs a static busybox"; exit 0
fi
if [ "$(id -u)" != 0 ] || ! losetup -f >/dev/null 2>&1; then
    echo "SKIPPED: preinit: needs root and a free loop device"; exit 0
fi

work=$(mktemp -d)
loop=
cleanup() { [ -n "$loop" ] && losetup -d "$loop"; rm -rf "$work"; }
trap cleanup EXIT
r=$work/root
mkdir -p "$r"/{bin,sbin,usr/sbin,usr/bin,proc,sys,dev,data,etc/systemd/network,etc/wpa_supplicant}
cp "$bb" "$r/bin/busybox"
for c in sh mount umount cp mkdir dirname echo cat ls tr; do ln -s busybox "$r/bin/$c"; done
# /dev is bound from the host below; util-linux's mountpoint is not in busybox.
printf '#!/bin/sh\nexit 0\n' > "$r/usr/sbin/mountpoint"; chmod +x "$r/usr/sbin/mountpoint"
sed -e 's|@PERSISTENT_ETC@|machine-id hostname systemd/network/ wpa_supplicant/|' \
    -e 's|@DATA_DIRS@|etc/ssh-host-keys|' "$preinit_in" > "$r/sbin/containeros-preinit"
chmod +x "$r/sbin/containeros-preinit"
: > "$r/etc/machine-id"
echo factory > "$r/etc/hostname"
echo '[Match]' > "$r/etc/systemd/network/80-wired.network"
# The "init": report what the system sees, then write through the binds.
cat > "$r/sbin/init" <<'INIT'
#!/bin/sh
echo "INIT args=$*"
echo "HOSTNAME $(cat /etc/hostname)"
echo "NETWORK $(ls /etc/systemd/network | tr '\n' ' ')"
[ -d /data/etc/ssh-host-keys ] && echo "SSHDIR yes"
echo "0123456789abcdef0123456789abcdef" > /etc/machine-id 2>/dev/null && echo "MACHINEID written"
INIT
chmod +x "$r/sbin/init"

truncate -s 16M "$work/data.img"
mkfs.ext4 -q -L data "$work/data.img"

boot() {   # run the preinit in a private mount namespace with a read-only root
    unshare -m sh -c "
        mount --bind '$r' '$r' && mount -o remount,ro,bind '$r' &&
        mount --rbind /dev '$r/dev' &&
        : > '$work/kmsg' && mount --bind '$work/kmsg' '$r/dev/kmsg' &&
        chroot '$r' /sbin/containeros-preinit quiet splash" 2>&1
    # what the preinit logged to the kernel log (captured, not the host's)
    sed 's/^/KMSG /' "$work/kmsg"
}

status=0
check() {   # name, output, expected substrings...
    local name=$1 out=$2; shift 2
    for want in "$@"; do
        case $out in *"$want"*) ;; *) echo "FAIL: preinit: $name: no '$want' in:"; echo "$out" | sed 's/^/     | /'; status=1; return;; esac
    done
    echo "PASS: preinit: $name"
}

out=$(boot)
check "no data partition: still reaches init" "$out" "KMSG containeros-preinit: no data partition" "INIT args=quiet splash" "HOSTNAME factory"

loop=$(losetup -f --show "$work/data.img")
out=$(boot)
check "first boot: root's /etc copied to /data and bound" "$out" \
    "INIT args=quiet splash" "HOSTNAME factory" "NETWORK 80-wired.network" "SSHDIR yes" "MACHINEID written"

# The device changes its settings on /data; the next boot must show them.
mnt=$work/mnt; mkdir -p "$mnt"
mount "$loop" "$mnt"
got_id=$(cat "$mnt/etc/machine-id")
echo field-7 > "$mnt/etc/hostname"
echo '[Match]' > "$mnt/etc/systemd/network/50-wifi.network"
umount "$mnt"
[ "$got_id" = 0123456789abcdef0123456789abcdef ] && echo "PASS: preinit: writes to /etc/machine-id land on /data" ||
    { echo "FAIL: preinit: /data/etc/machine-id holds '$got_id'"; status=1; }

out=$(boot)
check "later boot: /data's versions win" "$out" "HOSTNAME field-7" "NETWORK 50-wifi.network 80-wired.network"
exit $status
