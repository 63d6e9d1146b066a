//! Driver for `bench/install-vs-dd.sh`: the slot installer's throughput.
//!
//! ```text
//! install-bench serve IMAGE DIR            HTTPS on 127.0.0.1 (self-signed, rcgen); writes
//!                                          DIR/port and DIR/ca.pem, serves IMAGE until killed
//! install-bench install URL CA DEVICE SIZE SHA256
//! install-bench install-file IMAGE DEVICE SIZE SHA256
//! install-bench speed                      this CPU's single-thread MiB/s of what
//!                                          the installer does per byte: ring SHA-256,
//!                                          ring AES-256-GCM open (TLS records), memcpy
//! ```
//!
//! The server is its own process so that the installer's peak RSS is the
//! installer's alone. `install` prints one line: seconds, MiB/s and VmHWM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use containeros_trust::Digest;
use containeros_update::http::{Timeouts, client};
use containeros_update::{Expected, Retry, Source, install};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn usage() -> ! {
    eprintln!(
        "usage: install-bench serve IMAGE DIR\n       \
         install-bench install URL CA DEVICE SIZE SHA256\n       \
         install-bench install-file IMAGE DEVICE SIZE SHA256\n       \
         install-bench speed"
    );
    std::process::exit(2);
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The installer runs on a current-thread runtime, as in the daemon.
    let agent = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", image, dir] => serve(image.into(), dir.into()),
        ["speed"] => speed(),
        ["install", url, ca, device, size, sha256] => agent()?.block_on(run_install(
            Some((url, Path::new(ca))),
            None,
            Path::new(device),
            size,
            sha256,
        )),
        ["install-file", image, device, size, sha256] => agent()?.block_on(run_install(
            None,
            Some(Path::new(image)),
            Path::new(device),
            size,
            sha256,
        )),
        _ => usage(),
    }
}

async fn run_install(
    url: Option<(&str, &Path)>,
    file: Option<&Path>,
    device: &Path,
    size: &str,
    sha256: &str,
) -> Result<()> {
    let expected = Expected {
        size: size.parse()?,
        sha256: sha256.parse::<Digest>()?,
    };
    let http = match url {
        Some((_, ca)) => Some(client(Some(ca), true, Timeouts::default())?),
        None => None,
    };
    let source = match (url, file, &http) {
        (Some((url, _)), _, Some(client)) => Source::Url { client, url },
        (_, Some(path), _) => Source::File(path),
        _ => usage(),
    };
    let mut progress = |_: u64, _: u64| {};
    let start = Instant::now();
    let report = install(source, device, &expected, &Retry::default(), &mut progress).await?;
    let secs = start.elapsed().as_secs_f64();
    let hwm = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    println!(
        "installed {} bytes in {secs:.3} s: {:.1} MiB/s, VmHWM {hwm}",
        report.written,
        report.written as f64 / secs / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Single-thread throughput of the per-byte work, over 512 MiB each: the
/// lower bounds of an install's CPU time on this machine.
fn speed() -> Result<()> {
    const TOTAL: usize = 512 << 20;
    let report = |what: &str, start: Instant| {
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{what}: {:.0} MiB/s ({secs:.3} s per 512 MiB)",
            TOTAL as f64 / secs / 1048576.0
        );
    };
    let data = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for _ in 0..TOTAL / data.len() {
        ctx.update(&data);
    }
    std::hint::black_box(ctx.finish());
    report("ring SHA-256, 1 MiB updates", start);

    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7; 32]).map_err(|_| "AES key")?,
    );
    let record = 16 << 10;
    let mut sealed = vec![0x5au8; record];
    let tag = key
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key([1; 12]),
            ring::aead::Aad::empty(),
            &mut sealed,
        )
        .map_err(|_| "AES-GCM seal")?;
    sealed.extend_from_slice(tag.as_ref());
    let mut buf = sealed.clone();
    let start = Instant::now();
    for _ in 0..TOTAL / record {
        buf.copy_from_slice(&sealed);
        key.open_in_place(
            ring::aead::Nonce::assume_unique_for_key([1; 12]),
            ring::aead::Aad::empty(),
            &mut buf,
        )
        .map_err(|_| "AES-GCM open")?;
    }
    report("ring AES-256-GCM open, 16 KiB records (with a copy in)", start);

    let mut dst = vec![0u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..TOTAL / data.len() {
        dst.copy_from_slice(std::hint::black_box(&data));
        std::hint::black_box(&mut dst);
    }
    report("memcpy, 1 MiB", start);
    Ok(())
}

/// A minimal HTTPS file server: GET with optional `Range: bytes=N-`, one
/// request per connection, each on a thread of its own with blocking I/O
/// (the file read straight into the buffer rustls encrypts from; no async
/// file reads, which copy once more and hop threads per read), so the
/// server takes as little of the shared CPUs as a real one would.
fn serve(image: PathBuf, dir: PathBuf) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let cert = params.self_signed(&key)?;
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?,
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::fs::write(dir.join("ca.pem"), cert.pem())?;
    // Written last: its presence tells the script the server is up.
    std::fs::write(dir.join("port.tmp"), port.to_string())?;
    std::fs::rename(dir.join("port.tmp"), dir.join("port"))?;
    let image = Arc::new(image);
    for tcp in listener.incoming() {
        let tcp = tcp?;
        let (config, image) = (config.clone(), image.clone());
        std::thread::spawn(move || {
            if let Err(e) = respond(config, tcp, &image) {
                eprintln!("install-bench serve: {e}");
            }
        });
    }
    Ok(())
}

fn respond(config: Arc<rustls::ServerConfig>, tcp: std::net::TcpStream, image: &Path) -> Result<()> {
    use std::io::{Read as _, Seek as _, Write as _};
    let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config)?, tcp);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let start = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("range").then(|| v.trim().to_owned())
        })
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<u64>().ok());
    let mut file = std::fs::File::open(image)?;
    let len = file.metadata()?.len();
    let from = start.unwrap_or(0).min(len);
    let mut response = match start {
        Some(_) => format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {from}-{}/{len}\r\n",
            len.saturating_sub(1)
        ),
        None => "HTTP/1.1 200 OK\r\n".to_owned(),
    };
    response += &format!(
        "content-length: {}\r\netag: \"bench\"\r\naccept-ranges: bytes\r\nconnection: close\r\n\r\n",
        len - from
    );
    tls.write_all(response.as_bytes())?;
    file.seek(std::io::SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|_| "AES-GCM open")?;
        if n == 0 {
            break;
        }
        tls.write_all(&buf[..n])?;
    }
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}
