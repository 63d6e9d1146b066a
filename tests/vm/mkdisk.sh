#!/usr/bin/env bash
# Assembles the simulated device from the cached root tree (mkroot.sh) and
# the agent built from this workspace: a GPT disk laid out as the layer's
# containeros-ab-grub.wks.in (boot: FAT EFI system partition with GRUB, the
# layer's grub.cfg and grubenv; rootA, rootB: ext4 slots; data: ext4), and
# the OS release images the tests publish.
#
#   tests/vm/mkdisk.sh ROOT_DIR BIN_DIR     prints the directory holding:
#
#   disk.raw            the factory disk: v1 in both slots, grubenv "A B"
#   v2.img              OS version 2, a good update
#   v3-noengine.img     OS version 3 with the engine disabled (health fails)
#   v3-nokernel.img     OS version 3 whose kernel never comes up (its
#                       initramfs has no working /init: panic, reboot)
#   release.key/.pub    the release signing key pair; the public key is in
#                       the provisioning file
#   provision.toml      the provisioning file written on the boot partition
#                       (containeros/config.toml) by `containeros provision
#                       write`, as a person would before the first boot:
#                       channel URL, keys and CA, host name, a static
#                       Ethernet address, a Wi-Fi network, an SSH key
#   ssh.key             the SSH key it authorizes (root)
#   ca.pem, server.*    the test CA (trusted by the device through
#                       channel.ca_file) and the channel server's certificate
#                       for 10.0.2.100, where the runner forwards the
#                       channel to the host
#
# Everything on the device comes from the same files the Yocto layer
# installs: the agent's unit, D-Bus policy and agent.toml (agent/dist/, with
# update.bootloader set to grub as the recipe does on GRUB machines),
# containeros-preinit, the boot partition mount and journald drop-in
# (containeros-base), grub.cfg and grubenv (containeros-grub-config, rendered
# with the same substitutions; an initrd line is added after `linux`
# because Debian's kernel needs its initramfs to find a virtio disk).
# The test-only parts are in tests/vm/guest/.
#
# Cached in $CONTAINEROS_VM_CACHE/disk-<hash of every input>/.
set -euo pipefail

root_dir=$1
bin_dir=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CONTAINEROS_VM_CACHE:-/var/cache/containeros-vm}
layer=$repo/meta-containeros
base=$layer/recipes-core/containeros-base/files

inputs=$( {
    grep -v '^ *#' "$0"
    echo "$root_dir"
    sha256sum "$bin_dir/containeros-agent" "$bin_dir/containeros" | cut -d' ' -f1
    (cd "$repo" && find tests/vm/guest agent/dist "$base" "$layer/recipes-bsp/containeros-boot/files" -type f -print0 |
        sort -z | xargs -0 sha256sum)
} | sha256sum | cut -c1-12)
out=$cache/disk-$inputs
if [ -f "$out/done" ]; then
    echo "$out"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "mkdisk.sh: needs root (the root tree's owners)" >&2; exit 1; }
for tool in mkfs.ext4 mkfs.vfat mcopy mmd sfdisk grub-mkimage openssl cpio ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "mkdisk.sh: $tool missing (see tests/vm/README.md)" >&2; exit 1; }
done
[ -d /usr/lib/grub/x86_64-efi ] || { echo "mkdisk.sh: /usr/lib/grub/x86_64-efi missing (apt-get install grub-efi-amd64-bin)" >&2; exit 1; }

# Older assemblies are of no use any more (a running machine keeps its
# backing file open).
find "$cache" -maxdepth 1 -name 'disk-*' -not -name "disk-$inputs" -exec rm -rf {} +
rm -rf "$out"
mkdir -p "$out"
work=$out/work
tree=$work/tree
mkdir -p "$tree"
trap 'rm -rf "$work"' EXIT
cp -a "$root_dir/." "$tree/"

# Smaller slot images, faster updates: no engine debugging tools, no file
# system or SCSI modules a QEMU disk with ext4, FAT and overlay never needs.
rm -f "$tree"/usr/bin/{dnet,ctr,containerd-shim,containerd-shim-runc-v1}
for k in "$tree"/usr/lib/modules/*/kernel; do
    find "$k/fs" -mindepth 1 -maxdepth 1 -type d -not \( -name ext4 -o -name jbd2 -o -name fat -o -name nls \
        -o -name overlayfs -o -name fuse \) -exec rm -rf {} +
    find "$k/drivers/scsi" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
    chroot "$tree" depmod "$(basename "$(dirname "$k")")"
done

# --- the agent, as containeros-agent_git.bb installs it
install -m 0755 "$bin_dir/containeros-agent" "$bin_dir/containeros" "$tree/usr/bin/"
install -D -m 0644 "$repo/agent/dist/containeros-agent.service" "$tree/usr/lib/systemd/system/containeros-agent.service"
install -D -m 0644 "$repo/agent/dist/org.containeros.Agent1.conf" "$tree/usr/share/dbus-1/system.d/org.containeros.Agent1.conf"
install -D -m 0644 "$repo/agent/dist/agent.toml" "$tree/etc/containeros/agent.toml"
sed -i -e '/^\[update\]/,/^\[/s|^bootloader = .*|bootloader = "grub"|' \
    -e '/^\[provision\]/,/^\[/s|^file = .*|file = "/boot/efi/containeros/config.toml"|' \
    -e '/^\[provision\]/,/^\[/s|^ssh_unit = .*|ssh_unit = "ssh.socket"|' "$tree/etc/containeros/agent.toml"
for want in 'bootloader = "grub"' 'file = "/boot/efi/containeros/config.toml"' 'ssh_unit = "ssh.socket"'; do
    grep -qx "$want" "$tree/etc/containeros/agent.toml" ||
        { echo "mkdisk.sh: agent.toml: could not set $want; have its sections changed?" >&2; exit 1; }
done
chroot "$tree" groupadd --system containeros

# --- containeros-base, for a GRUB machine (boot partition at /boot/efi)
sed -e 's|@PERSISTENT_ETC@|machine-id hostname NetworkManager/system-connections/|' -e 's|@DATA_DIRS@|etc/ssh-host-keys|' \
    "$base/containeros-preinit.in" >"$tree/sbin/containeros-preinit"
chmod 0755 "$tree/sbin/containeros-preinit"
sed -e 's|@BOOTMOUNT@|/boot/efi|' "$base/boot-mount.in" >"$tree/usr/lib/systemd/system/boot-efi.mount"
install -D -m 0644 "$base/journald-containeros.conf" "$tree/usr/lib/systemd/journald.conf.d/10-containeros.conf"
mkdir -p "$tree/data" "$tree/boot/efi" "$tree/etc/NetworkManager/system-connections"
# openssh-server, as the layer has it: host keys made on the device (here:
# none in the image), the socket off until the agent starts it for
# provisioned keys.
rm -f "$tree"/etc/ssh/ssh_host_*
awk '$1 !~ /^#/ && NF >= 2 { print $2 }' "$repo/tests/vm/guest/etc/fstab" | while read -r m; do mkdir -p "$tree$m"; done

# --- the simulated machine's own parts (tests/vm/guest/)
cp -r --no-preserve=ownership "$repo/tests/vm/guest/." "$tree/"
ln -sf /etc/machine-id "$tree/var/lib/dbus/machine-id"
kernel=$(cd "$tree/boot" && ls vmlinuz-* | sort -V | tail -1)
ln -sf "$kernel" "$tree/boot/vmlinuz"
ln -sf "initrd.img-${kernel#vmlinuz-}" "$tree/boot/initrd.img"
systemctl --root="$tree" enable containeros-agent.service boot-efi.mount NetworkManager.service \
    containeros-vm-bus.service containeros-vm-registry.service docker.service >/dev/null 2>&1
systemctl --root="$tree" disable ssh.service ssh.socket systemd-networkd.service >/dev/null 2>&1 || true
systemctl --root="$tree" mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
    fstrim.timer dpkg-db-backup.timer >/dev/null 2>&1 || true

os_release() { # VERSION
    rm -f "$tree/etc/os-release"
    printf 'NAME="ContainerOS (simulated device)"\nID=containeros\nVERSION_ID="%s"\nPRETTY_NAME="ContainerOS %s (QEMU x86-64)"\n' \
        "$1" "$1" >"$tree/etc/os-release"
}

# One slot size for every image: the tree plus 25%, rounded up to 16 MiB.
kib=$(du -sk "$tree" | cut -f1)
root_mib=$(( (kib * 5 / 4 / 1024 + 64 + 15) / 16 * 16 ))
mkimage() { # NAME
    rm -f "$out/$1"
    truncate -s "${root_mib}M" "$out/$1"
    mkfs.ext4 -q -F -b 4096 -L rootfs -E nodiscard -d "$tree" "$out/$1"
}
os_release 1
mkimage v1.img
os_release 2
mkimage v2.img
# The engine disabled: no engine answers, no app runs, health never passes.
os_release 3
ln -sf /dev/null "$tree/etc/systemd/system/docker.service"
ln -sf /dev/null "$tree/etc/systemd/system/docker.socket"
mkimage v3-noengine.img
rm "$tree/etc/systemd/system/docker.service" "$tree/etc/systemd/system/docker.socket"
# A kernel that never comes up: its initramfs's /init cannot be executed,
# the kernel then fails on init= and panics (panic=5 reboots).
real_initrd=$(readlink "$tree/boot/initrd.img")
mkdir -p "$work/badinit"
printf 'not an executable\n' >"$work/badinit/init"
chmod 0755 "$work/badinit/init"
(cd "$work/badinit" && echo init | cpio --quiet -o -H newc) >"$tree/boot/initrd-broken.img"
ln -sf initrd-broken.img "$tree/boot/initrd.img"
mkimage v3-nokernel.img
ln -sf "$real_initrd" "$tree/boot/initrd.img"

# --- keys: release signing, test CA, the channel server's certificate
"$bin_dir/containeros" release keygen --secret "$out/release.key" --public "$out/release.pub" >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=ContainerOS VM test CA" \
    -keyout "$out/ca.key" -out "$out/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=10.0.2.100" \
    -keyout "$out/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:10.0.2.100\nextendedKeyUsage=serverAuth\n' >"$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial -days 3650 \
    -extfile "$work/ext" -out "$out/server.pem" 2>/dev/null

# --- data: the test runner's tuning only (overrides agent.toml: a short
# poll interval and health deadline); the device's own settings come from
# the provisioning file on the boot partition, below.
mkdir -p "$work/data/containeros"
cat >"$work/data/containeros/agent.toml" <<TOML
# The test runner's tuning (overrides /etc/containeros/agent.toml).
[update]
health_timeout = "${CONTAINEROS_VM_HEALTH_TIMEOUT:-90s}"

[channel]
interval = "10s"
TOML
data_mib=2048
truncate -s "${data_mib}M" "$work/data.ext4"
mkfs.ext4 -q -F -L data -E nodiscard,root_owner=0:0 -d "$work/data" "$work/data.ext4"

# --- boot: GRUB for EFI (removable path), the layer's grub.cfg and grubenv
# Kernel arguments (CONTAINEROS_KERNEL_CMDLINE in the layer): the serial
# console; a panic resets the machine (GRUB then counts the attempt); no
# AppArmor (no profiles on the device); the NIC stays eth0 (a rename racing
# systemd-networkd under emulation lost the address).
boot_mib=32
sed -e 's|@@KERNEL_IMAGETYPE@@|vmlinuz|' -e 's|@@CMDLINE@@|console=ttyS0,115200 panic=5 apparmor=0 net.ifnames=0|' \
    "$layer/recipes-bsp/containeros-boot/files/grub.cfg.in" >"$work/grub.cfg"
sed -i -e 's|^\(    linux /boot/.*\)$|\1\n    initrd /boot/initrd.img|' "$work/grub.cfg"
grep -q '^    initrd /boot/initrd.img$' "$work/grub.cfg" ||
    { echo "mkdisk.sh: grub.cfg.in: no 'linux /boot/...' line to add the initrd after" >&2; exit 1; }
printf '# GRUB Environment Block\nBOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n' >"$work/grubenv"
head -c $((1024 - $(stat -c %s "$work/grubenv"))) /dev/zero | tr '\0' '#' >>"$work/grubenv"
grub-mkimage -O x86_64-efi -p /EFI/BOOT -o "$work/BOOTX64.EFI" \
    part_gpt fat ext2 normal linux configfile loadenv regexp test echo serial terminal reboot halt gzio \
    efi_gop all_video
rm -f "$work/boot.vfat"
mkfs.vfat -n boot -C "$work/boot.vfat" $((boot_mib * 1024)) >/dev/null
mmd -i "$work/boot.vfat" ::/EFI ::/EFI/BOOT
mcopy -i "$work/boot.vfat" "$work/BOOTX64.EFI" "$work/grub.cfg" "$work/grubenv" ::/EFI/BOOT/

# --- the disk: GPT as containeros-ab-grub.wks.in (1 MiB aligned)
disk=$out/disk.raw
total=$((1 + boot_mib + 2 * root_mib + data_mib + 1))
truncate -s "${total}M" "$disk"
sfdisk -q "$disk" <<SFDISK
label: gpt
start=1MiB, size=${boot_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=boot
size=${root_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootA
size=${root_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootB
size=${data_mib}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data
SFDISK
put() { # IMAGE OFFSET_MIB
    dd if="$1" of="$disk" bs=1M seek="$2" conv=notrunc,sparse status=none
}
put "$work/boot.vfat" 1
put "$out/v1.img" $((1 + boot_mib))
put "$out/v1.img" $((1 + boot_mib + root_mib))
put "$work/data.ext4" $((1 + boot_mib + 2 * root_mib))

# --- provisioning: what a person writes on the card before the first boot,
# through the host-side command (no mount, no root needed for this part).
# QEMU's user network: the device at 10.0.2.15, gateway 10.0.2.2, DNS
# 10.0.2.3; the Wi-Fi network has no radio here (its profile is made and
# its passphrase leaves the boot partition all the same).
ssh-keygen -q -t ed25519 -N "" -C "containeros-vm-test" -f "$out/ssh.key"
cat >"$out/provision.toml" <<TOML
# The simulated device's provisioning file (tests/vm/mkdisk.sh).
[device]
hostname = "shop-window-7"

[channel]
url = "https://10.0.2.100/stable"
trusted_keys = ["$(tr -d '\n' <"$out/release.pub")"]
ca = """
$(cat "$out/ca.pem")
"""

[ethernet]
ipv4 = "static"
address = "10.0.2.15/24"
gateway = "10.0.2.2"
dns = ["10.0.2.3"]

[[wifi]]
ssid = "Shop"
psk = "correct horse battery staple"

[ssh]
authorized_keys = ["$(cat "$out/ssh.key.pub")"]
TOML
"$bin_dir/containeros" provision write "$disk" "$out/provision.toml" >/dev/null
echo "$root_mib" >"$out/root-mib"
touch "$out/done"
echo "$out"
