#!/usr/bin/env bash
# The simulated device's Debian 12 root tree (the slow,
# cached half of the disk image; tests/vm/mkdisk.sh assembles the disk).
#
#   tests/vm/mkroot.sh        prints the path of the root tree
#
# mmdebstrap --variant=minbase bookworm with what a ContainerOS device runs:
# systemd, udev, dbus, a Docker-compatible engine (docker.io),
# NetworkManager (the layer's network manager, which the agent configures
# from the provisioning file), OpenSSH (started by the agent only when keys
# are provisioned), the kernel and its initramfs from linux-image-amd64, and
# socat (the test bridges for the D-Bus bus and the registry,
# tests/vm/guest/). The initramfs carries
# only the modules a QEMU disk needs; kernel modules a virtual machine
# never loads (sound, GPU, wireless, media, ...) are left out to keep the
# slot image, and so each OS update, small.
#
# Needs root, mmdebstrap and the machine's apt mirror (the one in
# /etc/apt/sources.list.d/debian.sources). Cached under
# $CONTAINEROS_VM_CACHE (default /var/cache/containeros-vm) in
# root-<hash of this script>/; delete it to rebuild.
set -euo pipefail

cache=${CONTAINEROS_VM_CACHE:-/var/cache/containeros-vm}
out="$cache/root-$(grep -v '^ *#' "$0" | sha256sum | cut -c1-12)"
if [ -f "$out/done" ]; then
    echo "$out/root"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "mkroot.sh: needs root (mmdebstrap)" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "mkroot.sh: mmdebstrap missing (apt-get install mmdebstrap)" >&2; exit 1; }

mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

packages=systemd,systemd-sysv,udev,dbus,kmod,iproute2,procps,util-linux,mount,e2fsprogs,dosfstools
packages=$packages,docker.io,ca-certificates,socat,linux-image-amd64,initramfs-tools
packages=$packages,network-manager,openssh-server

# Older root trees are of no use any more (mkdisk.sh rebuilds from this one).
mkdir -p "$cache"
find "$cache" -maxdepth 1 -name 'root-*' -not -name "${out##*/}" -exec rm -rf {} +
mkdir -p "$out"
rm -rf "$out/root.tmp"
# Modules the kernel needs from the initramfs to find its root on a QEMU
# disk; everything else is loaded by udev from the root.
# Driver directories kept: a QEMU machine's disks, network, entropy and
# virtio devices, device mapper and the files systems; of drivers/net only
# its top-level modules (virtio_net, veth, bridge helpers), no NIC drivers.
keep_drivers='-not \( -name block -o -name virtio -o -name net -o -name char -o -name md -o -name scsi -o -name ata -o -name nvme \)'
initramfs_modules='virtio_pci virtio_blk virtio_scsi sd_mod ahci ext4 crc32c_generic'
mmdebstrap --variant=minbase --quiet \
    --include="$packages" \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && printf "MODULES=list\nCOMPRESS=gzip\n" > "$1/etc/initramfs-tools/conf.d/containeros-vm"' \
    --customize-hook='printf "%s\n" '"$initramfs_modules"' >> "$1/etc/initramfs-tools/modules"' \
    --customize-hook='for k in "$1"/lib/modules/*/kernel; do find "$k/drivers" -mindepth 1 -maxdepth 1 '"$keep_drivers"' -exec rm -rf {} +; find "$k/drivers/net" -mindepth 1 -type d -prune -exec rm -rf {} +; rm -rf "$k/sound" "$k/net/wireless" "$k/net/mac80211" "$k/net/bluetooth"; done' \
    --customize-hook='for k in "$1"/lib/modules/*; do chroot "$1" depmod "${k##*/}"; done' \
    --customize-hook='chroot "$1" update-initramfs -u -k all' \
    --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" > '"$out/packages" \
    --customize-hook='rm -rf "$1"/var/log/* "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/*; : > "$1"/etc/machine-id' \
    bookworm "$out/root.tmp" "deb $mirror bookworm main"
mv "$out/root.tmp" "$out/root"
touch "$out/done"
echo "$out/root"
