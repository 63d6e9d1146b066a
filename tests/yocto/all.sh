#!/usr/bin/env bash
# Every meta-containeros check, in order of cost; exits 1 if any failed.
# bitbake-parse.sh prints SKIPPED without the upstream layers
# ($CONTAINEROS_YOCTO_REF); grow-data.sh without root and loop devices.
here=$(cd "$(dirname "$0")" && pwd)
status=0
for t in lint.sh kas-schema.sh crates-inc.sh agent-dist.sh grub-cfg.sh uboot-script.sh preinit.sh grow-data.sh bitbake-parse.sh; do
    echo "== tests/yocto/$t"
    "$here/$t" || status=1
done
exit $status
