//! TLS's metrics, registered and owned here: ClientHellos received and handshakes
//! completed by protocol version (the difference failed: a bad SNI, no shared cipher or
//! version, a client that gave up). A connection that sends no ClientHello at all is
//! not counted.

use prometheus::{IntCounter, IntCounterVec, Registry};

use crate::metrics::{counter, counter_vec};

pub struct TlsMetrics {
    hellos: IntCounter,
    handshakes: IntCounterVec,
}

impl TlsMetrics {
    pub fn register(r: &Registry) -> prometheus::Result<Self> {
        let handshakes = counter_vec(
            r,
            "floodgate_tls_handshakes_total",
            "TLS handshakes completed, by protocol version (TLSv1_2, TLSv1_3)",
            &["version"],
        )?;
        for version in ["TLSv1_2", "TLSv1_3"] {
            handshakes.with_label_values(&[version]);
        }
        Ok(Self {
            hellos: counter(
                r,
                "floodgate_tls_client_hellos_total",
                "TLS ClientHellos received; those that did not become a completed handshake failed",
            )?,
            handshakes,
        })
    }

    pub fn client_hello(&self) {
        self.hellos.inc();
    }

    pub fn handshake(&self, version: Option<&str>) {
        let version = match version {
            Some("TLSv1.3" | "TLSv1_3") => "TLSv1_3",
            Some("TLSv1.2" | "TLSv1_2") => "TLSv1_2",
            _ => "other",
        };
        self.handshakes.with_label_values(&[version]).inc();
    }
}
