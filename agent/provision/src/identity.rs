//! The device's identity: a random UUID (version 4) made on first boot and
//! kept in the state directory on `/data`. It survives reboots and OS
//! updates (unlike anything in the read-only root) and is the device's name
//! for staged rollouts and fleet tools. Re-flashing the data partition gives
//! a new device.

use std::path::Path;

use ring::rand::SecureRandom as _;

use crate::ProvisionError;

/// The identity file in the state directory.
pub const FILE: &str = "device-id";

/// The device's UUID: read from `state_dir`, or made and stored on the
/// first call.
pub fn device_id(state_dir: &Path) -> Result<String, ProvisionError> {
    let path = state_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if is_uuid(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(_) => {
            // Written atomically, so this is damage from outside: keep the
            // evidence, and give the device a new identity rather than none.
            let aside = state_dir.join(format!("{FILE}.invalid"));
            tracing::error!(
                "{} does not hold a UUID; moved to {} and a new device id is made",
                path.display(),
                aside.display()
            );
            let _ = std::fs::rename(&path, &aside);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ProvisionError::Store { path, source }),
    }
    let id = new_uuid().map_err(|source| ProvisionError::Store {
        path: path.clone(),
        source,
    })?;
    std::fs::create_dir_all(state_dir)
        .and_then(|()| crate::import::write_atomic(&path, format!("{id}\n").as_bytes(), 0o644))
        .map_err(|source| ProvisionError::Store { path, source })?;
    tracing::info!(device_id = %id, "first boot: device id made");
    Ok(id)
}

fn new_uuid() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| std::io::Error::other("no random numbers from the kernel"))?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let id = device_id(&state).expect("made");
        assert!(is_uuid(&id), "{id}");
        assert_eq!(&id[14..15], "4");
        assert_eq!(device_id(&state).expect("read"), id);
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(device_id(other.path()).expect("made"), id);
    }

    #[test]
    fn a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), "garbage").expect("write");
        let id = device_id(dir.path()).expect("made");
        assert!(is_uuid(&id));
        assert!(dir.path().join("device-id.invalid").exists());
    }
}
