//! Facts about the running device read at start: the OS version and the
//! slot the bootloader booted.

use std::path::Path;

/// `VERSION_ID` from an os-release file (quotes removed), or `None`.
pub fn os_version(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("VERSION_ID=")?;
        Some(value.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
    })
}

/// The booted slot from the kernel command line: `containeros.slot=A`
/// (written by the layer's boot scripts), or RAUC's `rauc.slot=A`.
pub fn booted_slot(cmdline: &str) -> Option<String> {
    cmdline.split_ascii_whitespace().find_map(|arg| {
        let value = arg
            .strip_prefix("containeros.slot=")
            .or_else(|| arg.strip_prefix("rauc.slot="))?;
        (!value.is_empty()).then(|| value.to_owned())
    })
}

pub fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_id() {
        let text = "NAME=\"ContainerOS\"\nVERSION=\"1.4 (wrynose)\"\nVERSION_ID=\"1.4.0\"\n";
        assert_eq!(os_version(text).as_deref(), Some("1.4.0"));
        assert_eq!(os_version("VERSION_ID=12\n").as_deref(), Some("12"));
        assert_eq!(os_version("NAME=x\n"), None);
    }

    #[test]
    fn reads_slot_from_cmdline() {
        assert_eq!(
            booted_slot("console=ttyS0 root=/dev/vda2 containeros.slot=B ro").as_deref(),
            Some("B")
        );
        assert_eq!(booted_slot("rauc.slot=A quiet").as_deref(), Some("A"));
        assert_eq!(booted_slot("root=/dev/sda2 containeros.slot= ro"), None);
        assert_eq!(booted_slot(""), None);
    }
}
