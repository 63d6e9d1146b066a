SUMMARY = "Docker engine configuration for ContainerOS devices"
DESCRIPTION = "daemon.json for docker-moby on flash storage with a read-only \
               root: images, containers and volumes on /data/docker, container logs to \
               journald (RAM), live-restore so engine restarts keep containers running, \
               and the classic overlay2 store instead of the containerd image store so all \
               engine data stays under data-root. Swarm mode is never initialised (it is \
               off until someone runs docker swarm init)."
HOMEPAGE = "https://github.com/containeros/containeros"
BUGTRACKER = "https://github.com/containeros/containeros/issues"
SECTION = "admin"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SRC_URI = "file://daemon.json \
           file://10-containeros.conf"

S = "${UNPACKDIR}"

inherit allarch

do_install() {
    # docker-moby creates /etc/docker but installs no daemon.json.
    install -d ${D}${sysconfdir}/docker
    install -m 0644 ${UNPACKDIR}/daemon.json ${D}${sysconfdir}/docker/daemon.json
    # Start the engine only once its storage is mounted.
    for unit in docker.service containerd.service; do
        install -d ${D}${systemd_system_unitdir}/$unit.d
        install -m 0644 ${UNPACKDIR}/10-containeros.conf ${D}${systemd_system_unitdir}/$unit.d/10-containeros.conf
    done
}

FILES:${PN} += "${systemd_system_unitdir}"
CONFFILES:${PN} = "${sysconfdir}/docker/daemon.json"
RDEPENDS:${PN} = "docker"
