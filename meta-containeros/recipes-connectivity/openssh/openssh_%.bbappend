# Inert unless the distro opts in with DISTRO_FEATURES "containeros".
require ${@bb.utils.contains('DISTRO_FEATURES', 'containeros', 'openssh-containeros.inc', '', d)}
