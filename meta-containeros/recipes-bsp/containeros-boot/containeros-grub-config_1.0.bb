SUMMARY = "ContainerOS A/B boot configuration for GRUB EFI"
DESCRIPTION = "grub.cfg choosing the root slot from BOOT_ORDER, BOOT_A_LEFT \
               and BOOT_B_LEFT (RAUC-compatible try counting, same variables as the U-Boot \
               script) and the initial grubenv holding them."
HOMEPAGE = "https://github.com/containeros/containeros"
BUGTRACKER = "https://github.com/containeros/containeros/issues"
SECTION = "bootloaders"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SRC_URI = "file://grub.cfg.in"

S = "${UNPACKDIR}"

INHIBIT_DEFAULT_DEPS = "1"

inherit deploy nopackages

COMPATIBLE_HOST = "(x86_64|i.86|aarch64).*-linux"

CONTAINEROS_KERNEL_CMDLINE ??= "console=${@(d.getVar('SERIAL_CONSOLES') or '115200;ttyS0').split()[0].split(';')[1]},${@(d.getVar('SERIAL_CONSOLES') or '115200;ttyS0').split()[0].split(';')[0]}"

do_compile() {
    sed -e 's|@@KERNEL_IMAGETYPE@@|${KERNEL_IMAGETYPE}|' \
        -e 's|@@CMDLINE@@|${CONTAINEROS_KERNEL_CMDLINE}|' \
        "${UNPACKDIR}/grub.cfg.in" > "${B}/grub.cfg"

    # grubenv: a 1024-byte block in grub-editenv's format, padded with '#'.
    # GRUB only rewrites it in place, which is why it must exist up front.
    printf '# GRUB Environment Block\nBOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n' > "${B}/grubenv"
    pad=$(expr 1024 - $(stat -c %s "${B}/grubenv"))
    head -c "$pad" /dev/zero | tr '\0' '#' >> "${B}/grubenv"
}

do_deploy() {
    install -m 0644 "${B}/grub.cfg" "${DEPLOYDIR}/grub.cfg"
    install -m 0644 "${B}/grubenv" "${DEPLOYDIR}/grubenv"
}
addtask deploy after do_compile before do_build

PACKAGE_ARCH = "${MACHINE_ARCH}"
