//! The installer against a real TLS server on loopback (certificates from
//! rcgen) and a loop device as the slot. Needs root (losetup).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containeros_trust::Digest;
use containeros_update::http::{Timeouts, client};
use containeros_update::{Expected, InstallError, Retry, Source, install};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MIB: usize = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift), so images do not compress
/// and runs are comparable.
fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A loop device over a zeroed file, detached on drop.
struct LoopDev {
    dev: PathBuf,
    _file: tempfile::NamedTempFile,
}

impl LoopDev {
    fn new(size: u64) -> Self {
        assert!(nix_is_root(), "these tests need root for losetup");
        let file = tempfile::NamedTempFile::new().expect("backing file");
        file.as_file().set_len(size).expect("size");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Self { dev, _file: file }
    }

    fn read(&self, len: usize) -> Vec<u8> {
        let mut data = std::fs::read(self._file.path()).expect("read backing file");
        data.truncate(len);
        data
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// How the test server behaves.
#[derive(Default)]
struct Behaviour {
    /// For the n-th response, close the connection once the file's byte at
    /// this offset is reached (an absolute offset, so a resumed request that
    /// already starts there gets no body at all).
    cut_after: Vec<Option<u64>>,
    /// ETag per response number (the last one repeats).
    etags: Vec<String>,
    /// Ignore Range headers (always 200).
    ignore_range: bool,
    /// Answer with this status and no body.
    status: Option<u16>,
}

struct Server {
    url: String,
    ca_pem: tempfile::NamedTempFile,
    body_bytes_sent: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn serve(content: Vec<u8>, behaviour: Behaviour) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_cert = params.signed_by(&server_key, &issuer).expect("server cert");

    let ca_pem = tempfile::NamedTempFile::new().expect("ca file");
    std::fs::write(ca_pem.path(), ca_cert.pem()).expect("write ca");

    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sent = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let content = Arc::new(content);
    let behaviour = Arc::new(behaviour);
    let count = Arc::new(AtomicUsize::new(0));
    {
        let (sent, requests) = (sent.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, content, behaviour) = (acceptor.clone(), content.clone(), behaviour.clone());
                let (sent, requests, count) = (sent.clone(), requests.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    requests.lock().expect("lock").push(head.clone());
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                    };
                    if let Some(code) = behaviour.status {
                        let _ = tls
                            .write_all(format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n").as_bytes())
                            .await;
                        return;
                    }
                    let etag = behaviour
                        .etags
                        .get(n)
                        .or(behaviour.etags.last())
                        .cloned()
                        .unwrap_or_else(|| "\"v1\"".into());
                    let start = header("range")
                        .filter(|_| !behaviour.ignore_range)
                        .filter(|_| header("if-range").is_none_or(|v| v == etag))
                        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok());
                    let (status, from) = match start {
                        Some(s) => ("206 Partial Content", s),
                        None => ("200 OK", 0),
                    };
                    let mut response = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\netag: {etag}\r\naccept-ranges: bytes\r\nconnection: close\r\n",
                        content.len() - from
                    );
                    if start.is_some() {
                        response += &format!(
                            "content-range: bytes {from}-{}/{}\r\n",
                            content.len() - 1,
                            content.len()
                        );
                    }
                    response += "\r\n";
                    if tls.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                    let cut = behaviour.cut_after.get(n).copied().flatten();
                    let end = cut.map_or(content.len(), |c| (c as usize).clamp(from, content.len()));
                    for chunk in content[from..end].chunks(64 * 1024) {
                        if tls.write_all(chunk).await.is_err() {
                            return;
                        }
                        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                    let _ = tls.flush().await;
                    if cut.is_some() {
                        // An abrupt end: no close_notify, just the socket gone.
                        let (tcp, _) = tls.into_inner();
                        drop(tcp);
                    } else {
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
    }
    Server {
        url: format!("https://localhost:{port}/os/rootfs.ext4"),
        ca_pem,
        body_bytes_sent: sent,
        requests,
    }
}

fn expected(content: &[u8]) -> Expected {
    Expected {
        size: content.len() as u64,
        sha256: Digest::of(content),
    }
}

fn fast_retry() -> Retry {
    Retry {
        attempts_without_progress: 3,
        backoff: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
    }
}

async fn run(
    server: &Server,
    slot: &Path,
    expected: &Expected,
) -> Result<containeros_update::Report, InstallError> {
    let client = client(Some(server.ca_pem.path()), true, Timeouts::default()).expect("client");
    let mut last = 0;
    let mut progress = |written: u64, _total: u64| {
        assert!(
            written >= last || written == 0,
            "progress goes forward except on restart"
        );
        last = written;
    };
    install(
        Source::Url {
            client: &client,
            url: &server.url,
        },
        slot,
        expected,
        &fast_retry(),
        &mut progress,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn full_install_over_https_into_a_loop_device() {
    let content = image(8 * MIB, 1);
    let slot = LoopDev::new(16 * MIB as u64);
    let server = serve(content.clone(), Behaviour::default()).await;
    let report = run(&server, &slot.dev, &expected(&content))
        .await
        .expect("install");
    assert_eq!(
        (report.written, report.fetched, report.resumes),
        (content.len() as u64, content.len() as u64, 0)
    );
    assert!(slot.read(content.len()) == content, "slot holds the image");
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_connections_resume_where_they_stopped() {
    let content = image(8 * MIB, 2);
    let slot = LoopDev::new(8 * MIB as u64);
    let cuts = vec![Some(1_000_000), Some(4_000_000), Some(4_123_457), None];
    let server = serve(
        content.clone(),
        Behaviour {
            cut_after: cuts,
            ..Behaviour::default()
        },
    )
    .await;
    let report = run(&server, &slot.dev, &expected(&content))
        .await
        .expect("install");
    let sent = server.body_bytes_sent.load(Ordering::SeqCst);
    println!(
        "resumes {}, body bytes sent {sent}, image {}",
        report.resumes,
        content.len()
    );
    assert_eq!(report.resumes, 3);
    // Nothing was sent twice: every resume started at the first missing byte.
    assert_eq!(
        sent,
        content.len() as u64,
        "bytes re-sent: {}",
        sent - content.len() as u64
    );
    assert_eq!(report.fetched, content.len() as u64);
    let requests = server.requests.lock().expect("lock").clone();
    assert!(
        requests[1].contains("bytes=1000000-") && requests[1].to_lowercase().contains("if-range: \"v1\"")
    );
    assert!(slot.read(content.len()) == content);
}

/// The slot is written with O_DIRECT in 4 KiB-aligned blocks: an image whose
/// size is no multiple of the block size, resumed at unaligned offsets, must
/// still land byte for byte, with nothing past its end touched.
#[tokio::test(flavor = "multi_thread")]
async fn an_odd_sized_image_resumed_at_odd_offsets_lands_exactly() {
    let len = 5 * MIB + 1234;
    let content = image(len, 7);
    let slot = LoopDev::new(6 * MIB as u64);
    let cuts = vec![Some(4097), Some(1_048_577), Some(5 * MIB as u64 + 1), None];
    let server = serve(
        content.clone(),
        Behaviour {
            cut_after: cuts,
            ..Behaviour::default()
        },
    )
    .await;
    let report = run(&server, &slot.dev, &expected(&content))
        .await
        .expect("install");
    assert_eq!((report.written, report.resumes), (len as u64, 3));
    let after = slot.read(6 * MIB);
    assert!(after[..len] == content[..], "slot holds the image");
    assert!(
        after[len..].iter().all(|b| *b == 0),
        "nothing past the image written"
    );
}

/// A slot that is a regular file (as in development setups), an image of an
/// odd size from a local file.
#[tokio::test(flavor = "multi_thread")]
async fn an_odd_sized_file_is_installed_into_a_file_slot() {
    let len = 2 * MIB + 4095;
    let content = image(len, 8);
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), &content).expect("write");
    let slot = tempfile::NamedTempFile::new().expect("slot");
    slot.as_file().set_len(len as u64 + 3).expect("size");
    let mut progress = |_: u64, _: u64| {};
    let report = install(
        Source::File(file.path()),
        slot.path(),
        &expected(&content),
        &Retry::default(),
        &mut progress,
    )
    .await
    .expect("install");
    assert_eq!(report.written, len as u64);
    let after = std::fs::read(slot.path()).expect("read slot");
    assert_eq!(after.len(), len + 3, "the slot keeps its size");
    assert!(after[..len] == content[..] && after[len..] == [0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_restarts_from_zero_instead_of_splicing() {
    let content = image(4 * MIB, 3);
    let slot = LoopDev::new(4 * MIB as u64);
    let server = serve(
        content.clone(),
        Behaviour {
            cut_after: vec![Some(2_000_000), None],
            etags: vec!["\"v1\"".into(), "\"v2\"".into()],
            ..Behaviour::default()
        },
    )
    .await;
    let report = run(&server, &slot.dev, &expected(&content))
        .await
        .expect("install");
    assert_eq!((report.resumes, report.restarts), (1, 1));
    assert!(slot.read(content.len()) == content);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_truncated_and_wrong_images_are_refused() {
    let content = image(2 * MIB, 4);
    let slot = LoopDev::new(4 * MIB as u64);

    // One flipped byte: the digest catches it.
    let mut corrupted = content.clone();
    corrupted[1_234_567] ^= 0x40;
    let server = serve(corrupted, Behaviour::default()).await;
    let err = run(&server, &slot.dev, &expected(&content))
        .await
        .expect_err("corrupted");
    assert!(matches!(err, InstallError::Digest { .. }), "{err}");
    assert!(err.to_string().contains("corrupted in transit or wrong file"));

    // A shorter file than the manifest says: refused on its Content-Length.
    let server = serve(content[..MIB].to_vec(), Behaviour::default()).await;
    let err = run(&server, &slot.dev, &expected(&content))
        .await
        .expect_err("short");
    assert!(matches!(err, InstallError::RemoteSize { .. }), "{err}");

    // A stream that always stops at the same byte: given up, not looped on.
    let server = serve(
        content.clone(),
        Behaviour {
            cut_after: vec![Some(500_000); 20],
            ..Behaviour::default()
        },
    )
    .await;
    let err = run(&server, &slot.dev, &expected(&content))
        .await
        .expect_err("stalls");
    assert!(
        matches!(err, InstallError::GaveUp { written: 500_000, .. }),
        "{err}"
    );

    // Missing file: no retries on a 404.
    let server = serve(
        content.clone(),
        Behaviour {
            status: Some(404),
            ..Behaviour::default()
        },
    )
    .await;
    let err = run(&server, &slot.dev, &expected(&content))
        .await
        .expect_err("404");
    assert!(matches!(err, InstallError::Status { .. }), "{err}");
    assert_eq!(server.requests.lock().expect("lock").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_image_is_refused_before_a_byte_is_written() {
    let content = image(6 * MIB, 5);
    let slot = LoopDev::new(4 * MIB as u64);
    let server = serve(content.clone(), Behaviour::default()).await;
    let err = run(&server, &slot.dev, &expected(&content))
        .await
        .expect_err("oversize");
    assert!(
        matches!(
            err,
            InstallError::SlotTooSmall {
                slot: 4194304,
                image: 6291456,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        server.requests.lock().expect("lock").is_empty(),
        "nothing was even requested"
    );
    assert!(slot.read(4 * MIB).iter().all(|b| *b == 0), "slot untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_file_is_installed_and_checked() {
    let content = image(3 * MIB, 6);
    let slot = LoopDev::new(4 * MIB as u64);
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), &content).expect("write");
    let mut progress = |_: u64, _: u64| {};
    let report = install(
        Source::File(file.path()),
        &slot.dev,
        &expected(&content),
        &Retry::default(),
        &mut progress,
    )
    .await
    .expect("install");
    assert_eq!(report.written, content.len() as u64);
    assert!(slot.read(content.len()) == content);

    let other = LoopDev::new(4 * MIB as u64);
    let wrong = Expected {
        size: content.len() as u64 + 1,
        ..expected(&content)
    };
    let err = install(
        Source::File(file.path()),
        &other.dev,
        &wrong,
        &Retry::default(),
        &mut progress,
    )
    .await
    .expect_err("size");
    assert!(matches!(err, InstallError::FileSize { .. }), "{err}");
    assert!(other.read(4 * MIB).iter().all(|b| *b == 0), "slot untouched");
}
