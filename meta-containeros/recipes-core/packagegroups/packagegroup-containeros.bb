SUMMARY = "ContainerOS device: agent, container engine, boot and persistence"
DESCRIPTION = "Everything a ContainerOS device runs besides the core boot \
               packages: the agent and its CLI, the machine's container engine \
               or OCI runtime, persistence and boot glue, the kernel for the \
               root slot, and Wi-Fi where the board has it."
HOMEPAGE = "https://github.com/containeros/containeros"
BUGTRACKER = "https://github.com/containeros/containeros/issues"
SECTION = "packagegroups"
LICENSE = "MIT"

# Contents depend on the machine's engine, bootloader and Wi-Fi.
PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit packagegroup

# Kernel in the slot's /boot (the bootloader loads it from the slot), plus a
# device tree where the firmware does not provide one.
CONTAINEROS_KERNEL_PACKAGES ??= "kernel-image ${@'kernel-devicetree' if d.getVar('CONTAINEROS_UBOOT_FDTFILE') else ''}"
CONTAINEROS_UBOOT_FDTFILE ??= ""
CONTAINEROS_UBOOT_FDTFILE:qemuarmv5 ??= "versatile-pb.dtb"

# The engine (VIRTUAL-RUNTIME_container_engine, empty where the agent's
# built-in engine is used) and its flash-friendly configuration.
CONTAINEROS_ENGINE_PACKAGES ??= "${VIRTUAL-RUNTIME_container_engine} \
                                 ${VIRTUAL-RUNTIME_container_runtime} \
                                 ${@'containeros-docker-config' if d.getVar('VIRTUAL-RUNTIME_container_engine') in ('docker', 'docker-moby') else ''}"

# Tools that read and write the bootloader environment by hand (service
# access; the agent writes the environment itself).
CONTAINEROS_BOOTENV_PACKAGES ??= "${@'libubootenv-bin u-boot-env' if d.getVar('CONTAINEROS_BOOTLOADER') == 'u-boot' else ''}"

# Network: NetworkManager (DHCP on every wired port with no configuration;
# Wi-Fi, 802.1X and static addresses as persistent profiles that
# containeros-agent creates through its D-Bus API from the provisioning
# file), plus its Wi-Fi plugin (wpa_supplicant) on boards with Wi-Fi.
CONTAINEROS_NETWORK_PACKAGES ??= "networkmanager-daemon \
                                  ${@bb.utils.contains('MACHINE_FEATURES', 'wifi', 'networkmanager-wifi', '', d)}"

RDEPENDS:${PN} = "${CONTAINEROS_BOOTENV_PACKAGES} \
                  ${CONTAINEROS_ENGINE_PACKAGES} \
                  ${CONTAINEROS_KERNEL_PACKAGES} \
                  ${CONTAINEROS_NETWORK_PACKAGES} \
                  ca-certificates \
                  containeros-agent \
                  containeros-agent-cli \
                  containeros-base"
