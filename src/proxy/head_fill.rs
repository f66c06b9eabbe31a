//! A HEAD that misses is answered from a GET of the same page, made as a subrequest and
//! read to its end, so that the GET which follows a HEAD is a hit.
//!
//! Invariant: the HEAD's client gets the GET's header and nothing else; the GET runs
//! through the whole request path (its key, its cache lock, its origin slot) as the
//! visitor's own GET would, and it is the one counted and logged.
//!
//! Why: Pingora fetches a HEAD miss as GET, but ends the fill with the HEAD's answer,
//! which leaves before the body is read: the GET right behind it found the page half
//! stored, a miss in one run and a hit in the next (Varnish's HEAD leaves a stored page).

use std::net::IpAddr;
use std::time::Instant;

use pingora::protocols::http::HttpTask;
use pingora::proxy::subrequest::Ctx as SubrequestCtx;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use crate::esi::fragment::replay;

/// Marks the GET subrequest of a HEAD; travels in Pingora's subrequest context.
#[derive(Debug, Clone, Copy)]
pub struct HeadFill {
    /// When the HEAD arrived.
    pub arrived: Instant,
    /// The HEAD came over TLS.
    pub tls: bool,
    /// The HEAD's client: the GET takes that client's origin slot.
    pub client: Option<IpAddr>,
}

/// Answers the HEAD of `session` from a GET subrequest, and returns once that GET's body
/// has been read (and stored, if it is cacheable).
pub async fn serve(
    session: &mut Session,
    arrived: Instant,
    client: Option<IpAddr>,
    tls: bool,
) -> Result<()> {
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Error::e_explain(ErrorType::InternalError, "no subrequest spawner for a HEAD");
    };
    let mut req = session.req_header().clone();
    req.set_method(http::Method::GET);
    let path = req.raw_path().to_vec();
    let Some(get) = replay(req, &path, client).await else {
        return Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            "the HEAD could not be replayed as a GET",
        );
    };
    let ctx = SubrequestCtx::builder()
        .user_ctx(Box::new(HeadFill {
            arrived,
            tls,
            client,
        }))
        .build();
    let (prepared, mut handle) = spawner.create_subrequest(&get, ctx);
    tokio::spawn(prepared.run());
    let mut answered = false;
    while let Some(task) = handle.rx.recv().await {
        match task {
            HttpTask::Header(resp, _) if !answered => {
                answered = true;
                session
                    .write_response_tasks(vec![HttpTask::Header(resp, true)])
                    .await?;
            }
            HttpTask::Failed(e) if !answered => return Err(e),
            task if task.is_end() => break,
            // The body goes to the cache, in the subrequest; the HEAD has none.
            _ => {}
        }
    }
    if answered {
        return Ok(());
    }
    if let Ok(e) = handle.subreq_proxy_error.try_recv() {
        return Err(e);
    }
    Error::e_explain(
        ErrorType::ConnectionClosed,
        "the GET made for a HEAD ended before its header",
    )
}
