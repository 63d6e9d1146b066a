//! The delta tests' harness: deterministic images that look like a root
//! filesystem to a chunker and a compressor, edits that shift content, and
//! the HTTPS server (`containeros_tests::https`).

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use containeros_delta::{Expected, Retry};
use containeros_trust::Digest;

/// xorshift64: deterministic bytes, so runs are comparable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        out.extend((0..len).map(|_| self.next() as u8));
    }
}

const WORDS: &[&str] = &[
    "lib", "usr", "share", "config", "the", "error", "return", "struct", "version", "debian", "package",
    "systemd", "service", "=", "{", "}", "\n", "#", "if", "then", "fi", "0x", "static", "const",
];

/// About `len` bytes laid out like a filesystem image: "files" of 1–256 KiB
/// of incompressible bytes (compressed data, code), text-like bytes and
/// zero runs, each padded to 4 KiB blocks.
pub fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + (256 << 10));
    while out.len() < len {
        let size = 1024 + rng.below(255 << 10) as usize;
        match rng.below(10) {
            0..=3 => rng.fill(&mut out, size),
            4..=8 => {
                let start = out.len();
                while out.len() - start < size {
                    let w = WORDS[rng.below(WORDS.len() as u64) as usize];
                    out.extend_from_slice(w.as_bytes());
                    out.push(b' ');
                }
            }
            _ => out.resize(out.len() + size, 0),
        }
        out.resize(out.len().next_multiple_of(4096), 0);
    }
    out.truncate(len);
    out
}

/// v2 of `v1`: bytes inserted, deleted and overwritten at four places, so
/// everything after the first edit moves.
pub fn edit(v1: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v2 = v1.to_vec();
    let at = |f: f64| (v1.len() as f64 * f) as usize;
    let mut noise = |n: usize| {
        let mut v = Vec::new();
        rng.fill(&mut v, n);
        v
    };
    let insert_late = noise(30_000);
    let overwrite = noise(2_000);
    let insert_early = noise(5_000);
    // From the end backwards, so the positions stay those of v1.
    v2.splice(at(0.8)..at(0.8), insert_late);
    v2.splice(at(0.6)..at(0.6) + 2_000, overwrite);
    v2.drain(at(0.4)..at(0.4) + 7_000);
    v2.splice(at(0.15)..at(0.15), insert_early);
    v2
}

pub fn expected(image: &[u8]) -> Expected {
    Expected {
        size: image.len() as u64,
        sha256: Digest::of(image),
    }
}

pub fn fast_retry() -> Retry {
    Retry {
        attempts_without_progress: 3,
        backoff: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

/// A file standing in for a slot: `size` bytes of `fill`.
pub fn slot_file(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write slot");
    path
}

/// (header size, [(checksum, stored size)]) of an archive file.
pub async fn archive_chunks(path: &Path) -> (u64, Vec<(Vec<u8>, u64)>) {
    let file = tokio::fs::File::open(path).await.expect("open archive");
    let archive = bitar::Archive::try_init(bitar::archive_reader::IoReader::new(file))
        .await
        .expect("read archive");
    let chunks = archive
        .chunk_descriptors()
        .iter()
        .map(|d| (d.checksum.to_vec(), d.archive_size as u64))
        .collect();
    (archive.header_size() as u64, chunks)
}

/// The bytes a device holding `have` must download of archive `want`: its
/// header and every stored chunk `have` lacks.
pub async fn ideal_delta(want: &Path, have: &Path) -> u64 {
    let (header, want) = archive_chunks(want).await;
    let (_, have) = archive_chunks(have).await;
    let have: std::collections::HashSet<Vec<u8>> = have.into_iter().map(|(h, _)| h).collect();
    header
        + want
            .iter()
            .filter(|(h, _)| !have.contains(h))
            .map(|(_, s)| s)
            .sum::<u64>()
}
