//! The OCI / Docker image formats a pull reads: manifests, manifest lists
//! and OCI indexes, descriptors, and the image config.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;
use crate::platform::Platform;
use crate::registry::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone)]
pub enum Parsed {
    Index(Index),
    Manifest(Manifest),
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

/// Parses a manifest body; `content_type` is the registry's header. The
/// error text names what is wrong.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, String> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest: {e}"))?;
    if probe.schema_version != Some(2) {
        return Err(format!(
            "schema version {:?} is not supported (only image manifest schema 2 and OCI): push the image again with a current tool",
            probe.schema_version
        ));
    }
    let kind = probe.media_type.as_deref().or(content_type).unwrap_or("");
    let is_index = match kind {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        // OCI allows leaving mediaType out; an index is the one with `manifests`.
        _ => probe.manifests.is_some(),
    };
    if is_index {
        serde_json::from_slice(bytes)
            .map(Parsed::Index)
            .map_err(|e| format!("bad index: {e}"))
    } else {
        serde_json::from_slice(bytes)
            .map(Parsed::Manifest)
            .map_err(|e| format!("bad image manifest: {e}"))
    }
}

/// The image config blob (only the parts the engine uses).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<Digest>,
}

/// What the image says about running it (`docker inspect`'s `Config`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(default)]
    pub test: Option<Vec<String>>,
    /// Nanoseconds.
    #[serde(default)]
    pub interval: Option<u64>,
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub start_period: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_and_manifests_are_told_apart_with_or_without_media_type() {
        let d = format!("sha256:{}", "a".repeat(64));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v5"}}}}]}}"#
        );
        let Ok(Parsed::Index(i)) = parse(index.as_bytes(), None) else {
            panic!("an index without mediaType parses as an index")
        };
        assert_eq!(
            i.manifests[0]
                .platform
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("linux/arm/v5")
        );
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            parse(manifest.as_bytes(), Some(OCI_INDEX)),
            Ok(Parsed::Manifest(_))
        ));
        let v1 = r#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(parse(v1.as_bytes(), None).is_err_and(|e| e.contains("schema version")));
    }
}
