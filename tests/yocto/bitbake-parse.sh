#!/usr/bin/env bash
# Parse meta-containeros with BitBake and resolve the full task graph of
# containeros-image for every supported machine (bitbake -p, bitbake -g),
# offline, against the upstream layers checked out at the pins of kas/.
#
#   CONTAINEROS_YOCTO_REF  reference checkout made by ../shared/yocto/setup.sh
#                          (layers/ and parse-layer.sh; default /work/yocto-ref)
#   MACHINES               machines to check (default: all seven)
#   STRICT=1               fail on BitBake warnings too
#
# Prints PASS/FAIL and the build-list size per machine; exits 1 if any
# machine fails. Without the reference checkout it prints SKIPPED and exits 0.
# One BitBake at a time: machines are checked one after the other.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ref=${CONTAINEROS_YOCTO_REF:-/work/yocto-ref}
machines=${MACHINES:-"qemux86-64 qemuarm qemuarmv5 qemumips raspberrypi0-wifi raspberrypi3 raspberrypi4-64"}

if [ ! -x "$ref/parse-layer.sh" ] || [ ! -f "$ref/layers/openembedded-core/oe-init-build-env" ]; then
    echo "SKIPPED: upstream layers not present at $ref"
    exit 0
fi

# The pins in kas/containeros.yml must be what the reference has checked out.
for layer in bitbake openembedded-core meta-openembedded meta-virtualization meta-raspberrypi; do
    want=$(awk -v l="  $layer:" '$0 == l {f=1} f && /commit:/ {print $2; exit}' "$root/kas/containeros.yml")
    have=$(git -C "$ref/layers/$layer" rev-parse HEAD 2>/dev/null || echo none)
    if [ "$want" != "$have" ]; then
        echo "FAIL: $ref/layers/$layer is at $have, kas/containeros.yml pins ${want:-nothing}"
        exit 1
    fi
done

# The layers kas/containeros.yml uses (no meta-yocto: the distro is not poky).
L=$ref/layers
base_layers="$L/openembedded-core/meta $L/meta-openembedded/meta-oe $L/meta-openembedded/meta-python \
$L/meta-openembedded/meta-networking $L/meta-openembedded/meta-filesystems $L/meta-virtualization \
$L/meta-raspberrypi"

declare -A result size
failed=0
for m in $machines; do
    conf=""
    case $m in
        raspberrypi*) conf=$(printf '%s\n' 'RPI_USE_U_BOOT = "1"' 'ENABLE_UART = "1"') ;;
    esac
    log=$(mktemp)
    DISTRO=containeros BASE_LAYERS="$base_layers" LOCAL_CONF_APPEND="$conf" STRICT=${STRICT:-} YOCTO_REF="$ref" \
        "$ref/parse-layer.sh" "$root/meta-containeros" "$m" containeros-image 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    n=$(sed -n 's/^ *\([0-9]\+\) recipes in the containeros-image build list.*/\1/p' "$log")
    rm -f "$log"
    if [ "$rc" -eq 0 ]; then result[$m]=PASS; else result[$m]=FAIL; failed=1; fi
    size[$m]=${n:--}
done

echo
echo "bitbake-parse summary (DISTRO=containeros, target containeros-image${STRICT:+, STRICT=1}):"
for m in $machines; do
    printf '  %-4s %-18s build list: %s recipes\n' "${result[$m]}" "$m" "${size[$m]}"
done
exit $failed
