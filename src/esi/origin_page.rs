//! A page that has to come from the origin (a miss, an expired page, a pass) reaches the
//! client through this wrapper: the request runs again as a subrequest, which fetches,
//! stores and coalesces it as usual, and its response is assembled here on the way out.
//!
//! A text response streams (`streaming`): what comes before its first ESI marker leaves
//! as it arrives. Only the refresh of an expired page is held whole, because it has a
//! stale copy to fall back on if the origin's answer breaks, and a held page can still
//! take it; a streamed one is already on its way and can only end cut short.
//!
//! Why a subrequest: Pingora's body filters are synchronous and cannot wait for a
//! fragment, while this function can. Its cost (one more pass through the request path)
//! is paid only when the origin is asked anyway; hits are assembled by the store.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::cache::{CachePhase, NoCacheReason};
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::subrequest::Ctx as SubrequestCtx;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::cache::hit_for_miss::REASON_UNCACHEABLE;

use super::gzip::Piece;
use super::streaming::{End, Streamed};
use super::{
    accepts_gzip, applies_to, is_gzip, prepare_assembled_header, template_of, Assembly, Role,
    Settings, Template, PER_REQUEST_GZIP_LEVEL,
};

/// Writes the whole response for `session`, whose client's request arrived at
/// `arrived`; the caller then tells Pingora not to proxy.
///
/// A page held for assembly whose origin answer broke after its header (a reset, a body
/// cut short) has sent nothing yet: it is asked for once more, from the cache only, so
/// the visitor gets the stale copy if one is kept, else the busy page, never a page cut
/// short.
pub async fn serve(session: &mut Session, esi: &Settings<'_>, arrived: Instant) -> Result<()> {
    match fetch(session, esi, arrived, false).await {
        Err(e) if session.response_written().is_none() => {
            tracing::debug!(error = %e, "the page's origin answer broke: trying its stale copy");
            fetch(session, esi, arrived, true).await
        }
        done => done,
    }
}

async fn fetch(
    session: &mut Session,
    esi: &Settings<'_>,
    arrived: Instant,
    stale_only: bool,
) -> Result<()> {
    let max_bytes = esi.max_bytes;
    if session.subrequest_spawner.is_none() {
        return Error::e_explain(ErrorType::InternalError, "no subrequest spawner for ESI");
    }
    let client_tls = session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some());
    let ctx = SubrequestCtx::builder()
        .user_ctx(Box::new(Role::Page {
            depth: esi.depth,
            arrived,
            budget: esi.budget.clone(),
            stale_only,
            client_tls,
            client: esi.client,
        }))
        .build();
    // Pingora makes the subrequest from the session's request written as HTTP/1 text,
    // which "HTTP/2" is not: the copy goes as HTTP/1.1 (its `Host` was set from
    // `:authority` when the request came in), and the request keeps its own version.
    let version = session.req_header().version;
    session.req_header_mut().set_version(http::Version::HTTP_11);
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "no subrequest spawner for ESI");
    };
    let (prepared, mut handle) = spawner.create_subrequest(session.as_downstream(), ctx);
    session.req_header_mut().set_version(version);
    tokio::spawn(prepared.run());

    let mut out: Option<Out> = None;
    while let Some(task) = handle.rx.recv().await {
        if let HttpTask::Header(resp, _) = &task {
            // Visitors waiting on this page's cache lock wait for nothing when it turned
            // out uncacheable: they go to the origin now, side by side, as Varnish's
            // hit-for-miss releases its waiting list.
            if resp
                .headers
                .get("x-magento-cache-debug")
                .is_some_and(|v| v.as_bytes() == b"UNCACHEABLE")
            {
                session
                    .cache
                    .release_write_lock(NoCacheReason::Custom(REASON_UNCACHEABLE));
            }
        }
        match (out.take(), task) {
            (None, HttpTask::Header(resp, false))
                if resp.status != http::StatusCode::PARTIAL_CONTENT
                    && !resp.status.is_informational()
                    && applies_to(&resp) =>
            {
                // Held whole only where that buys something: a stale copy to fall back
                // on if the answer breaks before its end. Anything else streams.
                out = Some(if session.cache.phase() == CachePhase::Stale {
                    Out::Held(resp, BytesMut::new())
                } else {
                    Out::Header(resp)
                });
            }
            (Some(Out::Header(resp)), HttpTask::Body(data, end)) => {
                let data = data.unwrap_or_default();
                if end {
                    // All in one piece: sent as it came when it has no ESI, with its length.
                    return assemble(session, resp, data, esi).await;
                }
                if data.is_empty() {
                    out = Some(Out::Header(resp));
                    continue;
                }
                out = Some(Out::Streaming(Box::new(
                    start_stream(session, resp, &data, max_bytes).await?,
                )));
            }
            (Some(Out::Streaming(mut stream)), HttpTask::Body(data, end)) => {
                if let Some(data) = data {
                    stream.received += data.len();
                    let next = stream.body.push(&data).map_err(not_inflated)?;
                    if !next.is_empty() {
                        session.write_response_body(Some(next), false).await?;
                    }
                }
                if end {
                    return finish_stream(session, stream.body, esi).await;
                }
                out = Some(Out::Streaming(stream));
            }
            (Some(Out::Held(resp, mut body)), HttpTask::Body(data, end)) => {
                if let Some(data) = data {
                    body.extend_from_slice(&data);
                }
                if body.len() > max_bytes {
                    // Too large to hold: it streams from here, its ESI up to max_bytes.
                    let stream = start_stream(session, resp, &body.freeze(), max_bytes).await?;
                    if end {
                        return finish_stream(session, stream.body, esi).await;
                    }
                    out = Some(Out::Streaming(Box::new(stream)));
                } else if end {
                    return assemble(session, resp, body.freeze(), esi).await;
                } else {
                    out = Some(Out::Held(resp, body));
                }
            }
            (Some(Out::Header(resp)), HttpTask::Done | HttpTask::Trailer(_)) => {
                return assemble(session, resp, Bytes::new(), esi).await;
            }
            (Some(Out::Held(resp, body)), HttpTask::Done | HttpTask::Trailer(_)) => {
                return assemble(session, resp, body.freeze(), esi).await;
            }
            (Some(Out::Streaming(stream)), HttpTask::Done | HttpTask::Trailer(_)) => {
                return finish_stream(session, stream.body, esi).await;
            }
            (_, HttpTask::Failed(e)) => return Err(e),
            (held, task) => {
                out = held;
                let end = task.is_end();
                session.write_response_tasks(vec![task]).await?;
                if end {
                    return Ok(());
                }
            }
        }
    }
    // The subrequest ends without a final task when it answered from an error path (a
    // busy page, say); a response whose length is complete is then whole.
    let declared = |resp: &ResponseHeader| {
        resp.headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
    };
    match out {
        Some(Out::Held(resp, body)) if declared(&resp) == Some(body.len()) => {
            return assemble(session, resp, body.freeze(), esi).await;
        }
        Some(Out::Header(resp)) if declared(&resp) == Some(0) => {
            return assemble(session, resp, Bytes::new(), esi).await;
        }
        Some(Out::Streaming(stream)) if stream.declared == Some(stream.received) => {
            return finish_stream(session, stream.body, esi).await;
        }
        // Cut short after its start left: the client sees it end unterminated.
        Some(_) => {}
        None if session.response_written().is_some() => {
            // Pingora checks the body against its length when it finishes the response.
            session.write_response_tasks(vec![HttpTask::Done]).await?;
            return Ok(());
        }
        None => {}
    }
    if let Ok(e) = handle.subreq_proxy_error.try_recv() {
        return Err(e);
    }
    Error::e_explain(
        ErrorType::ConnectionClosed,
        "the page's subrequest ended before its response did",
    )
}

/// A text response from the origin, on its way to the client.
enum Out {
    /// Its header, and nothing of its body yet.
    Header(Box<ResponseHeader>),
    /// Held whole until its end.
    Held(Box<ResponseHeader>, BytesMut),
    /// Its header and start have left.
    Streaming(Box<Stream>),
}

struct Stream {
    body: Streamed,
    /// The origin's Content-Length, if it gave one.
    declared: Option<usize>,
    received: usize,
}

/// Sends the header of a page that streams, readied for an assembly that may follow
/// (no length, no validator), and its first bytes.
async fn start_stream(
    session: &mut Session,
    mut resp: Box<ResponseHeader>,
    first: &Bytes,
    max_bytes: usize,
) -> Result<Stream> {
    let declared = resp
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let gzip_out = accepts_gzip(session.req_header());
    let mut body = Streamed::new(
        is_gzip(&resp.headers),
        gzip_out,
        PER_REQUEST_GZIP_LEVEL,
        max_bytes,
    );
    let out = body.push(first).map_err(not_inflated)?;
    prepare_assembled_header(&mut resp, gzip_out);
    session.write_response_header(resp, false).await?;
    if !out.is_empty() {
        session.write_response_body(Some(out), false).await?;
    }
    Ok(Stream {
        body,
        declared,
        received: first.len(),
    })
}

/// Ends a streamed page: its last bytes, or the assembly of its rest.
async fn finish_stream(session: &mut Session, body: Streamed, esi: &Settings<'_>) -> Result<()> {
    let (rest, mut stitcher) = match body.finish().map_err(not_inflated)? {
        End::Done(last) => {
            if !last.is_empty() {
                session.write_response_body(Some(last), false).await?;
            }
            return session.write_response_body(None, true).await;
        }
        End::Assemble { rest, stitcher } => (rest, stitcher),
    };
    let Some(template) = Template::parse(&rest, PER_REQUEST_GZIP_LEVEL) else {
        // A marker that turned out to be no ESI after all: the rest as it is.
        let last = match &mut stitcher {
            Some(gzip) => {
                let mut last = BytesMut::from(
                    &gzip.piece(&Piece::compress(&rest, PER_REQUEST_GZIP_LEVEL))[..],
                );
                last.extend_from_slice(&gzip.finish());
                last.freeze()
            }
            None => rest,
        };
        session.write_response_body(Some(last), false).await?;
        return session.write_response_body(None, true).await;
    };
    let Some(mut assembly) = Assembly::continuing(session, Arc::new(template), esi, stitcher).await
    else {
        return Error::e_explain(ErrorType::InternalError, "no subrequest spawner for ESI");
    };
    while let Some(chunk) = assembly.next_chunk().await {
        session.write_response_body(Some(chunk), false).await?;
    }
    session.write_response_body(None, true).await
}

fn not_inflated(e: std::io::Error) -> Box<Error> {
    let mut e = Error::because(
        ErrorType::ReadError,
        "the origin's gzip body does not inflate",
        e,
    );
    e.esource = pingora::ErrorSource::Upstream;
    e
}

async fn assemble(
    session: &mut Session,
    mut resp: Box<ResponseHeader>,
    body: Bytes,
    esi: &Settings<'_>,
) -> Result<()> {
    let Some(template) = template_of(&resp, &body, esi.max_bytes, PER_REQUEST_GZIP_LEVEL) else {
        if is_gzip(&resp.headers) && !accepts_gzip(session.req_header()) {
            // Stored gzipped, for a client without gzip: inflated on the way.
            let stream = start_stream(session, resp, &body, esi.max_bytes).await?;
            return finish_stream(session, stream.body, esi).await;
        }
        session
            .write_response_tasks(vec![
                HttpTask::Header(resp, false),
                HttpTask::Body(Some(body), true),
            ])
            .await?;
        return Ok(());
    };
    let Some(mut assembly) =
        Assembly::for_response(session, &mut resp, Arc::new(template), esi).await
    else {
        return Error::e_explain(ErrorType::InternalError, "no subrequest spawner for ESI");
    };
    session.write_response_header(resp, false).await?;
    while let Some(chunk) = assembly.next_chunk().await {
        session.write_response_body(Some(chunk), false).await?;
    }
    session.write_response_body(None, true).await
}
