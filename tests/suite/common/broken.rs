//! An origin that breaks HTTP the ways real ones do, written on raw TCP because an HTTP
//! library will not: a reset in the middle of a body, a chunked body cut short, a
//! Content-Length that lies, a header block over any limit, and an answer that stops
//! after its headers. A URL answers properly until `break_with` says otherwise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breakage {
    /// A whole, cacheable answer.
    None,
    /// `Content-Length: 10000`, 3,000 bytes, then a TCP reset.
    ResetMidBody,
    /// Chunked, one chunk, then the connection closes without the last chunk.
    TruncatedChunked,
    /// `Content-Length: 10000`, 5,000 bytes, then a clean close.
    ShortBody,
    /// A header block of 2 MiB.
    HugeHeaders,
    /// The headers, then nothing, ever.
    StallAfterHeaders,
    /// A chunked `text/html` page (gzip if asked): its first part at once, the rest (with
    /// an ESI include of `/paused-fragment`) only once `release` is called for the path.
    Paused,
}

#[derive(Default)]
struct State {
    modes: HashMap<String, Breakage>,
    hits: HashMap<String, u64>,
    gates: HashMap<String, Arc<tokio::sync::Notify>>,
}

impl State {
    fn gate(&mut self, path: &str) -> Arc<tokio::sync::Notify> {
        self.gates.entry(path.to_string()).or_default().clone()
    }
}

pub struct BrokenOrigin {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl BrokenOrigin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        BrokenOrigin { addr, state }
    }

    pub fn break_with(&self, path: &str, how: Breakage) {
        self.state
            .lock()
            .unwrap()
            .modes
            .insert(path.to_string(), how);
    }

    /// Lets one `Paused` answer of `path` send its rest.
    pub fn release(&self, path: &str) {
        self.state.lock().unwrap().gate(path).notify_one();
    }

    pub fn hits(&self, path: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

const HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: public, max-age=1, s-maxage=1\r\nX-Magento-Tags: broken\r\n";

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    loop {
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => request.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&request);
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        let how = {
            let mut state = state.lock().unwrap();
            *state.hits.entry(path.clone()).or_default() += 1;
            state.modes.get(&path).copied().unwrap_or(Breakage::None)
        };
        if path.contains("health_check") {
            let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nOK";
            if stream.write_all(ok.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let body = "x".repeat(10_000);
        match how {
            Breakage::None => {
                let answer = format!("{HEAD}Content-Length: 10000\r\n\r\n{body}");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
            Breakage::ResetMidBody => {
                let answer = format!("{HEAD}Content-Length: 10000\r\n\r\n{}", &body[..3000]);
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.flush().await;
                // Not a wait for a fact: the origin being simulated lets its first bytes
                // travel before it resets, as a crashing PHP worker does; a reset at once
                // could make the peer's kernel drop them unread.
                tokio::time::sleep(Duration::from_millis(50)).await;
                // A zero linger makes the close a reset; with zero it does not block.
                #[allow(deprecated)]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
            Breakage::TruncatedChunked => {
                let answer = format!(
                    "{HEAD}Transfer-Encoding: chunked\r\n\r\n400\r\n{}\r\n",
                    &body[..1024]
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                return;
            }
            Breakage::ShortBody => {
                let answer = format!("{HEAD}Content-Length: 10000\r\n\r\n{}", &body[..5000]);
                let _ = stream.write_all(answer.as_bytes()).await;
                return;
            }
            Breakage::HugeHeaders => {
                let filler = "a".repeat(8000);
                let mut answer = HEAD.to_string();
                for i in 0..260 {
                    answer.push_str(&format!("X-Filler-{i}: {filler}\r\n"));
                }
                answer.push_str("Content-Length: 2\r\n\r\nok");
                let _ = stream.write_all(answer.as_bytes()).await;
                return;
            }
            Breakage::Paused => {
                // Gzip when asked, as nginx in front of PHP-FPM does, flushed at the pause.
                let gzip = text.to_ascii_lowercase().contains("accept-encoding: gzip");
                let gate = state.lock().unwrap().gate(&path);
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                let mut part = |text: &str, last: bool| -> Vec<u8> {
                    if !gzip {
                        return text.as_bytes().to_vec();
                    }
                    encoder.write_all(text.as_bytes()).expect("gzip to memory");
                    if last {
                        encoder.try_finish().expect("gzip to memory");
                    } else {
                        encoder.flush().expect("gzip to memory");
                    }
                    std::mem::take(encoder.get_mut())
                };
                let first = part("<html><body><h1>first part</h1>", false);
                let rest = part(
                    "<esi:include src=\"/paused-fragment\"/></body></html>",
                    true,
                );
                let encoding = if gzip {
                    "Content-Encoding: gzip\r\n"
                } else {
                    ""
                };
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=UTF-8\r\nCache-Control: public, max-age=1, s-maxage=1\r\n{encoding}Transfer-Encoding: chunked\r\n\r\n");
                let mut answer = format!("{head}{:x}\r\n", first.len()).into_bytes();
                answer.extend_from_slice(&first);
                answer.extend_from_slice(b"\r\n");
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
                gate.notified().await;
                let mut answer = format!("{:x}\r\n", rest.len()).into_bytes();
                answer.extend_from_slice(&rest);
                answer.extend_from_slice(b"\r\n0\r\n\r\n");
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
            Breakage::StallAfterHeaders => {
                let _ = stream
                    .write_all(format!("{HEAD}Content-Length: 10000\r\n\r\n").as_bytes())
                    .await;
                // Holds the connection until the client gives up.
                let mut sink = [0u8; 64];
                let _ = stream.read(&mut sink).await;
                return;
            }
        }
    }
}
