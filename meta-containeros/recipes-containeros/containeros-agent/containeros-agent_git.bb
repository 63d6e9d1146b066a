SUMMARY = "ContainerOS device agent: containers, A/B OS updates, health and rollback"
DESCRIPTION = "containeros-agent supervises the container engine, runs the \
               application containers of a signed release, streams OS updates into the \
               inactive root slot and commits or rolls back after a health check; \
               containeros is its command-line client over D-Bus."
HOMEPAGE = "https://github.com/containeros/containeros"
BUGTRACKER = "https://github.com/containeros/containeros/issues"
SECTION = "admin"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# The agent is built from this repository's Cargo workspace. The release
# process bumps SRCREV (and regenerates ${BPN}-crates.inc with
# scripts/gen-crates-inc); kas/dev.yml builds the working tree instead.
PV = "0.1.0+git"
SRC_URI = "git://github.com/containeros/containeros.git;protocol=https;branch=main"
SRCREV = "fb7947dc3091abd59ba2fe92c1ec84c204540e79"

inherit cargo cargo-update-recipe-crates systemd useradd deploy

# Every crate in Cargo.lock, fetched before do_compile: no network while
# cargo runs (--frozen).
require ${BPN}-crates.inc

# Only the two binaries; the workspace also holds the test harness.
CARGO_BUILD_FLAGS:append = " -p containeros-agent -p containeros-cli"

# Which engine the agent drives, from the machine's
# VIRTUAL-RUNTIME_container_engine: "docker" (the Docker Engine API of
# docker-moby) or "native" (the agent's built-in OCI engine on
# CONTAINEROS_NATIVE_RUNTIME). The package is per architecture, so a value
# that differs between machines of one architecture needs separate builds.
CONTAINEROS_ENGINE ??= "${@'docker' if d.getVar('VIRTUAL-RUNTIME_container_engine') in ('docker', 'docker-moby') else 'native'}"
CONTAINEROS_NATIVE_RUNTIME ??= "${bindir}/crun"

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/containeros-agent ${D}${bindir}/
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/containeros ${D}${bindir}/

    # The same unit, D-Bus policy and default configuration as everywhere
    # else: straight from the repository.
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/agent/dist/containeros-agent.service ${D}${systemd_system_unitdir}/
    install -d ${D}${datadir}/dbus-1/system.d
    install -m 0644 ${S}/agent/dist/org.containeros.Agent1.conf ${D}${datadir}/dbus-1/system.d/
    install -d ${D}${sysconfdir}/containeros
    install -m 0644 ${S}/agent/dist/agent.toml ${D}${sysconfdir}/containeros/agent.toml

    if [ "${CONTAINEROS_ENGINE}" = "native" ]; then
        # Switch the [engine] section of the default configuration to the
        # built-in engine; no engine unit to supervise.
        sed -i -e '/^\[engine\]/,/^\[/{' \
               -e 's|^kind = .*|kind = "native"|' \
               -e 's|^runtime = .*|runtime = "${CONTAINEROS_NATIVE_RUNTIME}"|' \
               -e 's|^unit = .*|unit = ""|' \
               -e '}' ${D}${sysconfdir}/containeros/agent.toml
        grep -q '^kind = "native"$' ${D}${sysconfdir}/containeros/agent.toml ||
            bbfatal "agent.toml: could not select the native engine; has the [engine] section changed?"
    fi

    if [ "${CONTAINEROS_BOOTLOADER}" = "grub" ]; then
        # The [update] section switches slots through grubenv on x86-64.
        sed -i -e '/^\[update\]/,/^\[/s|^bootloader = .*|bootloader = "grub"|' \
            ${D}${sysconfdir}/containeros/agent.toml
        grep -q '^bootloader = "grub"$' ${D}${sysconfdir}/containeros/agent.toml ||
            bbfatal "agent.toml: could not select GRUB; has the [update] section changed?"
    fi

    # The provisioning file is read where the boot partition is mounted.
    sed -i -e '/^\[provision\]/,/^\[/s|^file = .*|file = "${CONTAINEROS_BOOT_MOUNT}/containeros/config.toml"|' \
        ${D}${sysconfdir}/containeros/agent.toml
    grep -q '^file = "${CONTAINEROS_BOOT_MOUNT}/containeros/config.toml"$' ${D}${sysconfdir}/containeros/agent.toml ||
        bbfatal "agent.toml: could not set provision.file; has the [provision] section changed?"
}

# The provisioning file's template, for the image's boot partition
# (IMAGE_BOOT_FILES in containeros-image).
do_deploy() {
    install -m 0644 ${S}/agent/dist/provision-config.toml ${DEPLOYDIR}/containeros-provision.toml
}
addtask deploy after do_install before do_build

PACKAGES =+ "${PN}-cli"
FILES:${PN}-cli += "${bindir}/containeros"
FILES:${PN} += "${datadir}/dbus-1/system.d"
CONFFILES:${PN} = "${sysconfdir}/containeros/agent.toml"

SYSTEMD_SERVICE:${PN} = "containeros-agent.service"

# Members of this group may call the agent's mutating D-Bus methods.
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system containeros"

# The native engine runs containers with the OCI runtime itself, and builds
# bridge networks with ip (iproute2) and nft (nftables, meta-networking).
CONTAINEROS_ENGINE_RDEPENDS = "${@'${VIRTUAL-RUNTIME_container_runtime} iproute2 nftables' if d.getVar('CONTAINEROS_ENGINE') == 'native' else ''}"
RDEPENDS:${PN} = "${CONTAINEROS_ENGINE_RDEPENDS} dbus"
RRECOMMENDS:${PN} = "${PN}-cli"
