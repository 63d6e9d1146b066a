//! Delta updates end to end: archives built by `build_archive`, cloned by
//! `clone_into` over HTTPS (a TLS server on loopback, certificates from
//! rcgen, through the agent's own client) or from a file, into files
//! standing in for slots.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containeros_delta::{
    ArchiveOptions, CloneReport, DeltaError, Expected, Phase, Progress, Seed, Source, build_archive,
    clone_into,
};
use containeros_tests::https::{Faults, Server, serve};
use containeros_trust::Digest;
use containeros_update::http::{Timeouts, client};
use support::{edit, expected, fast_retry, ideal_delta, image, slot_file};

const MIB: usize = 1 << 20;

/// Fast enough for debug builds; the benchmark measures level 11.
fn options() -> ArchiveOptions {
    ArchiveOptions {
        brotli_level: 3,
        ..ArchiveOptions::default()
    }
}

/// v1, v2 and their archives in a temporary directory.
struct Release {
    dir: tempfile::TempDir,
    v1: Vec<u8>,
    v2: Vec<u8>,
    v1_image: PathBuf,
    v1_archive: PathBuf,
    v2_archive: PathBuf,
}

async fn release(size: usize, seed: u64) -> Release {
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = image(size, seed);
    let v2 = edit(&v1, seed + 1000);
    let v1_image = slot_file(dir.path(), "v1.img", &v1);
    let v2_image = slot_file(dir.path(), "v2.img", &v2);
    let (v1_archive, v2_archive) = (dir.path().join("v1.cba"), dir.path().join("v2.cba"));
    let info1 = build_archive(&v1_image, &v1_archive, &options())
        .await
        .expect("archive v1");
    let info2 = build_archive(&v2_image, &v2_archive, &options())
        .await
        .expect("archive v2");
    assert_eq!(
        (info1.image_size, info1.image_sha256),
        (v1.len() as u64, Digest::of(&v1))
    );
    assert_eq!(
        (info2.image_size, info2.image_sha256),
        (v2.len() as u64, Digest::of(&v2))
    );
    assert_eq!(
        info2.archive_size,
        std::fs::metadata(&v2_archive).expect("stat").len()
    );
    Release {
        dir,
        v1,
        v2,
        v1_image,
        v1_archive,
        v2_archive,
    }
}

/// A slot of `size` bytes holding junk that matches nothing.
fn junk_slot(dir: &Path, name: &str, size: usize) -> PathBuf {
    let mut junk = Vec::new();
    support::Rng::new(4242).fill(&mut junk, size);
    slot_file(dir, name, &junk)
}

async fn clone_https(
    server: &Server,
    seeds: &[Seed<'_>],
    target: &Path,
    expected: &Expected,
) -> Result<CloneReport, DeltaError> {
    let client = client(Some(server.ca_pem.path()), true, Timeouts::default()).expect("client");
    let mut last = Progress {
        phase: Phase::ScanTarget,
        done: 0,
        total: 0,
    };
    let mut progress = |p: Progress| {
        assert!(p.done <= p.total, "{p:?}");
        if p.phase == last.phase {
            assert!(p.done >= last.done, "progress goes forward: {last:?} then {p:?}");
        }
        last = p;
    };
    clone_into(
        Source::Url {
            client: &client,
            url: &server.url,
        },
        seeds,
        target,
        expected,
        &fast_retry(),
        &mut progress,
    )
    .await
}

fn slot_holds(slot: &Path, image: &[u8]) -> bool {
    let data = std::fs::read(slot).expect("read slot");
    &data[..image.len()] == image
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_over_https_fetches_only_the_changed_chunks() {
    let r = release(8 * MIB, 1).await;
    let server = serve(
        Arc::new(std::fs::read(&r.v2_archive).expect("archive")),
        Faults::default(),
    )
    .await;
    let target = junk_slot(r.dir.path(), "slot-b", 9 * MIB);
    let before = std::fs::read(&target).expect("slot");

    let report = clone_https(&server, &[Seed::new(&r.v1_image)], &target, &expected(&r.v2))
        .await
        .expect("clone");

    let ideal = ideal_delta(&r.v2_archive, &r.v1_archive).await;
    let archive_size = std::fs::metadata(&r.v2_archive).expect("stat").len();
    println!("{report:?}; ideal {ideal}, whole archive {archive_size}");
    assert!(slot_holds(&target, &r.v2), "the slot holds v2");
    let after = std::fs::read(&target).expect("slot");
    assert!(
        after[r.v2.len()..] == before[r.v2.len()..],
        "nothing written past the image"
    );
    // Exactly the header and the chunks v1 lacks, each once.
    assert_eq!(report.fetched_bytes, ideal);
    assert_eq!(server.stats().body_bytes, ideal);
    assert!(
        ideal < archive_size / 10,
        "four edits cost a few chunks, not the archive"
    );
    assert_eq!(
        report.reused_bytes + report.written_from_source,
        r.v2.len() as u64
    );
    assert_eq!(report.reused_from_target, 0);
    assert_eq!(report.resumes, 0);
    assert!(
        report.fetched_chunks > 0 && report.fetched_chunks < 30,
        "{report:?}"
    );
    assert!(report.reused_chunks > 10 * report.fetched_chunks, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn full_clone_from_a_local_archive_without_seeds() {
    let r = release(4 * MIB, 2).await;
    let target = junk_slot(r.dir.path(), "slot-b", 4 * MIB + 4096);
    let mut progress = |_: Progress| {};
    let report = clone_into(
        Source::File(&r.v1_archive),
        &[],
        &target,
        &expected(&r.v1),
        &fast_retry(),
        &mut progress,
    )
    .await
    .expect("clone");
    assert!(slot_holds(&target, &r.v1));
    let archive_size = std::fs::metadata(&r.v1_archive).expect("stat").len();
    assert_eq!(report.fetched_bytes, archive_size, "header and every chunk, once");
    assert_eq!(report.reused_chunks, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_that_already_holds_the_image_fetches_no_chunk() {
    let r = release(4 * MIB, 3).await;
    let server = serve(
        Arc::new(std::fs::read(&r.v2_archive).expect("archive")),
        Faults::default(),
    )
    .await;
    let mut slot = r.v2.clone();
    slot.resize(5 * MIB, 0);
    let target = slot_file(r.dir.path(), "slot-b", &slot);
    let report = clone_https(&server, &[], &target, &expected(&r.v2))
        .await
        .expect("clone");
    let (header, _) = support::archive_chunks(&r.v2_archive).await;
    assert_eq!(report.fetched_bytes, header, "only the header");
    assert_eq!(report.fetched_chunks, 0);
    assert_eq!(report.reused_from_target, r.v2.len() as u64);
    assert!(slot_holds(&target, &r.v2));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_previous_image_in_the_slot_is_reused_in_place() {
    // A/B alternation: the inactive slot holds v1 itself (the image before
    // the running one); no other seed.
    let r = release(4 * MIB, 4).await;
    let server = serve(
        Arc::new(std::fs::read(&r.v2_archive).expect("archive")),
        Faults::default(),
    )
    .await;
    let mut slot = r.v1.clone();
    slot.resize(5 * MIB, 0xA5);
    let target = slot_file(r.dir.path(), "slot-b", &slot);
    let report = clone_https(&server, &[], &target, &expected(&r.v2))
        .await
        .expect("clone");
    assert!(slot_holds(&target, &r.v2));
    // v1's last chunk ended where v1 did; in the slot, junk follows it and
    // the chunker cuts elsewhere: that one chunk is fetched too.
    let ideal = ideal_delta(&r.v2_archive, &r.v1_archive).await;
    assert!(
        (ideal..ideal + (256 << 10)).contains(&report.fetched_bytes),
        "fetched {} for a delta of {ideal}",
        report.fetched_bytes
    );
    assert!(
        report.reused_from_target > (r.v2.len() as u64) * 9 / 10,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_connections_resume_without_fetching_twice() {
    let r = release(8 * MIB, 5).await;
    let ideal = ideal_delta(&r.v2_archive, &r.v1_archive).await;
    // Cut five times, spread over the delta (the first inside the header).
    let cuts = vec![100, ideal / 5, ideal * 2 / 5, ideal * 3 / 5 + 7, ideal * 4 / 5];
    let server = serve(
        Arc::new(std::fs::read(&r.v2_archive).expect("archive")),
        Faults {
            cuts: cuts.clone(),
            ..Faults::default()
        },
    )
    .await;
    let target = junk_slot(r.dir.path(), "slot-b", 9 * MIB);
    let report = clone_https(&server, &[Seed::new(&r.v1_image)], &target, &expected(&r.v2))
        .await
        .expect("clone");
    let stats = server.stats();
    println!("{report:?}; ideal {ideal}; server sent {}", stats.body_bytes);
    assert_eq!(stats.cuts, cuts.len());
    assert_eq!(report.resumes as usize, cuts.len());
    assert!(slot_holds(&target, &r.v2));
    // Every resume asked for the first byte not yet received.
    assert_eq!(report.fetched_bytes, ideal, "nothing fetched twice");
    assert!(
        stats
            .requests
            .iter()
            .skip(1)
            .all(|r| r.to_lowercase().contains("if-range: \"archive-1\"")),
        "every request after the first is pinned to the archive's ETag"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_clone_is_finished_by_the_next_attempt_from_the_slot() {
    let r = release(8 * MIB, 6).await;
    let ideal = ideal_delta(&r.v2_archive, &r.v1_archive).await;
    let archive = Arc::new(std::fs::read(&r.v2_archive).expect("archive"));
    let target = junk_slot(r.dir.path(), "slot-b", 9 * MIB);
    let seeds = [Seed::with_len(&r.v1_image, r.v1.len() as u64)];

    // The server dies (cut, then 503s) after 60% of the delta.
    let dying = serve(
        archive.clone(),
        Faults {
            dead_after: Some(ideal * 3 / 5),
            ..Faults::default()
        },
    )
    .await;
    let err = clone_https(&dying, &seeds, &target, &expected(&r.v2))
        .await
        .expect_err("the server died");
    let message = err.to_string();
    assert!(matches!(err, DeltaError::GaveUp { .. }), "{message}");
    assert!(
        message.contains(&dying.url) && message.contains("retry"),
        "{message}"
    );

    // The next attempt finds what the first one wrote in the slot.
    let healthy = serve(archive, Faults::default()).await;
    let report = clone_https(&healthy, &seeds, &target, &expected(&r.v2))
        .await
        .expect("clone");
    assert!(slot_holds(&target, &r.v2));
    let first = dying.stats().body_bytes;
    let (header, _) = support::archive_chunks(&r.v2_archive).await;
    println!("first attempt {first}, second {report:?}, ideal {ideal}");
    assert!(report.reused_from_target > 0, "{report:?}");
    // Both attempts together: one delta, a second header, and at most the
    // chunk in flight when the server died.
    assert!(
        first + report.fetched_bytes <= ideal + header + (256 << 10),
        "fetched {} + {} for a delta of {ideal}",
        first,
        report.fetched_bytes
    );
    assert!(
        report.fetched_bytes < ideal,
        "less than a whole delta: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_expected_hash_is_refused_before_anything_is_written() {
    let r = release(2 * MIB, 7).await;
    let server = serve(
        Arc::new(std::fs::read(&r.v2_archive).expect("archive")),
        Faults::default(),
    )
    .await;
    let target = junk_slot(r.dir.path(), "slot-b", 3 * MIB);
    let before = std::fs::read(&target).expect("slot");
    let wrong = Expected {
        size: r.v2.len() as u64,
        sha256: Digest::of(b"another image"),
    };
    let err = clone_https(&server, &[Seed::new(&r.v1_image)], &target, &wrong)
        .await
        .expect_err("refused");
    assert!(matches!(err, DeltaError::ArchiveMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&server.url), "{err}");
    assert!(std::fs::read(&target).expect("slot") == before, "slot untouched");
    assert!(
        server.stats().body_bytes < 64 << 10,
        "only the header was fetched"
    );

    let wrong_size = Expected {
        size: r.v2.len() as u64 + 1,
        ..expected(&r.v2)
    };
    let err = clone_https(&server, &[], &target, &wrong_size)
        .await
        .expect_err("refused");
    assert!(matches!(err, DeltaError::ArchiveMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_is_checked_against_the_manifest_not_the_archive() {
    // An archive that does not record its image's SHA-256 (bita's own, say)
    // and a manifest whose digest is wrong: cloned, then refused by the
    // read-back check.
    let r = release(2 * MIB, 8).await;
    let bare = r.dir.path().join("bare.cba");
    strip_metadata(&r.v2_archive, &bare);
    let target = junk_slot(r.dir.path(), "slot-b", 3 * MIB);
    let wrong = Expected {
        size: r.v2.len() as u64,
        sha256: Digest::of(b"another image"),
    };
    let mut progress = |_: Progress| {};
    let err = clone_into(
        Source::File(&bare),
        &[Seed::new(&r.v1_image)],
        &target,
        &wrong,
        &fast_retry(),
        &mut progress,
    )
    .await
    .expect_err("refused");
    match &err {
        DeltaError::Digest { path, actual, .. } => {
            assert_eq!(path, &target);
            assert_eq!(*actual, Digest::of(&r.v2));
        }
        other => panic!("expected a digest error, got {other}"),
    }
    assert!(err.to_string().contains(&target.display().to_string()));
}

/// Rewrites an archive's header without its metadata.
fn strip_metadata(from: &Path, to: &Path) {
    use prost::Message as _;
    let data = std::fs::read(from).expect("archive");
    let len = u64::from_le_bytes(data[6..14].try_into().expect("8 bytes")) as usize;
    let mut dictionary =
        bitar::chunk_dictionary::ChunkDictionary::decode(&data[14..14 + len]).expect("dictionary");
    let old_header = 14 + len + 8 + 64;
    dictionary.metadata.clear();
    let header = bitar::header::build(&dictionary, None).expect("header");
    let mut out = header;
    out.extend_from_slice(&data[old_header..]);
    std::fs::write(to, out).expect("write");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_smaller_than_the_image_is_refused_before_writing() {
    let r = release(2 * MIB, 9).await;
    let server = serve(
        Arc::new(std::fs::read(&r.v2_archive).expect("archive")),
        Faults::default(),
    )
    .await;
    let target = slot_file(r.dir.path(), "slot-b", &vec![0xAA; r.v2.len() - 1]);
    let err = clone_https(&server, &[Seed::new(&r.v1_image)], &target, &expected(&r.v2))
        .await
        .expect_err("refused");
    match &err {
        DeltaError::TargetTooSmall { path, slot, image } => {
            assert_eq!(
                (path, *slot, *image),
                (&target, r.v2.len() as u64 - 1, r.v2.len() as u64)
            );
        }
        other => panic!("expected TargetTooSmall, got {other}"),
    }
    assert!(err.to_string().contains("repartition"), "{err}");
    assert!(
        std::fs::read(&target).expect("slot") == vec![0xAA; r.v2.len() - 1],
        "slot untouched"
    );
    assert_eq!(
        std::fs::metadata(&target).expect("stat").len(),
        r.v2.len() as u64 - 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_slot_is_not_created() {
    let r = release(MIB, 10).await;
    let target = r.dir.path().join("no-such-slot");
    let mut progress = |_: Progress| {};
    let err = clone_into(
        Source::File(&r.v1_archive),
        &[],
        &target,
        &expected(&r.v1),
        &fast_retry(),
        &mut progress,
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, DeltaError::OpenTarget { .. }), "{err}");
    assert!(!target.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_seed_is_skipped_and_its_chunks_fetched() {
    let r = release(2 * MIB, 11).await;
    let target = junk_slot(r.dir.path(), "slot-b", 3 * MIB);
    let missing = r.dir.path().join("no-such-seed");
    let mut progress = |_: Progress| {};
    let report = clone_into(
        Source::File(&r.v2_archive),
        &[Seed::new(&missing), Seed::new(&r.v1_image)],
        &target,
        &expected(&r.v2),
        &fast_retry(),
        &mut progress,
    )
    .await
    .expect("clone");
    assert_eq!(report.seeds_skipped, 1);
    assert!(report.reused_chunks > 0);
    assert!(slot_holds(&target, &r.v2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_chunk_is_refused() {
    let r = release(2 * MIB, 12).await;
    let mut data = std::fs::read(&r.v1_archive).expect("archive");
    let (header, _) = support::archive_chunks(&r.v1_archive).await;
    let at = header as usize + 100;
    data[at] ^= 0x55;
    let corrupt = r.dir.path().join("corrupt.cba");
    std::fs::write(&corrupt, data).expect("write");
    let target = junk_slot(r.dir.path(), "slot-b", 3 * MIB);
    let mut progress = |_: Progress| {};
    let err = clone_into(
        Source::File(&corrupt),
        &[],
        &target,
        &expected(&r.v1),
        &fast_retry(),
        &mut progress,
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, DeltaError::CorruptChunk { .. }), "{err}");
    assert!(err.to_string().contains("corrupt.cba"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_ranges_is_refused_by_name() {
    let r = release(MIB, 13).await;
    let server = serve(
        Arc::new(std::fs::read(&r.v1_archive).expect("archive")),
        Faults {
            ignore_range: true,
            ..Faults::default()
        },
    )
    .await;
    let target = junk_slot(r.dir.path(), "slot-b", 2 * MIB);
    let err = clone_https(&server, &[], &target, &expected(&r.v1))
        .await
        .expect_err("refused");
    assert!(matches!(err, DeltaError::RangeIgnored { .. }), "{err}");
    assert!(err.to_string().contains(&server.url), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn not_an_archive_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = slot_file(dir.path(), "rootfs.ext4", &image(MIB, 14));
    let target = junk_slot(dir.path(), "slot-b", 2 * MIB);
    let mut progress = |_: Progress| {};
    let err = clone_into(
        Source::File(&bogus),
        &[],
        &target,
        &expected(&image(MIB, 14)),
        &fast_retry(),
        &mut progress,
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, DeltaError::InvalidArchive { .. }), "{err}");
    assert!(err.to_string().contains("rootfs.ext4"), "{err}");
}
