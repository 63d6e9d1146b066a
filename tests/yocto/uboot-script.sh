#!/usr/bin/env bash
# The layer's U-Boot boot script run by real U-Boot (Debian's qemu_arm build
# in qemu-system-arm, virt machine) from a disk laid out like the product's
# (MBR: FAT boot partition with boot.scr, slots A and B with /boot/zImage,
# data): which slot it picks, the counters it saves, the kernel command line
# it builds. The harness presets the stored environment at the top of the
# script and prints the counters where the script saves them (Debian's
# U-Boot keeps its environment in flash, which QEMU does not persist here);
# the slot logic itself runs unchanged. The dummy kernel fails with "Bad
# magic": by then the slot has been chosen, counted and loaded.
# Needs qemu-system-arm, u-boot-qemu, mkimage, sfdisk, mkfs.vfat, mtools,
# mkfs.ext4; SKIPPED otherwise.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cmd_in=$root/meta-containeros/recipes-bsp/containeros-boot/files/boot.cmd.in
uboot=${UBOOT_QEMU_ARM:-/usr/lib/u-boot/qemu_arm/u-boot.bin}

for t in qemu-system-arm mkimage sfdisk mkfs.vfat mcopy mkfs.ext4 timeout; do
    command -v $t >/dev/null 2>&1 || { echo "SKIPPED: uboot-script: $t missing"; exit 0; }
done
[ -f "$uboot" ] || { echo "SKIPPED: uboot-script: no U-Boot for QEMU at $uboot"; exit 0; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# What containeros-u-boot-script's do_compile renders for qemuarm.
boot='fdt=${fw_fdt}\ntest -n "${fdt}" || fdt=${fdtcontroladdr}\nbootz ${kernel_addr_r} - ${fdt}'
sed -e 's|@@KERNEL_IMAGETYPE@@|zImage|' -e 's|@@CMDLINE@@|console=ttyAMA0,115200|' \
    -e 's|@@DEVTYPE@@|virtio|' -e "s#@@BOOT@@#$boot#" "$cmd_in" > boot.cmd

mkdir -p slot/boot && head -c 4096 /dev/zero > slot/boot/zImage
mkfs.ext4 -q -d slot root.img 8M >/dev/null 2>&1

status=0
# run NAME EXPECTED_SLOT EXPECTED_SAVED [setenv commands]
run() {
    local name=$1 want_slot=$2 want_saved=$3 preset=${4:-}
    {
        [ -n "$preset" ] && echo "$preset"
        sed -e 's/^saveenv$/echo "SAVED ${BOOT_ORDER}|${BOOT_A_LEFT}|${BOOT_B_LEFT}"; saveenv/' \
            -e 's/^  saveenv$/  echo "SAVED ${BOOT_ORDER}|${BOOT_A_LEFT}|${BOOT_B_LEFT}"; saveenv/' \
            -e 's|^load \(.*/boot/zImage\)$|echo "BOOTARGS ${bootargs}"; load \1|' boot.cmd
    } > run.cmd
    mkimage -A arm -T script -C none -n test -d run.cmd boot.scr >/dev/null
    rm -f fat.img disk.img
    mkfs.vfat -C fat.img 16384 >/dev/null && mcopy -i fat.img boot.scr ::/
    truncate -s 48M disk.img
    printf 'label: dos\nlabel-id: 0x0c05a1e5\nstart=2048,size=32768,type=c,bootable\nstart=34816,size=16384\nstart=51200,size=16384\nstart=67584,size=8192\n' | sfdisk -q disk.img
    dd if=fat.img of=disk.img bs=512 seek=2048 conv=notrunc status=none
    dd if=root.img of=disk.img bs=512 seek=34816 conv=notrunc status=none
    dd if=root.img of=disk.img bs=512 seek=51200 conv=notrunc status=none
    timeout 60 qemu-system-arm -M virt -m 256 -nographic -net none -no-reboot -bios "$uboot" \
        -drive if=none,file=disk.img,id=d,format=raw -device virtio-blk-device,drive=d >out.txt 2>&1
    tr -cd '[:print:]\n' < out.txt > out.clean
    local got_slot got_saved args
    got_slot=$(sed -n 's/.*ContainerOS: booting slot \([AB]\).*/\1/p' out.clean | head -1)
    got_saved=$(sed -n 's/.*SAVED \(.*\)$/\1/p' out.clean | tail -1)
    args=$(sed -n 's/.*BOOTARGS \(.*\)$/\1/p' out.clean | head -1)
    [ -n "$got_slot" ] || got_slot=none
    local ok=1
    [ "$got_slot" = "$want_slot" ] && [ "$got_saved" = "$want_saved" ] || ok=0
    if [ "$want_slot" != none ]; then
        local part=$([ "$want_slot" = A ] && echo 02 || echo 03)
        case " $args " in
            *" root=PARTUUID=0c05a1e5-$part "*"containeros.slot=$want_slot init=/sbin/containeros-preinit"*) ;;
            *) ok=0 ;;
        esac
        grep -q 'Bad magic' out.clean || ok=0   # the slot's kernel was loaded
    fi
    if [ $ok = 1 ]; then
        echo "PASS: uboot-script: $name: slot $got_slot, saved $got_saved${args:+, bootargs:$args}"
    else
        echo "FAIL: uboot-script: $name: slot $got_slot (want $want_slot), saved '$got_saved' (want '$want_saved'), bootargs '$args'"
        grep -E 'ContainerOS|SAVED|BOOTARGS|rror|Unknown|Syntax|magic' out.clean | sed 's/^/     | /' | head -20
        status=1
    fi
}

run "empty environment"        A    "A B|2|3"
run "try B once"               B    "B A|3|0" 'setenv BOOT_ORDER "B A"; setenv BOOT_A_LEFT 3; setenv BOOT_B_LEFT 1'
run "B used up: back to A"     A    "B A|2|0" 'setenv BOOT_ORDER "B A"; setenv BOOT_A_LEFT 3; setenv BOOT_B_LEFT 0'
run "A marked bad"             B    "A B|0|1" 'setenv BOOT_ORDER "A B"; setenv BOOT_A_LEFT 0; setenv BOOT_B_LEFT 2'
run "none left: reset"         none "A B|3|3" 'setenv BOOT_ORDER "A B"; setenv BOOT_A_LEFT 0; setenv BOOT_B_LEFT 0'
exit $status
