//! A page that has to come from the origin (a miss, an expired page, a pass) reaches the
//! client through this wrapper: the request runs again as a subrequest, which fetches,
//! stores and coalesces it as usual, and its response is assembled here on the way out.
//!
//! Why a subrequest: Pingora's body filters are synchronous and cannot wait for a
//! fragment, while this function can. Its cost (one more pass through the request path)
//! is paid only when the origin is asked anyway; hits are assembled by the store.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::cache::NoCacheReason;
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::subrequest::Ctx as SubrequestCtx;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::cache::hit_for_miss::REASON_UNCACHEABLE;

use super::{applies_to, template_of, Assembly, Role, Settings, PER_REQUEST_GZIP_LEVEL};

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
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "no subrequest spawner for ESI");
    };
    let ctx = SubrequestCtx::builder()
        .user_ctx(Box::new(Role::Page {
            depth: esi.depth,
            arrived,
            budget: esi.budget.clone(),
            stale_only,
        }))
        .build();
    let (prepared, mut handle) = spawner.create_subrequest(session.as_downstream(), ctx);
    tokio::spawn(prepared.run());

    // A text response is held until complete: its template is only known then.
    let mut held: Option<(Box<ResponseHeader>, BytesMut)> = None;
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
        match (held.as_mut(), task) {
            (None, HttpTask::Header(resp, false))
                if resp.status != http::StatusCode::PARTIAL_CONTENT
                    && !resp.status.is_informational()
                    && applies_to(&resp) =>
            {
                held = Some((resp, BytesMut::new()));
            }
            (Some(_), HttpTask::Body(data, end)) => {
                let Some((resp, mut body)) = held.take() else {
                    continue;
                };
                if let Some(data) = data {
                    body.extend_from_slice(&data);
                }
                if body.len() > max_bytes {
                    // Too large to be a page: sent as it came, unprocessed.
                    session
                        .write_response_tasks(vec![
                            HttpTask::Header(resp, false),
                            HttpTask::Body(Some(body.freeze()), end),
                        ])
                        .await?;
                    if end {
                        return Ok(());
                    }
                } else if end {
                    return assemble(session, resp, body.freeze(), esi).await;
                } else {
                    held = Some((resp, body));
                }
            }
            (Some(_), HttpTask::Done | HttpTask::Trailer(_)) => {
                if let Some((resp, body)) = held.take() {
                    return assemble(session, resp, body.freeze(), esi).await;
                }
            }
            (_, HttpTask::Failed(e)) => return Err(e),
            (_, task) => {
                let end = task.is_end();
                session.write_response_tasks(vec![task]).await?;
                if end {
                    return Ok(());
                }
            }
        }
    }
    // The subrequest ends without a final task when it answered from an error path (a
    // busy page, say); a held response whose length is complete is then whole.
    if let Some((resp, body)) = held {
        let complete = resp
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            == Some(body.len());
        if complete {
            return assemble(session, resp, body.freeze(), esi).await;
        }
    } else if session.response_written().is_some() {
        // Pingora checks the body against its length when it finishes the response.
        session.write_response_tasks(vec![HttpTask::Done]).await?;
        return Ok(());
    }
    if let Ok(e) = handle.subreq_proxy_error.try_recv() {
        return Err(e);
    }
    Error::e_explain(
        ErrorType::ConnectionClosed,
        "the page's subrequest ended before its response did",
    )
}

async fn assemble(
    session: &mut Session,
    mut resp: Box<ResponseHeader>,
    body: Bytes,
    esi: &Settings<'_>,
) -> Result<()> {
    let Some(template) = template_of(&resp, &body, esi.max_bytes, PER_REQUEST_GZIP_LEVEL) else {
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
