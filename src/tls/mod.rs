//! TLS termination: the certificates of `[[tls.certificates]]`, chosen per handshake by
//! SNI, and swapped by a reload without touching a connection.
//!
//! Invariant: a handshake always finds a certificate (the first configured one is the
//! default for clients without SNI, or with a name no certificate holds), and the set
//! in force is replaced whole, only by a set that loaded completely: a certificate that
//! does not load fails the reload and leaves the old set serving.

pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::config::{invalid, ConfigError, TlsSection};
use metrics::TlsMetrics;

/// The loaded certificates, by the DNS names they hold.
#[derive(Debug)]
pub struct Certificates {
    /// Exact names (lowercase), and wildcards by the suffix after `*.` (`shop.test` for
    /// `*.shop.test`).
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// Every certificate's names, in configuration order, for the log.
    names: Vec<Vec<String>>,
}

impl Certificates {
    /// Reads and checks every certificate and key; an error names the entry at fault.
    pub fn load(section: &TlsSection) -> Result<Self, ConfigError> {
        pingora::tls::install_default_crypto_provider();
        let provider = CryptoProvider::get_default()
            .ok_or_else(|| invalid("tls.certificates", "no TLS crypto provider is installed"))?;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut all_names = Vec::new();
        for (i, files) in section.certificates.iter().enumerate() {
            let key = format!("tls.certificates[{i}]");
            let (chain, private_key) =
                pingora::tls::load_certs_and_key_files(&files.cert_file, &files.key_file)
                    .map_err(|e| {
                        invalid(
                            &key,
                            format!("cannot read {} / {}: {e}", files.cert_file, files.key_file),
                        )
                    })?
                    .ok_or_else(|| {
                        invalid(
                            &key,
                            format!(
                                "{} holds no certificate or {} no private key (PEM expected)",
                                files.cert_file, files.key_file
                            ),
                        )
                    })?;
            let signing = provider
                .key_provider
                .load_private_key(private_key)
                .map_err(|e| invalid(&key, format!("{}: {e}", files.key_file)))?;
            let certified = CertifiedKey::new(chain, signing);
            certified.keys_match().map_err(|e| {
                invalid(
                    &key,
                    format!(
                        "{} is not the key of {}: {e}",
                        files.key_file, files.cert_file
                    ),
                )
            })?;
            let names = names_in(certified.end_entity_cert().map(|c| c.as_ref()).ok())
                .map_err(|why| invalid(&key, format!("{}: {why}", files.cert_file)))?;
            let certified = Arc::new(certified);
            for name in &names {
                // The first certificate that holds a name keeps it.
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| certified.clone()),
                    None => exact
                        .entry(name.clone())
                        .or_insert_with(|| certified.clone()),
                };
            }
            default.get_or_insert_with(|| certified.clone());
            all_names.push(names);
        }
        let default = default
            .ok_or_else(|| invalid("tls.certificates", "at least one certificate is needed"))?;
        Ok(Self {
            exact,
            wildcard,
            default,
            names: all_names,
        })
    }

    /// The certificate for `server_name`: an exact name, else a wildcard one level up,
    /// else the default.
    pub fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(found) = self.exact.get(&name) {
            return found.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }

    /// Each certificate's names, in configuration order.
    pub fn names(&self) -> &[Vec<String>] {
        &self.names
    }
}

/// The DNS names a leaf certificate is valid for: its subjectAltName DNS entries, or
/// its subject CN when it has none.
fn names_in(der: Option<&[u8]>) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let der = der.ok_or("the chain is empty")?;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for entry in &san.value.general_names {
            if let GeneralName::DNSName(name) = entry {
                names.push(name.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

/// Hands each handshake its certificate from the set in force; a reload replaces the
/// set, and only handshakes after it see the new one.
pub struct CertResolver {
    current: ArcSwap<Certificates>,
    metrics: Arc<TlsMetrics>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(certificates: Arc<Certificates>, metrics: Arc<TlsMetrics>) -> Self {
        Self {
            current: ArcSwap::new(certificates),
            metrics,
        }
    }

    /// Puts `certificates` in force for every handshake from now on.
    pub fn replace(&self, certificates: Arc<Certificates>) {
        self.current.store(certificates);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.metrics.client_hello();
        Some(self.current.load().choose(hello.server_name()))
    }
}

/// Counts completed handshakes by protocol version.
pub struct HandshakeCounter(pub Arc<TlsMetrics>);

#[async_trait]
impl TlsAccept for HandshakeCounter {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.0.handshake(tls.version());
        None
    }
}
