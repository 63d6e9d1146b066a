SUMMARY = "ContainerOS A/B boot script for U-Boot"
DESCRIPTION = "boot.scr choosing the root slot from BOOT_ORDER, BOOT_A_LEFT \
               and BOOT_B_LEFT (RAUC-compatible try counting) and booting the kernel that \
               slot carries in /boot."
HOMEPAGE = "https://github.com/containeros/containeros"
BUGTRACKER = "https://github.com/containeros/containeros/issues"
SECTION = "bootloaders"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

DEPENDS = "u-boot-mkimage-native"

# The u-boot recipe of meta-raspberrypi depends on this name.
PROVIDES += "u-boot-default-script"
INHIBIT_DEFAULT_DEPS = "1"

SRC_URI = "file://boot.cmd.in"

S = "${UNPACKDIR}"

inherit kernel-arch deploy nopackages

# Kernel file in the slot's /boot, and the U-Boot command that boots it.
CONTAINEROS_UBOOT_KERNEL ??= "${KERNEL_IMAGETYPE}"
CONTAINEROS_UBOOT_KERNEL:mipsarch ??= "uImage"
CONTAINEROS_UBOOT_BOOTCMD ??= "${@ {'zImage': 'bootz', 'Image': 'booti'}.get(d.getVar('CONTAINEROS_UBOOT_KERNEL'), 'bootm')}"
# Device tree file in the slot's /boot for boards whose firmware or QEMU
# does not provide one (empty: use the firmware's, else U-Boot's own).
CONTAINEROS_UBOOT_FDTFILE ??= ""
CONTAINEROS_UBOOT_FDTFILE:qemuarmv5 ??= "versatile-pb.dtb"
# "0": the kernel carries its device tree (MIPS Malta).
CONTAINEROS_UBOOT_FDT ??= "1"
CONTAINEROS_UBOOT_FDT:mipsarch ??= "0"
# Interface of the boot disk, used when standard boot did not set devtype.
CONTAINEROS_UBOOT_DEVTYPE ??= "mmc"
CONTAINEROS_UBOOT_DEVTYPE:qemuarm ??= "virtio"
CONTAINEROS_UBOOT_DEVTYPE:mipsarch ??= "ide"
# Kernel arguments besides root/slot selection. The Raspberry Pi firmware
# passes its own (console, memory split) and the script keeps them.
CONTAINEROS_KERNEL_CMDLINE ??= "console=${@(d.getVar('SERIAL_CONSOLES') or '115200;ttyS0').split()[0].split(';')[1]},${@(d.getVar('SERIAL_CONSOLES') or '115200;ttyS0').split()[0].split(';')[0]}"
CONTAINEROS_KERNEL_CMDLINE:rpi ??= ""

def containeros_uboot_boot(d):
    cmd = d.getVar('CONTAINEROS_UBOOT_BOOTCMD')
    if d.getVar('CONTAINEROS_UBOOT_FDT') != '1':
        return '%s ${kernel_addr_r}' % cmd
    fdtfile = d.getVar('CONTAINEROS_UBOOT_FDTFILE')
    if fdtfile:
        fdt = 'load ${devtype} ${devnum}:${rootpart} ${fdt_addr_r} /boot/%s\\nfdt=${fdt_addr_r}' % fdtfile
    else:
        fdt = 'fdt=${fw_fdt}\\ntest -n "${fdt}" || fdt=${fdtcontroladdr}'
    return '%s\\n%s ${kernel_addr_r} - ${fdt}' % (fdt, cmd)

do_compile() {
    sed -e 's|@@KERNEL_IMAGETYPE@@|${CONTAINEROS_UBOOT_KERNEL}|' \
        -e 's|@@CMDLINE@@|${CONTAINEROS_KERNEL_CMDLINE}|' \
        -e 's|@@DEVTYPE@@|${CONTAINEROS_UBOOT_DEVTYPE}|' \
        -e 's#@@BOOT@@#${@containeros_uboot_boot(d)}#' \
        "${UNPACKDIR}/boot.cmd.in" > "${B}/boot.cmd"
    mkimage -A ${UBOOT_ARCH} -T script -C none -n "ContainerOS A/B boot" -d "${B}/boot.cmd" "${B}/boot.scr"
}

do_deploy() {
    install -m 0644 "${B}/boot.scr" "${DEPLOYDIR}/boot.scr"
}
addtask deploy after do_compile before do_build

# The script names the kernel file, console and boot device of one machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"
