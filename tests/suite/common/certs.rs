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
