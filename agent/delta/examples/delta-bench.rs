//! Driver for `bench/delta/run.sh`: archive sizes and the bytes a delta
//! update downloads.
//!
//! ```text
//! delta-bench archive IMAGE ARCHIVE [min=B avg=B max=B window=B level=N hash=B algo=rollsum|buzhash]
//!     builds an archive; prints "archive_bytes header_bytes chunks unique_chunks seconds"
//! delta-bench ideal WANT.cba HAVE.cba [--list]
//!     what a device holding HAVE's image downloads of WANT (header + the chunks
//!     HAVE lacks), from the two headers alone; prints "bytes chunks", and with
//!     --list first "image_offset size stored_size" of each chunk fetched
//! delta-bench serve ARCHIVE DIR
//!     HTTPS on 127.0.0.1 (rcgen CA); writes DIR/ca.pem and DIR/url, serves until killed
//! delta-bench clone URL CA SEED TARGET SIZE SHA256
//!     clone_into with SEED as the running slot into TARGET (a file of at least SIZE
//!     bytes); prints "fetched_bytes reused_bytes fetched_chunks reused_chunks seconds peak_rss_kib"
//! delta-bench patch OLD NEW PATCH
//!     make_patch (xdelta3 -S none, then Brotli) as the publisher does;
//!     prints "patch_bytes vcdiff_bytes seconds"
//! delta-bench apply-patch PATCH SEED TARGET SIZE SHA256
//!     apply_patch with SEED as the running slot into TARGET; prints "seconds peak_rss_kib"
//! ```
//!
//! The server is its own process so that the clone's peak RSS is its own.

use containeros_tests::https as server;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use containeros_delta::{
    ArchiveOptions, Chunking, Expected, Progress, Retry, RollingHash, Seed, Source, build_archive, clone_into,
};
use containeros_trust::Digest;
use containeros_update::http::{Timeouts, client};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn usage() -> ! {
    eprintln!(
        "usage: delta-bench archive IMAGE ARCHIVE [min=B avg=B max=B window=B level=N hash=B algo=rollsum|buzhash]\n       \
         delta-bench ideal WANT.cba HAVE.cba\n       \
         delta-bench serve ARCHIVE DIR\n       \
         delta-bench clone URL CA SEED TARGET SIZE SHA256\n       \
         delta-bench patch OLD NEW PATCH\n       \
         delta-bench apply-patch PATCH SEED TARGET SIZE SHA256"
    );
    std::process::exit(2);
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["archive", image, archive, rest @ ..] => multi()?.block_on(archive_cmd(image, archive, rest)),
        ["ideal", want, have] => current()?.block_on(ideal(want, have, false)),
        ["ideal", want, have, "--list"] => current()?.block_on(ideal(want, have, true)),
        ["serve", archive, dir] => multi()?.block_on(serve(archive, dir)),
        // The device runs the agent on a current-thread runtime.
        ["clone", url, ca, seed, target, size, sha256] => {
            current()?.block_on(clone(url, ca, seed, target, size, sha256))
        }
        ["patch", old, new, patch] => {
            let t0 = Instant::now();
            let old_size = std::fs::metadata(old)?.len();
            let made =
                containeros_delta::make_patch(Path::new(old), old_size, Path::new(new), Path::new(patch))?;
            println!(
                "{} {} {:.1}",
                made.size,
                made.vcdiff_size,
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        ["apply-patch", patch, seed, target, size, sha256] => {
            current()?.block_on(apply_patch_cmd(patch, seed, target, size, sha256))
        }
        _ => usage(),
    }
}

async fn apply_patch_cmd(patch: &str, seed: &str, target: &str, size: &str, sha256: &str) -> Result<()> {
    let expected = Expected {
        size: size.parse()?,
        sha256: sha256.parse::<Digest>()?,
    };
    let t0 = Instant::now();
    containeros_delta::apply_patch(
        Path::new(patch),
        Path::new(seed),
        Path::new(target),
        &expected,
        &mut |_| {},
    )
    .await?;
    println!("{:.1} {}", t0.elapsed().as_secs_f64(), peak_rss()?);
    Ok(())
}

fn peak_rss() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").to_owned())
        })
        .unwrap_or_default())
}

fn multi() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn current() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

async fn archive_cmd(image: &str, archive: &str, rest: &[&str]) -> Result<()> {
    let mut options = ArchiveOptions::default();
    let mut chunking = Chunking::default();
    for arg in rest {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("{arg}: expected KEY=VALUE"))?;
        match key {
            "min" => chunking.min = value.parse()?,
            "avg" => chunking.avg = value.parse()?,
            "max" => chunking.max = value.parse()?,
            "window" => chunking.window = value.parse()?,
            "algo" => {
                chunking.algorithm = match value {
                    "rollsum" => RollingHash::RollSum,
                    "buzhash" => RollingHash::BuzHash,
                    _ => return Err(format!("unknown algo {value}").into()),
                }
            }
            "level" => options.brotli_level = value.parse()?,
            "hash" => options.hash_length = value.parse()?,
            _ => return Err(format!("unknown option {key}").into()),
        }
    }
    options.chunking = chunking;
    let t0 = Instant::now();
    let info = build_archive(Path::new(image), Path::new(archive), &options).await?;
    println!(
        "{} {} {} {} {:.1}",
        info.archive_size,
        info.header_size,
        info.chunks,
        info.unique_chunks,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// (header size, [(checksum, first image offset, size, stored size)]) of
/// an archive's distinct chunks.
type Chunks = Vec<(Vec<u8>, u64, u32, u64)>;

async fn descriptors(path: &str) -> Result<(u64, Chunks)> {
    let file = tokio::fs::File::open(path).await?;
    let archive = bitar::Archive::try_init(bitar::archive_reader::IoReader::new(file))
        .await
        .map_err(|e| format!("{path}: {e:?}"))?;
    let mut seen = std::collections::HashSet::new();
    let chunks = archive
        .iter_source_chunks()
        .filter(|(_, d)| seen.insert(d.checksum.to_vec()))
        .map(|(offset, d)| (d.checksum.to_vec(), offset, d.source_size, d.archive_size as u64))
        .collect();
    Ok((archive.header_size() as u64, chunks))
}

async fn ideal(want: &str, have: &str, list: bool) -> Result<()> {
    let (header, want) = descriptors(want).await?;
    let (_, have) = descriptors(have).await?;
    let have: std::collections::HashSet<Vec<u8>> = have.into_iter().map(|(h, ..)| h).collect();
    let missing: Vec<_> = want.iter().filter(|(h, ..)| !have.contains(h)).collect();
    if list {
        for (_, offset, size, stored) in &missing {
            println!("{offset} {size} {stored}");
        }
    }
    println!(
        "{} {}",
        header + missing.iter().map(|(.., stored)| stored).sum::<u64>(),
        missing.len()
    );
    Ok(())
}

async fn serve(archive: &str, dir: &str) -> Result<()> {
    let content = Arc::new(std::fs::read(archive)?);
    let server = server::serve(content, server::Faults::default()).await;
    let dir = Path::new(dir);
    std::fs::copy(server.ca_pem.path(), dir.join("ca.pem"))?;
    // Written last: its presence says the server is up.
    std::fs::write(dir.join("url.tmp"), &server.url)?;
    std::fs::rename(dir.join("url.tmp"), dir.join("url"))?;
    std::future::pending::<()>().await;
    Ok(())
}

async fn clone(url: &str, ca: &str, seed: &str, target: &str, size: &str, sha256: &str) -> Result<()> {
    let client = client(Some(Path::new(ca)), true, Timeouts::default())?;
    let expected = Expected {
        size: size.parse()?,
        sha256: sha256.parse::<Digest>()?,
    };
    let mut progress = |_: Progress| {};
    let t0 = Instant::now();
    let report = clone_into(
        Source::Url { client: &client, url },
        &[Seed::new(Path::new(seed))],
        Path::new(target),
        &expected,
        &Retry::default(),
        &mut progress,
    )
    .await?;
    let seconds = t0.elapsed().as_secs_f64();
    let hwm = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").to_owned())
        })
        .unwrap_or_default();
    println!(
        "{} {} {} {} {seconds:.1} {hwm}",
        report.fetched_bytes, report.reused_bytes, report.fetched_chunks, report.reused_chunks
    );
    Ok(())
}
