#!/usr/bin/env bash
# oelint-adv over every recipe, append, class and include of meta-containeros
# (Yocto release wrynose), then the crates.inc staleness check.
# Installs oelint-adv with pip when missing; offline otherwise.
#
# Settings and suppressions, each with its reason: tests/yocto/oelint.cfg and
# tests/yocto/oelint-constants.json. One more is applied here: the generated
# *-crates.inc opens with `SRC_URI += " \`, the exact text OE-core's
# cargo-update-recipe-crates.bbclass writes, which oelint reports as
# oelint.vars.inconspaces / oelint.vars.notneededspace; those two findings are
# dropped for that file only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

if ! command -v oelint-adv >/dev/null 2>&1; then
    echo "lint: installing oelint-adv with pip"
    python3 -m pip install --quiet oelint-adv
fi

cd "$root"
mapfile -t files < <(find meta-containeros -type f \
    \( -name '*.bb' -o -name '*.bbappend' -o -name '*.bbclass' -o -name '*.inc' \) \
    -not -path '*/conf/*' | sort)
echo "lint: oelint-adv $(oelint-adv --version | awk '{print $NF}') over ${#files[@]} files (release wrynose)"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
# oelint exits 1 on any finding (the filtered list below decides); anything
# else means it did not run properly.
rc=0
OELINT_CONFIG="$here/oelint.cfg" oelint-adv --quiet --relpaths --release wrynose \
    --suppress oelint.vars.homepageping --jobs 1 "${files[@]}" 2>"$out" || rc=$?
if [ "$rc" -gt 1 ] || grep -q Traceback "$out"; then
    cat "$out"
    echo "FAIL: oelint-adv did not run (exit $rc)"
    exit 1
fi

findings=$(grep -vE -- '-crates\.inc:[0-9]+:(error|warning|info):oelint\.vars\.(inconspaces|notneededspace):' "$out" |
           grep -E ':[0-9]+:(error|warning|info):' || true)
if [ -n "$findings" ]; then
    echo "$findings"
    echo "FAIL: oelint-adv: $(echo "$findings" | wc -l) finding(s)"
    status=1
else
    echo "PASS: oelint-adv: no findings"
    status=0
fi

"$root/scripts/gen-crates-inc" --check || status=1
exit $status
