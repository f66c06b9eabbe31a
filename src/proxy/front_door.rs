//! Time limits at the front door, before a request exists: a TLS client must send its
//! ClientHello, an HTTP/2 client its preface, and an HTTP/1 client each request's whole
//! header block within a deadline, however slowly the bytes trickle in.
//!
//! Invariant: a connection that has not completed its handshake, preface or header block
//! by its deadline is closed (and counted); a deadline never restarts because a byte
//! arrived. Once a request's header is in, nothing here limits it: its body has
//! `limits.request_body_timeout_secs`, its response `server.send_timeout_secs`, an idle
//! keep-alive connection Pingora's keep-alive timeout, an idle HTTP/2 connection
//! `server.h2_idle_timeout_secs`. A write that makes no progress for
//! `server.send_timeout_secs` fails (a client that stopped reading); the timer is only
//! armed while a write waits, so a response that goes straight out costs none.
//!
//! Why a wrapper around the connection: Pingora's HTTP/1 header read times out each read
//! on its own (a byte every 30 s held a connection for ever), and it bounds neither the
//! HTTP/2 preface nor the TLS handshake. `FrontDoor` wraps Pingora's proxy (a
//! `ServerApp`) and hands it each connection inside `Guarded`, which watches the bytes
//! read for the end of a header block (a blank line) and fails a read that is still
//! waiting when the deadline passes. For TLS, `HelloDeadline` is Pingora's pre-TLS hook:
//! it waits for the first TLS record (the ClientHello) within the deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Runtime;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;

/// Connections closed at the front door, by why.
pub struct DoorMetrics {
    header_timeout: IntCounter,
    handshake_timeout: IntCounter,
    send_timeout: IntCounter,
}

impl DoorMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Arc<Self>> {
        let closed = crate::metrics::counter_vec(
            registry,
            "floodgate_connections_closed_total",
            "Client connections Floodgate closed at a deadline: header_timeout (an HTTP/1 header block not complete within server.header_timeout_secs), handshake_timeout (no ClientHello or HTTP/2 preface within server.handshake_timeout_secs), send_timeout (an HTTP/1 client that took no byte within server.send_timeout_secs)",
            &["reason"],
        )?;
        Ok(Arc::new(Self {
            header_timeout: closed.with_label_values(&["header_timeout"]),
            handshake_timeout: closed.with_label_values(&["handshake_timeout"]),
            send_timeout: closed.with_label_values(&["send_timeout"]),
        }))
    }
}

/// Pingora's proxy behind the front door's deadlines.
pub struct FrontDoor<A> {
    app: Arc<A>,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<DoorMetrics>,
}

impl<A> FrontDoor<A> {
    pub fn new(app: A, runtime: Arc<ArcSwap<Runtime>>, metrics: Arc<DoorMetrics>) -> Self {
        Self {
            app: Arc::new(app),
            runtime,
            metrics,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for FrontDoor<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let server = &self.runtime.load().config.server;
        let phase = if stream.selected_alpn_proto() == Some(ALPN::H2) {
            Phase::Preface {
                deadline: Instant::now() + Duration::from_secs(server.handshake_timeout_secs),
                seen: 0,
            }
        } else {
            Phase::Header {
                deadline: Instant::now() + Duration::from_secs(server.header_timeout_secs),
            }
        };
        let guarded = Guarded {
            inner: stream,
            phase,
            blank: BlankLine::default(),
            timer: None,
            header_timeout: Duration::from_secs(server.header_timeout_secs),
            send_timeout: Duration::from_secs(server.send_timeout_secs),
            stalled: None,
            metrics: self.metrics.clone(),
        };
        // Pingora's HTTP app runs the connection's requests to its end and gives nothing
        // back; whatever it returns is handed on.
        self.app.process_new(Box::new(guarded), shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// Where a connection is: which deadline, if any, runs.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// An HTTP/1 request's header block is being read.
    Header { deadline: Instant },
    /// The header is in: its body and its response take their own time.
    Request,
    /// A response went out: the next bytes read start the next request.
    Answered,
    /// HTTP/2 before its preface.
    Preface { deadline: Instant, seen: usize },
    /// HTTP/2 after its preface: Pingora's idle timeout and the request limits apply.
    Open,
    /// A deadline passed: every read fails.
    Closed,
}

/// Finds the blank line that ends a header block (`\r\n\r\n`, or bare `\n\n`, which
/// Pingora's parser accepts too) across reads.
#[derive(Debug, Default, Clone, Copy)]
struct BlankLine {
    /// Line ends seen in a row, `\r` skipped.
    newlines: u8,
    /// A line with something on it has been read: empty lines before the request line
    /// (which parsers skip) end nothing.
    started: bool,
}

impl BlankLine {
    /// Whether `bytes` complete the blank line; `newlines` carries over to the next read.
    /// Only the line ends are looked for (memchr), not every byte compared.
    fn ends_in(&mut self, bytes: &[u8]) -> bool {
        let only_cr = |s: &[u8]| s.iter().all(|b| *b == b'\r');
        let mut from = 0;
        while let Some(at) = memchr::memchr(b'\n', &bytes[from..]).map(|i| from + i) {
            // A line end after nothing but `\r` since the last one makes them consecutive.
            if only_cr(&bytes[from..at]) {
                self.newlines += 1;
            } else {
                self.newlines = 1;
                self.started = true;
            }
            if self.newlines >= 2 && self.started {
                self.newlines = 0;
                return true;
            }
            from = at + 1;
        }
        if !only_cr(&bytes[from..]) {
            self.newlines = 0;
            self.started = true;
        }
        false
    }
}

/// A client connection under the front door's deadlines (see the module's invariant).
pub struct Guarded {
    inner: Stream,
    phase: Phase,
    blank: BlankLine,
    timer: Option<Pin<Box<Sleep>>>,
    header_timeout: Duration,
    send_timeout: Duration,
    /// Armed when a write had to wait, disarmed by the next one that goes out.
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: Arc<DoorMetrics>,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Guarded {
    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Header { deadline } | Phase::Preface { deadline, .. } => Some(deadline),
            Phase::Request | Phase::Answered | Phase::Open | Phase::Closed => None,
        }
    }

    /// What the bytes just read mean for the deadlines.
    fn read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match &mut self.phase {
            Phase::Answered => {
                // The next request's first bytes: its header's deadline starts now.
                self.blank = BlankLine::default();
                self.phase = Phase::Header {
                    deadline: Instant::now() + self.header_timeout,
                };
                self.read(bytes);
            }
            Phase::Header { .. } => {
                if self.blank.ends_in(bytes) {
                    self.phase = Phase::Request;
                }
            }
            Phase::Preface { seen, .. } => {
                *seen += bytes.len();
                if *seen >= H2_PREFACE_LEN {
                    self.phase = Phase::Open;
                }
            }
            Phase::Request | Phase::Open | Phase::Closed => {}
        }
    }

    /// What writing `bytes` means: a final response ends the request (an interim
    /// `100 Continue` does not: the body is still to come).
    fn wrote(&mut self, bytes: &[u8]) {
        if matches!(self.phase, Phase::Request)
            && !bytes.is_empty()
            && !(bytes.starts_with(b"HTTP/1.1 1") || bytes.starts_with(b"HTTP/1.0 1"))
        {
            self.phase = Phase::Answered;
        }
    }

    /// What a write's poll means for the send deadline: progress disarms it; a write that
    /// waits arms it, and one still waiting when it passes fails.
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if !poll.is_pending() {
            self.stalled = None;
            return poll;
        }
        let send_timeout = self.send_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.metrics.send_timeout.inc();
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no byte within server.send_timeout_secs",
            )));
        }
        Poll::Pending
    }

    /// A read is waiting: fails it once the deadline has passed, else makes sure the
    /// task is woken at the deadline.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Some(deadline) = self.deadline() else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let what = match self.phase {
            Phase::Preface { .. } => {
                self.metrics.handshake_timeout.inc();
                "no HTTP/2 preface within server.handshake_timeout_secs"
            }
            _ => {
                self.metrics.header_timeout.inc();
                "the request header was not complete within server.header_timeout_secs"
            }
        };
        // Closed from here on: a later read fails at once.
        self.phase = Phase::Closed;
        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what)))
    }
}

use std::future::Future;

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if matches!(this.phase, Phase::Closed) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "closed at the front door's deadline",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.waiting(cx),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.wrote(buf);
        }
        this.written(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                this.wrote(first);
            }
        }
        this.written(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        this.written(cx, flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Pingora's pre-TLS hook: the first TLS record (the ClientHello) must be in within
/// `server.handshake_timeout_secs` of the connection, else it is closed.
pub struct HelloDeadline {
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<DoorMetrics>,
}

impl HelloDeadline {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, metrics: Arc<DoorMetrics>) -> Self {
        Self { runtime, metrics }
    }
}

#[async_trait]
impl PreTlsProcess for HelloDeadline {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let timeout = Duration::from_secs(self.runtime.load().config.server.handshake_timeout_secs);
        let hello = async {
            // A TLS record: type, version (2), length (2), then that many bytes. Peeked,
            // so the handshake reads them again.
            let mut head = [0u8; 5];
            stream.try_peek(&mut head).await?;
            let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
            let mut record = vec![0u8; 5 + len];
            stream.try_peek(&mut record).await?;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(timeout, hello).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(pingora::Error::because(
                pingora::ErrorType::HandshakeError,
                "the client closed before its ClientHello",
                e,
            )),
            Err(_) => {
                self.metrics.handshake_timeout.inc();
                pingora::Error::e_explain(
                    pingora::ErrorType::HandshakeError,
                    "no ClientHello within server.handshake_timeout_secs",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blank_line_is_found_across_reads_and_line_ends() {
        let mut blank = BlankLine::default();
        assert!(!blank.ends_in(b"GET / HTTP/1.1\r\nHost: a\r"));
        assert!(!blank.ends_in(b"\n"));
        assert!(blank.ends_in(b"\r\n"), "CRLF CRLF split across reads");
        let mut bare = BlankLine::default();
        assert!(bare.ends_in(b"GET / HTTP/1.1\nHost: a\n\n"));
        let mut none = BlankLine::default();
        assert!(!none.ends_in(b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\r\n"));
        // Empty lines before the request line end nothing: the header still has to come.
        let mut leading = BlankLine::default();
        assert!(!leading.ends_in(b"\r\n\r\n\n\n"));
        assert!(!leading.ends_in(b"GET / HTTP/1.1\r\n"));
        assert!(leading.ends_in(b"\r\n"));
        // One byte at a time, as a trickling client sends it.
        let mut trickle = BlankLine::default();
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let ends: Vec<bool> = request.iter().map(|b| trickle.ends_in(&[*b])).collect();
        assert_eq!(ends.iter().filter(|e| **e).count(), 1);
        assert!(ends[ends.len() - 1]);
    }
}
