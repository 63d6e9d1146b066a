//! OCI platforms (`os/architecture[/variant]`), the device's own, and the
//! choice of one manifest out of a manifest list or OCI index.
//!
//! Matching follows containerd's rules: an `arm` entry without a variant is
//! `v7`, an `arm64` entry without one is `v8`, and an ARM device runs older
//! variants too (a v7 board prefers `arm/v7`, then `arm/v6`, then
//! `arm/v5`), never newer ones.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    /// `linux/arm/v5`, `linux/mips`, …
    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(os), Some(arch), variant, None) if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: os.to_owned(),
                architecture: arch.to_owned(),
                variant: variant.filter(|v| !v.is_empty()).map(str::to_owned),
            }),
            _ => Err(format!(
                "platform `{text}` is not `os/architecture[/variant]` (e.g. linux/arm/v5)"
            )),
        }
    }
}

impl Platform {
    /// The platform of the machine this runs on (`uname -m`).
    pub fn host() -> Self {
        let uname = rustix::system::uname();
        from_machine(&uname.machine().to_string_lossy())
    }

    /// How well an image for `self` runs on `device`: `None` when it does
    /// not, else a rank where lower is better.
    pub fn rank_on(&self, device: &Platform) -> Option<u32> {
        if self.os != device.os || self.architecture != device.architecture {
            return None;
        }
        let norm = |p: &Platform| -> Option<u32> {
            let v = p.variant.as_deref().unwrap_or(match p.architecture.as_str() {
                "arm" => "v7",
                "arm64" => "v8",
                _ => "",
            });
            if v.is_empty() {
                return Some(0);
            }
            v.strip_prefix('v')?.parse().ok()
        };
        match (norm(self), norm(device)) {
            (Some(image), Some(dev)) if image <= dev => Some(dev - image),
            // Variants that are not `vN` (rare) match only exactly.
            _ if self.variant == device.variant => Some(0),
            _ => None,
        }
    }
}

/// The OCI platform for a kernel machine name (`uname -m`).
pub fn from_machine(machine: &str) -> Platform {
    let (arch, variant) = match machine {
        "x86_64" | "amd64" => ("amd64", None),
        "i386" | "i486" | "i586" | "i686" => ("386", None),
        "aarch64" | "arm64" => ("arm64", None),
        m if m.starts_with("armv5") => ("arm", Some("v5")),
        m if m.starts_with("armv6") => ("arm", Some("v6")),
        m if m.starts_with("armv7") || m == "armv8l" => ("arm", Some("v7")),
        "mips" => ("mips", None),
        "mipsel" | "mipsle" => ("mipsle", None),
        "mips64" => ("mips64", None),
        "mips64el" | "mips64le" => ("mips64le", None),
        "ppc64le" => ("ppc64le", None),
        "riscv64" => ("riscv64", None),
        "s390x" => ("s390x", None),
        other => (other, None),
    };
    Platform {
        os: "linux".to_owned(),
        architecture: arch.to_owned(),
        variant: variant.map(str::to_owned),
    }
}

/// Index of the best entry of `candidates` for `device`, if any runs.
pub fn choose<'a>(candidates: impl IntoIterator<Item = &'a Platform>, device: &Platform) -> Option<usize> {
    candidates
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| p.rank_on(device).map(|r| (r, i)))
        .min()
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().expect("test platform")
    }

    #[test]
    fn machines_map_to_oci_platforms() {
        assert_eq!(from_machine("x86_64"), p("linux/amd64"));
        assert_eq!(from_machine("aarch64"), p("linux/arm64"));
        assert_eq!(from_machine("armv5tejl"), p("linux/arm/v5"));
        assert_eq!(from_machine("armv6l"), p("linux/arm/v6"));
        assert_eq!(from_machine("armv7l"), p("linux/arm/v7"));
        assert_eq!(from_machine("armv8l"), p("linux/arm/v7"));
        assert_eq!(from_machine("mips"), p("linux/mips"));
        assert_eq!(from_machine("mipsel"), p("linux/mipsle"));
    }

    #[test]
    fn arm_devices_run_their_variant_or_older_preferring_the_closest() {
        let list = [
            p("linux/amd64"),
            p("linux/arm/v5"),
            p("linux/arm/v6"),
            p("linux/arm"),
            p("linux/arm64"),
        ];
        assert_eq!(choose(&list, &p("linux/arm/v5")), Some(1));
        assert_eq!(choose(&list, &p("linux/arm/v6")), Some(2));
        // `linux/arm` without a variant is v7.
        assert_eq!(choose(&list, &p("linux/arm/v7")), Some(3));
        assert_eq!(choose(&list, &p("linux/arm64")), Some(4));
        assert_eq!(choose(&list, &p("linux/arm64/v8")), Some(4));
        let only_v7 = [p("linux/arm/v7")];
        assert_eq!(choose(&only_v7, &p("linux/arm/v5")), None);
        assert_eq!(choose(&[p("linux/arm")], &p("linux/arm/v6")), None);
    }

    #[test]
    fn mips_is_matched_by_endianness_and_os_must_match() {
        let list = [p("linux/mipsle"), p("linux/mips"), p("windows/amd64")];
        assert_eq!(choose(&list, &p("linux/mips")), Some(1));
        assert_eq!(choose(&list, &p("linux/mipsle")), Some(0));
        assert_eq!(choose(&list, &p("linux/amd64")), None);
    }

    #[test]
    fn platform_strings_round_trip_and_bad_ones_are_refused() {
        assert_eq!(p("linux/arm/v5").to_string(), "linux/arm/v5");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/arm/v5/x".parse::<Platform>().is_err());
    }
}
