//! An HTTPS file server on loopback for the delta tests and benchmark:
//! rustls with an rcgen CA, HTTP/1.1 keep-alive, `Range: bytes=a-b` and
//! `If-Range`, and faults — connections cut once the bytes sent reach
//! given totals, or every request refused after some total.

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
    pub requests: Vec<String>,
    pub cuts: usize,
}

#[derive(Debug)]
pub struct Server {
    pub url: String,
    pub ca_pem: tempfile::NamedTempFile,
    pub stats: Arc<Mutex<Stats>>,
}

impl Server {
    pub fn stats(&self) -> Stats {
        self.stats.lock().expect("stats").clone()
    }
}

const ETAG: &str = "\"archive-1\"";

/// Serves `content` at every path until the runtime ends.
pub async fn serve(content: Arc<Vec<u8>>, faults: Faults) -> Server {
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
    {
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, content, faults, stats) =
                    (acceptor.clone(), content.clone(), faults.clone(), stats.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        connection(tls, &content, &faults, &stats).await;
                    }
                });
            }
        });
    }
    Server {
        url: format!("https://localhost:{port}/os/rootfs.cba"),
        ca_pem,
        stats,
    }
}

/// Requests on one connection until it closes or is cut.
async fn connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    content: &[u8],
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
        let sent_so_far = {
            let mut s = stats.lock().expect("stats");
            s.requests.push(head.clone());
            s.body_bytes
        };
        if faults.dead_after.is_some_and(|d| sent_so_far >= d) {
            let _ = tls
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await;
            let _ = tls.flush().await;
            continue;
        }
        let len = content.len() as u64;
        let range = header("range")
            .filter(|_| !faults.ignore_range)
            .filter(|_| header("if-range").is_none_or(|v| v == ETAG))
            .and_then(|r| {
                let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
                let a: u64 = a.parse().ok()?;
                let b: u64 = if b.is_empty() { len - 1 } else { b.parse().ok()? };
                Some((a, b.min(len - 1)))
            });
        let (status, from, to) = match range {
            Some((a, _)) if a >= len => {
                let _ = tls
                    .write_all(
                        format!("HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{len}\r\ncontent-length: 0\r\n\r\n")
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
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\netag: {ETAG}\r\naccept-ranges: bytes\r\n",
            to - from
        );
        if range.is_some() {
            response += &format!("content-range: bytes {from}-{}/{len}\r\n", to - 1);
        }
        response += "\r\n";
        if tls.write_all(response.as_bytes()).await.is_err() {
            return;
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
