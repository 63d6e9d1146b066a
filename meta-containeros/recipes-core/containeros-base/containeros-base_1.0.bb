SUMMARY = "ContainerOS base: read-only root with a persistent /data partition"
DESCRIPTION = "Early-boot binding of the persistent /etc files from the data \
               partition, first-boot growth of the data partition, the boot partition \
               mount for the bootloader environment, persistent SSH host keys and \
               journald in RAM."
HOMEPAGE = "https://github.com/containeros/containeros"
BUGTRACKER = "https://github.com/containeros/containeros/issues"
SECTION = "base"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SRC_URI = "file://containeros-preinit.in \
           file://containeros-grow-data \
           file://containeros-grow-data.service \
           file://journald-containeros.conf \
           file://boot-mount.in \
           file://run-ssh.mount"

S = "${UNPACKDIR}"

inherit systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# The boot mount point and the persisted paths depend on the machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"

# Paths under /etc kept on /data/etc across reboots and OS updates. Each is
# bound before systemd starts (systemd reads machine-id and hostname first
# thing). A trailing "/" marks a directory: everything inside it persists,
# and it is created in the root file system so there is something to bind
# over. Files are bound as they are: replace their content in place (a
# rename onto a bound file fails).
# NetworkManager's profiles (system-connections/) hold the provisioned
# networks, secrets included (root-only keyfiles).
CONTAINEROS_PERSISTENT_ETC ??= "machine-id hostname NetworkManager/system-connections/"
# Directories created on /data at every boot before systemd starts.
CONTAINEROS_DATA_DIRS ??= "etc/ssh-host-keys"
# Where the boot partition is mounted: CONTAINEROS_BOOT_MOUNT (distro,
# containeros-boot.inc).

SYSTEMD_SERVICE:${PN} = "containeros-grow-data.service ${@containeros_mount_unit(d)} run-ssh.mount"

def containeros_mount_unit(d):
    return d.getVar('CONTAINEROS_BOOT_MOUNT').strip('/').replace('/', '-') + '.mount'

do_install() {
    install -d ${D}${base_sbindir} ${D}${sbindir} ${D}${systemd_system_unitdir}
    sed -e 's|@PERSISTENT_ETC@|${CONTAINEROS_PERSISTENT_ETC}|' \
        -e 's|@DATA_DIRS@|${CONTAINEROS_DATA_DIRS}|' \
        ${UNPACKDIR}/containeros-preinit.in > ${D}${base_sbindir}/containeros-preinit
    chmod 0755 ${D}${base_sbindir}/containeros-preinit

    install -m 0755 ${UNPACKDIR}/containeros-grow-data ${D}${sbindir}/
    sed -e 's|@SBINDIR@|${sbindir}|' ${UNPACKDIR}/containeros-grow-data.service \
        > ${D}${systemd_system_unitdir}/containeros-grow-data.service

    sed -e 's|@BOOTMOUNT@|${CONTAINEROS_BOOT_MOUNT}|' ${UNPACKDIR}/boot-mount.in \
        > ${D}${systemd_system_unitdir}/${@containeros_mount_unit(d)}
    install -m 0644 ${UNPACKDIR}/run-ssh.mount ${D}${systemd_system_unitdir}/

    install -d ${D}${systemd_unitdir}/journald.conf.d
    install -m 0644 ${UNPACKDIR}/journald-containeros.conf \
        ${D}${systemd_unitdir}/journald.conf.d/10-containeros.conf

    # Mount points on the read-only root.
    install -d ${D}/data ${D}${CONTAINEROS_BOOT_MOUNT}
    for p in ${CONTAINEROS_PERSISTENT_ETC}; do
        case $p in
        */) install -d ${D}${sysconfdir}/$p ;;
        esac
    done
}

FILES:${PN} += "/data ${CONTAINEROS_BOOT_MOUNT} ${systemd_unitdir}/journald.conf.d"

RDEPENDS:${PN} = "e2fsprogs-resize2fs \
                  util-linux-findmnt \
                  util-linux-mount \
                  util-linux-mountpoint \
                  util-linux-partx \
                  util-linux-sfdisk"
