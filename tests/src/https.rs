//! An HTTPS file server on loopback for update tests and benchmarks: rustls
//! with a CA made by the test (rcgen), HTTP/1.1 keep-alive, `Range:
//! bytes=a-b` with `If-Range`, `If-None-Match` (304), and faults —
//! connections cut once the body bytes sent reach given totals, or every
//! request refused after some total. It serves one content at every path
//! ([`serve`]) or a directory ([`serve_dir`]), such as a channel directory
//! laid out by `containeros-publish`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// How the server misbehaves.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Cumulative body bytes (over all responses) at which the connection
    /// in use is cut, mid-body, without a TLS close_notify.
    pub cuts: Vec<u64>,
    /// Once this many body bytes were sent: cut the connection, then answer
    /// every request with 503.
    pub dead_after: Option<u64>,
    /// Answer every request with the whole file (200), as a server without
    /// range support does.
    pub ignore_range: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Body bytes written to connections.
    pub body_bytes: u64,
    /// Request heads, in order.
    pub requests: Vec<String>,
    pub cuts: usize,
}

#[derive(Debug)]
pub struct Server {
    /// For [`serve`]: a URL of the content. For [`serve_dir`]: the
    /// directory's URL, ending in `/`.
    pub url: String,
    /// The CA that signed the server's certificate (PEM).
    pub ca_pem: tempfile::NamedTempFile,
    pub stats: Arc<Mutex<Stats>>,
}

impl Server {
    pub fn stats(&self) -> Stats {
        self.stats.lock().expect("stats").clone()
    }
}

/// A file's strong ETag and content.
type Entry = (String, Arc<Vec<u8>>);

/// What is served.
enum Files {
    One(Arc<Vec<u8>>),
    Dir {
        root: PathBuf,
        /// Files read once per (length, mtime), so range requests are cheap.
        cache: Mutex<HashMap<PathBuf, Entry>>,
    },
}

impl Files {
    /// The content and strong ETag at `path`, or `None` (404).
    fn get(&self, path: &str) -> Option<Entry> {
        match self {
            Files::One(content) => Some(("\"archive-1\"".to_owned(), content.clone())),
            Files::Dir { root, cache } => {
                let relative = Path::new(path.split('?').next()?.trim_start_matches('/'));
                if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
                    return None;
                }
                let file = root.join(relative);
                let meta = std::fs::metadata(&file).ok().filter(std::fs::Metadata::is_file)?;
                let mtime = meta
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_nanos();
                let etag = format!("\"{}-{mtime}\"", meta.len());
                let mut cache = cache.lock().expect("cache");
                if let Some((tag, content)) = cache.get(&file)
                    && *tag == etag
                {
                    return Some((etag, content.clone()));
                }
                let content = Arc::new(std::fs::read(&file).ok()?);
                cache.insert(file, (etag.clone(), content.clone()));
                Some((etag, content))
            }
        }
    }
}

/// Serves `content` at every path until the runtime ends; `url` names
/// `/os/rootfs.cba`.
pub async fn serve(content: Arc<Vec<u8>>, faults: Faults) -> Server {
    let mut server = start(Files::One(content), faults).await;
    server.url.push_str("os/rootfs.cba");
    server
}

/// Serves the files under `root` (read when asked, so files published
/// later are served) until the runtime ends.
pub async fn serve_dir(root: &Path, faults: Faults) -> Server {
    start(
        Files::Dir {
            root: root.to_owned(),
            cache: Mutex::new(HashMap::new()),
        },
        faults,
    )
    .await
}

async fn start(files: Files, faults: Faults) -> Server {
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
    let stats = Arc::new(Mutex::new(Stats::default()));
    let faults = Arc::new(faults);
    let files = Arc::new(files);
    {
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, files, faults, stats) =
                    (acceptor.clone(), files.clone(), faults.clone(), stats.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        connection(tls, &files, &faults, &stats).await;
                    }
                });
            }
        });
    }
    Server {
        url: format!("https://localhost:{port}/"),
        ca_pem,
        stats,
    }
}

/// Requests on one connection until it closes or is cut.
async fn connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    files: &Files,
    faults: &Faults,
    stats: &Mutex<Stats>,
) {
    let mut tls = tokio::io::BufReader::new(tls);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match tls.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
        let method = request_line.next().unwrap_or_default().to_owned();
        let path = request_line.next().unwrap_or("/").to_owned();
        let sent_so_far = {
            let mut s = stats.lock().expect("stats");
            s.requests.push(head.clone());
            s.body_bytes
        };
        let simple =
            |status: &str, extra: String| format!("HTTP/1.1 {status}\r\n{extra}content-length: 0\r\n\r\n");
        if faults.dead_after.is_some_and(|d| sent_so_far >= d) {
            let _ = tls
                .write_all(simple("503 Service Unavailable", String::new()).as_bytes())
                .await;
            let _ = tls.flush().await;
            continue;
        }
        let Some((etag, content)) = files.get(&path) else {
            let _ = tls
                .write_all(simple("404 Not Found", String::new()).as_bytes())
                .await;
            let _ = tls.flush().await;
            continue;
        };
        if header("if-none-match").is_some_and(|v| v == etag) {
            let _ = tls
                .write_all(simple("304 Not Modified", format!("etag: {etag}\r\n")).as_bytes())
                .await;
            let _ = tls.flush().await;
            continue;
        }
        let len = content.len() as u64;
        let range = header("range")
            .filter(|_| !faults.ignore_range)
            .filter(|_| header("if-range").is_none_or(|v| v == etag))
            .and_then(|r| {
                let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
                let a: u64 = a.parse().ok()?;
                let b: u64 = if b.is_empty() {
                    len.saturating_sub(1)
                } else {
                    b.parse().ok()?
                };
                Some((a, b.min(len.saturating_sub(1))))
            });
        let (status, from, to) = match range {
            Some((a, _)) if a >= len => {
                let _ = tls
                    .write_all(
                        simple(
                            "416 Range Not Satisfiable",
                            format!("content-range: bytes */{len}\r\n"),
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = tls.flush().await;
                continue;
            }
            Some((a, b)) => ("206 Partial Content", a, b + 1),
            None => ("200 OK", 0, len),
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\netag: {etag}\r\naccept-ranges: bytes\r\n",
            to - from
        );
        if range.is_some() {
            response += &format!("content-range: bytes {from}-{}/{len}\r\n", to - 1);
        }
        response += "\r\n";
        if tls.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        if method == "HEAD" {
            if tls.flush().await.is_err() {
                return;
            }
            continue;
        }
        let mut at = from;
        while at < to {
            // How much may go before the next cut.
            let (room, cut_here) = {
                let s = stats.lock().expect("stats");
                let next_cut = faults
                    .cuts
                    .get(s.cuts)
                    .copied()
                    .into_iter()
                    .chain(faults.dead_after.filter(|_| s.cuts >= faults.cuts.len()))
                    .min();
                match next_cut {
                    Some(c) if c <= s.body_bytes => (0, true),
                    Some(c) => (c - s.body_bytes, false),
                    None => (u64::MAX, false),
                }
            };
            if cut_here {
                stats.lock().expect("stats").cuts += 1;
                let _ = tls.flush().await;
                // An abrupt end: no close_notify, the socket just goes.
                let (tcp, _) = tls.into_inner().into_inner();
                drop(tcp);
                return;
            }
            let n = (to - at).min(16 << 10).min(room) as usize;
            let piece = &content[at as usize..at as usize + n];
            if tls.write_all(piece).await.is_err() {
                return;
            }
            stats.lock().expect("stats").body_bytes += n as u64;
            at += n as u64;
        }
        if tls.flush().await.is_err() {
            return;
        }
    }
}
