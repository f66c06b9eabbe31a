//! A test certificate authority made with the `openssl` command, and leaf certificates
//! it signs for the names a test asks for.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestCa {
    pub dir: PathBuf,
    serial: std::cell::Cell<u32>,
}

/// One leaf certificate's files.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn new() -> Self {
        let dir = super::floodgate::temp_dir("ca");
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Floodgate test CA",
            ],
        );
        Self {
            dir,
            serial: std::cell::Cell::new(1),
        }
    }

    /// The CA certificate, PEM, for clients to trust.
    pub fn pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.pem")).expect("ca.pem")
    }

    /// A leaf for `names` (DNS names or IP addresses; the first is its CN), saved as
    /// `<file>.pem` and `<file>.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let serial = self.serial.get();
        self.serial.set(serial + 1);
        let san = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => format!("IP:{n}"),
                Err(_) => format!("DNS:{n}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        std::fs::write(
            self.dir.join(format!("{file}.ext")),
            format!("subjectAltName={san}\n"),
        )
        .expect("ext file");
        let (key, csr, cert) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={}", names[0]),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial.to_string(),
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                &format!("{file}.ext"),
            ],
        );
        Leaf {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }
}

/// The subject CN and serial of the certificate `addr` presents for `sni`, as
/// `openssl s_client` sees it (`None`: no SNI sent).
pub fn presented(addr: std::net::SocketAddr, sni: Option<&str>) -> String {
    let mut s_client = Command::new("openssl");
    s_client
        .args(["s_client", "-connect", &addr.to_string()])
        .stdin(std::process::Stdio::null());
    match sni {
        Some(name) => s_client.args(["-servername", name]),
        None => s_client.arg("-noservername"),
    };
    let out = s_client.output().expect("openssl s_client");
    let pem = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl x509");
    std::io::Write::write_all(x509.stdin.as_mut().expect("stdin"), pem.as_bytes())
        .expect("write the certificate");
    let out = x509.wait_with_output().expect("openssl x509 output");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Floodgate with a TLS listener holding `certs` (the first is the default); returns
/// it and the TLS address.
pub async fn start_tls(
    origin: std::net::SocketAddr,
    certs: &[&Leaf],
    settings: super::Settings,
) -> (super::Floodgate, std::net::SocketAddr) {
    let tls: std::net::SocketAddr = format!("127.0.0.1:{}", super::floodgate::free_port())
        .parse()
        .expect("addr");
    let mut settings = settings.server(&format!("tls_listen = [\"{tls}\"]"));
    for leaf in certs {
        settings = settings.tls(&format!(
            "[[tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"",
            leaf.cert.display(),
            leaf.key.display()
        ));
    }
    let fg = super::Floodgate::start_with(origin, settings).await;
    assert!(
        super::until(std::time::Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(tls).await.is_ok()
        })
        .await,
        "the TLS listener did not open:\n{}",
        fg.log()
    );
    (fg, tls)
}

/// An HTTPS client that trusts the test CA and reaches `names` at `addr`.
pub fn https_client(ca: &TestCa, addr: std::net::SocketAddr, names: &[&str]) -> reqwest::Client {
    https_builder(ca, addr, names)
        .build()
        .expect("https client")
}

pub fn https_builder(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    names: &[&str],
) -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca.pem()).expect("CA pem"))
        .timeout(std::time::Duration::from_secs(10));
    for name in names {
        builder = builder.resolve(name, addr);
    }
    builder
}

/// A TLS connection to `addr` for `name`, trusting `ca`, offering `alpn`.
pub async fn tls_connect(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca.pem()[..]) {
        roots.add(cert?).map_err(std::io::Error::other)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server =
        rustls::pki_types::ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
    connector.connect(server, tcp).await
}

/// An HTTP/2 client connection (ALPN `h2`) to `addr` for `name`; its connection task
/// runs until the server closes it, and its handle tells when that was.
pub async fn h2_connect(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    name: &str,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let tls = tls_connect(ca, addr, name, &[b"h2"])
        .await
        .expect("TLS handshake with h2");
    let (send, connection) = h2::client::handshake(tls).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (send, driver)
}
