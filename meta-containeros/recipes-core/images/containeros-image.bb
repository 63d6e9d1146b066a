SUMMARY = "ContainerOS device image: read-only A/B root, container engine and agent"
DESCRIPTION = "Bootable disk image (wic) with a boot partition, two equal \
               root slots and a data partition, plus the root file system image that the \
               agent streams into the inactive slot on an OS update."
HOMEPAGE = "https://github.com/containeros/containeros"
BUGTRACKER = "https://github.com/containeros/containeros/issues"
SECTION = "images"
LICENSE = "MIT"

inherit core-image

IMAGE_INSTALL = "packagegroup-core-boot packagegroup-containeros ${CORE_IMAGE_EXTRA_INSTALL}"
IMAGE_LINGUAS = ""

# No package manager on the device: the root is replaced as a whole.
IMAGE_FEATURES += "read-only-rootfs"
# SSH for service access; host keys persist on /data (containeros-base).
IMAGE_FEATURES += "${CONTAINEROS_SSH_FEATURE}"
CONTAINEROS_SSH_FEATURE ??= "ssh-server-openssh"

# wic builds the disk; the ext4 image is the slot image an OS update writes,
# and wic copies it into both slots, so it must exist first.
IMAGE_FSTYPES = "ext4 wic.zst wic.bmap"
# nooelint: oelint.vars.specific - "wic" is the image type override of image_types.bbclass
IMAGE_TYPEDEP:wic = "ext4"

# Every slot image has exactly the slot's size, so any release fits any
# device built with the same CONTAINEROS_ROOT_SIZE; a root that outgrows the
# slot stops the build instead of failing on the device.
IMAGE_ROOTFS_SIZE = "${@int(d.getVar('CONTAINEROS_ROOT_SIZE')) * 1024}"
IMAGE_ROOTFS_MAXSIZE = "${IMAGE_ROOTFS_SIZE}"
IMAGE_ROOTFS_EXTRA_SPACE = "0"
IMAGE_OVERHEAD_FACTOR = "1.2"

# Reproducible ext4: fixed UUID and directory hash seed (timestamps come from
# SOURCE_DATE_EPOCH / REPRODUCIBLE_TIMESTAMP_ROOTFS), so two builds of the
# same inputs give the same blocks and chunk deltas stay small. Slots are
# found by partition, never by file system UUID.
CONTAINEROS_ROOTFS_UUID ??= "9c1f8e52-6b0a-4d3e-8f7a-2d5c0e1b7a64"
# nooelint: oelint.vars.specific - "ext4" is the image type override of image_types.bbclass
EXTRA_IMAGECMD:ext4 = "-i 4096 -U ${CONTAINEROS_ROOTFS_UUID} -E hash_seed=${CONTAINEROS_ROOTFS_UUID}"

# The bootloader pieces each boot family puts on the boot partition. wic's
# own bootloader list (syslinux, systemd-boot, ...) is not used.
CONTAINEROS_WKS_DEPENDS = "${@ {'grub': 'grub-efi containeros-grub-config', 'u-boot': 'virtual/bootloader u-boot-default-script'}[d.getVar('CONTAINEROS_BOOTLOADER')]}"
WKS_FILE_DEPENDS = "${WKS_FILE_DEPENDS_DEFAULT} ${CONTAINEROS_WKS_DEPENDS}"
do_image_wic[depends] += "${@' '.join('%s:do_deploy' % p for p in d.getVar('CONTAINEROS_WKS_DEPENDS').split())}"

# Files bootimg_partition copies to the boot partition (name;destination).
# The Raspberry Pi BSP sets its own list (firmware, DTBs, U-Boot); QEMU
# machines need only the boot script, x86-64 only GRUB.
CONTAINEROS_BOOT_FILES_UBOOT ?= "boot.scr"
CONTAINEROS_BOOT_FILES_GRUB ?= "grub-efi-bootx64.efi;EFI/BOOT/bootx64.efi grub.cfg;EFI/BOOT/grub.cfg grubenv;EFI/BOOT/grubenv"
IMAGE_BOOT_FILES ?= "${@d.getVar('CONTAINEROS_BOOT_FILES_GRUB') if d.getVar('CONTAINEROS_BOOTLOADER') == 'grub' else d.getVar('CONTAINEROS_BOOT_FILES_UBOOT')}"

# The first-boot provisioning file's template (every key commented out) on
# the boot partition, where a person edits it from any computer before the
# first boot (or with `containeros provision`). containeros-agent deploys it.
CONTAINEROS_PROVISION_TEMPLATE ??= "containeros-provision.toml;containeros/config.toml"
IMAGE_BOOT_FILES:append = " ${CONTAINEROS_PROVISION_TEMPLATE}"
do_image_wic[depends] += "containeros-agent:do_deploy"
