#!/usr/bin/env bash
# The layer's grub.cfg run by real GRUB (grub-emu) on a GPT disk image laid
# out like the product's (EFI system partition with grub.cfg and grubenv,
# slots after it): the slot it picks and the counters it saves with
# save_env for each starting state of BOOT_ORDER/BOOT_A_LEFT/BOOT_B_LEFT.
# grub-emu has no `linux` or `serial`; those errors are expected.
# Needs grub-emu, grub-editenv, sfdisk, mkfs.vfat and mtools; SKIPPED otherwise.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cfg_in=$root/meta-containeros/recipes-bsp/containeros-boot/files/grub.cfg.in
mods=${GRUB_EMU_MODULES:-/usr/lib/grub/x86_64-emu}

for t in grub-emu grub-editenv sfdisk mkfs.vfat mcopy mmd timeout; do
    command -v $t >/dev/null 2>&1 || { echo "SKIPPED: grub-cfg: $t missing"; exit 0; }
done
[ -d "$mods" ] || { echo "SKIPPED: grub-cfg: no GRUB emu modules at $mods"; exit 0; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# What containeros-grub-config's do_compile renders for qemux86-64.
# grub-emu cannot `linux`: an `ls /` before it opens the slot's partition as
# loading the kernel would.
sed -e 's|@@KERNEL_IMAGETYPE@@|bzImage|' -e 's|@@CMDLINE@@|console=ttyS0,115200|' \
    -e 's|^\( *\)linux |\1ls / ; linux |' "$cfg_in" > grub.cfg
mkfs.vfat -C esp.img 16384 >/dev/null
mmd -i esp.img ::/EFI ::/EFI/BOOT ::/EFI/BOOT/x86_64-emu
mcopy -i esp.img grub.cfg ::/EFI/BOOT/
mcopy -i esp.img "$mods"/*.mod "$mods"/*.lst ::/EFI/BOOT/x86_64-emu/
echo "(hd0) $work/disk.img" > device.map

status=0
# run NAME EXPECTED_SLOT EXPECTED_ENV [VAR=VALUE...]
run() {
    local name=$1 want_slot=$2 want_env=$3
    shift 3
    rm -f grubenv
    grub-editenv grubenv create
    [ $# -gt 0 ] && grub-editenv grubenv set "$@"
    cp esp.img esp-run.img
    mcopy -i esp-run.img grubenv ::/EFI/BOOT/
    rm -f disk.img; truncate -s 48M disk.img
    printf 'label: gpt\n,16M,U\n,8M\n,8M\n' | sfdisk -q disk.img
    dd if=esp-run.img of=disk.img bs=1M seek=1 conv=notrunc status=none
    timeout 10 grub-emu -m device.map -r hd0,gpt1 -d /EFI/BOOT </dev/null >emu.out 2>&1
    dd if=disk.img of=esp-out.img bs=1M skip=1 count=16 status=none
    mcopy -o -i esp-out.img ::/EFI/BOOT/grubenv env.out
    local got_env got_slot
    got_env=$(grub-editenv env.out list | sort | tr '\n' ' ' | sed 's/ $//')
    got_slot=$(tr -cd '[:print:]\n' < emu.out | grep -o "Booting \`ContainerOS slot [AB]'" | head -1 | sed "s/.*slot \([AB]\)'/\1/")
    [ -n "$got_slot" ] || got_slot=none
    # The slot's partition must resolve on the boot disk (the kernel itself
    # is missing from the empty test slots, and grub-emu has no `linux`).
    local bad_disk
    bad_disk=$(tr -cd '[:print:]\n' < emu.out | grep -o "error: disk [^ ]* not found" | head -1)
    if [ -n "$bad_disk" ]; then
        echo "FAIL: grub-cfg: $name: the slot's partition does not resolve: $bad_disk"
        status=1
    elif [ "$got_slot" = "$want_slot" ] && [ "$got_env" = "$want_env" ]; then
        echo "PASS: grub-cfg: $name: slot $got_slot, $got_env"
    else
        echo "FAIL: grub-cfg: $name: slot $got_slot (want $want_slot), env '$got_env' (want '$want_env')"
        tr -cd '[:print:]\n' < emu.out | grep -E 'error|ContainerOS' | sort -u | sed 's/^/     | /'
        status=1
    fi
}

run "fresh grubenv"             A    "BOOT_A_LEFT=2 BOOT_B_LEFT=3 BOOT_ORDER=A B"
run "defaults from the image"    A    "BOOT_A_LEFT=2 BOOT_B_LEFT=3 BOOT_ORDER=A B" "BOOT_ORDER=A B" BOOT_A_LEFT=3 BOOT_B_LEFT=3
run "try B once"                 B    "BOOT_A_LEFT=3 BOOT_B_LEFT=0 BOOT_ORDER=B A" "BOOT_ORDER=B A" BOOT_A_LEFT=3 BOOT_B_LEFT=1
run "B used up: back to A"       A    "BOOT_A_LEFT=2 BOOT_B_LEFT=0 BOOT_ORDER=B A" "BOOT_ORDER=B A" BOOT_A_LEFT=3 BOOT_B_LEFT=0
run "A marked bad"               B    "BOOT_A_LEFT=0 BOOT_B_LEFT=1 BOOT_ORDER=A B" "BOOT_ORDER=A B" BOOT_A_LEFT=0 BOOT_B_LEFT=2
run "none left: reset, reboot"   none "BOOT_A_LEFT=3 BOOT_B_LEFT=3 BOOT_ORDER=A B" "BOOT_ORDER=A B" BOOT_A_LEFT=0 BOOT_B_LEFT=0
exit $status
