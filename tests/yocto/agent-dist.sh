#!/usr/bin/env bash
# The contract between agent/dist/ and the containeros-agent recipe: the files
# the recipe installs exist, the service reads the config path the recipe
# installs, the D-Bus policy's group is the one the recipe creates, and the
# recipe's engine switch (sed over the [engine] section) turns the default
# configuration into a valid native-engine one. Python 3.11+ (tomllib).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dist=$root/agent/dist
recipe=$root/meta-containeros/recipes-containeros/containeros-agent/containeros-agent_git.bb
status=0
fail() { echo "FAIL: agent-dist: $*"; status=1; }

for f in containeros-agent.service org.containeros.Agent1.conf agent.toml provision-config.toml; do
    [ -f "$dist/$f" ] || fail "agent/dist/$f missing (the recipe installs it)"
done
[ $status = 0 ] || exit 1

grep -q '^ExecStart=/usr/bin/containeros-agent --config /etc/containeros/agent.toml' "$dist/containeros-agent.service" ||
    fail "containeros-agent.service does not start /usr/bin/containeros-agent --config /etc/containeros/agent.toml"
grep -q '^Type=notify' "$dist/containeros-agent.service" || fail "containeros-agent.service is not Type=notify"
grep -q 'group="containeros"' "$dist/org.containeros.Agent1.conf" ||
    fail "the D-Bus policy no longer names the group the recipe creates (containeros)"
grep -q 'GROUPADD_PARAM:${PN} = "--system containeros"' "$recipe" || fail "the recipe no longer creates the containeros group"

# Apply the recipe's own sed program (the lines between the [engine] range
# opener and its closing brace) to the default configuration.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$dist/agent.toml" "$tmp/agent.toml"
args=$(sed -n "/sed -i -e '\/^\\\\\[engine\\\\\]\//,/-e '}'/p" "$recipe" |
       sed -e 's/\${CONTAINEROS_NATIVE_RUNTIME}/\/usr\/bin\/crun/' -e 's/\${D}\${sysconfdir}\/containeros\/agent.toml//' -e 's/\\$//' | tr '\n' ' ')
[ -n "$args" ] || fail "could not find the engine switch in the recipe"
eval "$args" "$tmp/agent.toml"
python3 - "$dist/agent.toml" "$tmp/agent.toml" <<'PY' || status=1
import sys, tomllib
default = tomllib.load(open(sys.argv[1], "rb"))
native = tomllib.load(open(sys.argv[2], "rb"))
e0, e1 = default.get("engine", {}), native.get("engine", {})
problems = []
if e0.get("kind") != "docker" or e0.get("unit") != "docker.service" or e0.get("socket") != "/run/docker.sock":
    problems.append("default [engine] is not docker on /run/docker.sock with docker.service: %r" % e0)
if (e1.get("kind"), e1.get("runtime"), e1.get("unit")) != ("native", "/usr/bin/crun", ""):
    problems.append("the recipe's switch gives [engine] %r" % e1)
rest0 = {k: v for k, v in default.items() if k != "engine"}
rest1 = {k: v for k, v in native.items() if k != "engine"}
if rest0 != rest1:
    problems.append("the switch changed sections other than [engine]")
for p in problems:
    print("FAIL: agent-dist: " + p)
sys.exit(1 if problems else 0)
PY
# The GRUB switch: the recipe's sed line over the [update] section.
cp "$dist/agent.toml" "$tmp/grub.toml"
grub=$(grep -F 's|^bootloader = .*|bootloader = "grub"|' "$recipe" | sed -e 's/^ *//' -e 's/ *\\$//' || true)
[ -n "$grub" ] || fail "could not find the GRUB switch in the recipe"
[ -n "$grub" ] && eval "$grub" "$tmp/grub.toml"
python3 - "$dist/agent.toml" "$tmp/grub.toml" <<'PY' || status=1
import sys, tomllib
default = tomllib.load(open(sys.argv[1], "rb"))
grub = tomllib.load(open(sys.argv[2], "rb"))
problems = []
if default.get("update", {}).get("bootloader") != "u-boot":
    problems.append("default [update] bootloader is not u-boot")
if grub.get("update", {}).get("bootloader") != "grub":
    problems.append("the recipe's GRUB switch gives [update] %r" % grub.get("update"))
strip = lambda c: {k: ({kk: vv for kk, vv in v.items() if kk != "bootloader"} if k == "update" else v) for k, v in c.items()}
if strip(default) != strip(grub):
    problems.append("the GRUB switch changed more than update.bootloader")
for p in problems:
    print("FAIL: agent-dist: " + p)
sys.exit(1 if problems else 0)
PY
# The boot mount switch: the recipe's sed line over the [provision] section,
# with the GRUB machines' mount point.
cp "$dist/agent.toml" "$tmp/mount.toml"
mount=$(grep -F 's|^file = .*|file = "${CONTAINEROS_BOOT_MOUNT}/containeros/config.toml"|' "$recipe" |
        sed -e 's/^ *//' -e 's/ *\\$//' -e 's|\${CONTAINEROS_BOOT_MOUNT}|/boot/efi|' || true)
[ -n "$mount" ] || fail "could not find the provision.file switch in the recipe"
[ -n "$mount" ] && eval "$mount" "$tmp/mount.toml"
python3 - "$dist/agent.toml" "$tmp/mount.toml" <<'PY' || status=1
import sys, tomllib
default = tomllib.load(open(sys.argv[1], "rb"))
switched = tomllib.load(open(sys.argv[2], "rb"))
problems = []
if switched.get("provision", {}).get("file") != "/boot/efi/containeros/config.toml":
    problems.append("the recipe's boot mount switch gives [provision] %r" % switched.get("provision"))
strip = lambda c: {k: ({kk: vv for kk, vv in v.items() if kk != "file"} if k == "provision" else v) for k, v in c.items()}
if strip(default) != strip(switched):
    problems.append("the boot mount switch changed more than provision.file")
for p in problems:
    print("FAIL: agent-dist: " + p)
sys.exit(1 if problems else 0)
PY
grep -q 'agent/dist/provision-config.toml ${DEPLOYDIR}/containeros-provision.toml' "$recipe" ||
    fail "the recipe no longer deploys the provisioning template as containeros-provision.toml"
[ $status = 0 ] && echo "PASS: agent-dist: unit, D-Bus policy and config match the recipe; native engine switch gives kind=native runtime=/usr/bin/crun unit=\"\"; GRUB switch gives update.bootloader=grub; boot mount switch gives provision.file; template deployed"
exit $status
