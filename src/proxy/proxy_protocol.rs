//! Client listeners behind a proxy that speaks the PROXY protocol (haproxy `send-proxy`,
//! nginx `proxy_protocol on`, cloud load balancers): every connection starts with a
//! header naming the real client, which then is the connection's peer for everything
//! Floodgate does (purge ACL, per-client cap, `X-Forwarded-For`, logs).
//!
//! Invariant: a header is believed only from a peer in `server.trusted_proxies`;
//! anyone else, a connection without a valid header, or one that does not send it within
//! `HEADER_TIMEOUT`, is closed before a byte of HTTP is read. Exactly the header's bytes
//! are consumed, so the request that follows reaches Pingora untouched.
//!
//! Pingora 0.9 has no PROXY protocol support (cloudflare/pingora#132), so this is a
//! Pingora `Service` of its own: it accepts, reads the header (parsed by the `ppp`
//! crate), sets the connection's peer address, and hands the connection to the same
//! proxy as the plain listeners. Its sockets use `SO_REUSEPORT`, so a graceful upgrade
//! binds beside the old process instead of failing.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::Runtime;

/// How long a connection may take to send its PROXY header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A v1 header is at most 107 bytes; a v2 header 16 bytes plus its length.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a PROXY header says about the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Header {
    /// The client's address, as the proxy saw it.
    Client(SocketAddr),
    /// A connection of the proxy's own (a health check): its peer is the proxy.
    Local,
}

/// Why a connection on a PROXY protocol listener is closed before its request is read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY header: {0}")]
    Missing(std::io::Error),
    #[error("the connection does not start with a PROXY header")]
    NotProxy,
    #[error("PROXY v1 header longer than 107 bytes")]
    TooLong,
    #[error("PROXY header cut short: {0}")]
    CutShort(std::io::Error),
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("PROXY v2 header for {0}: only TCP is served")]
    NotTcp(String),
}

/// Reads exactly one PROXY header (v1 or v2) from `stream`.
pub async fn read_header(stream: &mut TcpStream) -> Result<Header, HeaderError> {
    let mut buf = vec![0u8; 16];
    stream
        .read_exact(&mut buf[..5])
        .await
        .map_err(HeaderError::Missing)?;
    if &buf[..5] == b"PROXY" {
        buf.truncate(5);
        // Byte by byte, so not one byte of the request after it is taken.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(HeaderError::TooLong);
            }
            let byte = stream.read_u8().await.map_err(HeaderError::CutShort)?;
            buf.push(byte);
        }
    } else {
        stream
            .read_exact(&mut buf[5..16])
            .await
            .map_err(HeaderError::Missing)?;
        if &buf[..12] != V2_SIGNATURE {
            return Err(HeaderError::NotProxy);
        }
        let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
        buf.resize(16 + len, 0);
        stream
            .read_exact(&mut buf[16..])
            .await
            .map_err(HeaderError::CutShort)?;
    }
    parse(&buf)
}

/// Parses one complete header.
pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
    use ppp::{v1, v2, HeaderResult};
    match HeaderResult::parse(bytes) {
        HeaderResult::V1(Ok(header)) => match header.addresses {
            v1::Addresses::Tcp4(a) => Ok(Header::Client(SocketAddr::from((
                a.source_address,
                a.source_port,
            )))),
            v1::Addresses::Tcp6(a) => Ok(Header::Client(SocketAddr::from((
                a.source_address,
                a.source_port,
            )))),
            v1::Addresses::Unknown => Ok(Header::Local),
        },
        HeaderResult::V2(Ok(header)) => match (header.command, header.addresses) {
            (v2::Command::Local, _) => Ok(Header::Local),
            (_, v2::Addresses::IPv4(a)) => Ok(Header::Client(SocketAddr::from((
                a.source_address,
                a.source_port,
            )))),
            (_, v2::Addresses::IPv6(a)) => Ok(Header::Client(SocketAddr::from((
                a.source_address,
                a.source_port,
            )))),
            (_, other) => Err(HeaderError::NotTcp(format!("{other:?}"))),
        },
        HeaderResult::V1(Err(e)) => Err(HeaderError::Invalid(format!("v1: {e}"))),
        HeaderResult::V2(Err(e)) => Err(HeaderError::Invalid(format!("v2: {e}"))),
    }
}

/// The PROXY protocol listeners, serving through `app` (the same proxy as the plain ones).
pub struct ProxyProtocolService<A>(Arc<Listeners<A>>);

struct Listeners<A> {
    addrs: Vec<String>,
    app: Arc<A>,
    runtime: Arc<ArcSwap<Runtime>>,
    threads: usize,
}

impl<A> ProxyProtocolService<A> {
    pub fn new(addrs: Vec<String>, app: A, runtime: Arc<ArcSwap<Runtime>>, threads: usize) -> Self {
        Self(Arc::new(Listeners {
            addrs,
            app: Arc::new(app),
            runtime,
            threads,
        }))
    }
}

impl<A: ServerApp + Send + Sync + 'static> Listeners<A> {
    async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, shutdown: ShutdownWatch) {
        let mut tcp = tcp;
        if !self.runtime.load().trusted_proxies.allows(peer.ip()) {
            tracing::warn!(%peer, "PROXY header refused: the peer is not in server.trusted_proxies");
            return;
        }
        let client = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut tcp)).await {
            Ok(Ok(Header::Client(client))) => client,
            Ok(Ok(Header::Local)) => peer,
            Ok(Err(why)) => {
                tracing::warn!(%peer, "connection closed: {why}");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "connection closed: no PROXY header within 5 s");
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PeerAddr::Inet(client)));
        let mut stream = Stream::from(tcp);
        stream.set_socket_digest(digest);
        let mut next = self.app.process_new(Box::new(stream), &shutdown).await;
        while let Some(stream) = next {
            next = self.app.process_new(stream, &shutdown).await;
        }
    }
}

fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(addr)
                .map_err(|e| e.to_string())?
                .next()
                .ok_or_else(|| format!("{addr} resolves to no address"))
        })
        .map_err(std::io::Error::other)?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // A graceful upgrade's new process binds beside the old one.
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for ProxyProtocolService<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut tasks = Vec::new();
        for addr in &self.0.addrs {
            let listener = match bind(addr) {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!("cannot listen on {addr} (server.proxy_protocol_listen): {e}");
                    std::process::exit(1);
                }
            };
            let (service, mut shutdown) = (self.0.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        accepted = listener.accept() => accepted,
                        _ = shutdown.changed() => break,
                    };
                    match accepted {
                        Ok((tcp, peer)) => {
                            let conn_shutdown = shutdown.clone();
                            tokio::spawn(service.clone().serve(tcp, peer, conn_shutdown));
                        }
                        Err(e) => {
                            tracing::warn!(
                                "accept on {}: {e}",
                                listener
                                    .local_addr()
                                    .map_or_else(|_| "?".into(), |a| a.to_string())
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    fn name(&self) -> &str {
        "PROXY protocol listeners"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.0.threads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_name_the_client() {
        assert_eq!(
            parse(b"PROXY TCP4 198.51.100.7 10.0.0.1 40000 443\r\n").ok(),
            Some(Header::Client("198.51.100.7:40000".parse().unwrap()))
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n").ok(),
            Some(Header::Client("[2001:db8::7]:40000".parse().unwrap()))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").ok(), Some(Header::Local));
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 7, 10, 0, 0, 1, 0x9c, 0x40, 1, 187,
        ]);
        assert_eq!(
            parse(&v2).ok(),
            Some(Header::Client("198.51.100.7:40000".parse().unwrap()))
        );
        assert!(matches!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"),
            Err(HeaderError::Invalid(_))
        ));
        assert!(parse(b"GET / HTTP/1.1\r\n").is_err());
    }
}
