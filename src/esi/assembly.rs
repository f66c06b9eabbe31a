//! A template turned into the page's body, chunk by chunk, in order. Every include's
//! fetch starts at once, so fragments load concurrently while the chunks before them are
//! already on their way to the client.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::protocols::http::subrequest::server::SubrequestHandle;
use pingora::protocols::http::ServerSession;
use pingora::proxy::subrequest::Ctx as SubrequestCtx;
use pingora::proxy::{PreparedSubrequest, SubrequestSpawner};
use tokio::task::JoinHandle;

use super::fragment::{self, Role, Target};
use super::template::{Include, Segment, Template};
use crate::config::EsiSection;
use crate::metrics::{FragmentResult, Metrics};

/// What starting a page's fragments needs from the request that includes them.
pub struct Fetcher<'a> {
    /// The including request: fragments are copies of it, re-pointed at their URL.
    pub session: &'a ServerSession,
    pub spawner: &'a SubrequestSpawner,
    /// The including document's path, for relative `src`.
    pub page_path: &'a str,
    /// How many includes deep the including document is (a client's page is 0).
    pub depth: u8,
    pub config: &'a EsiSection,
    /// Largest fragment accepted, bytes.
    pub max_bytes: usize,
    pub metrics: &'a Arc<Metrics>,
}

type Subrequest = (PreparedSubrequest, SubrequestHandle);

impl Fetcher<'_> {
    fn prepare(&self, src: &str) -> Result<Subrequest, String> {
        let target = Target::resolve(src, self.page_path, self.depth + 1)?;
        let ctx = SubrequestCtx::builder()
            .user_ctx(Box::new(Role::Fragment(target)))
            .build();
        Ok(self.spawner.create_subrequest(self.session, ctx))
    }

    /// Starts one include's fetch; `None` when it is left out from the start.
    fn start(&self, include: &Include, nth: usize) -> Option<JoinHandle<Option<Bytes>>> {
        let refuse = |why: String| {
            tracing::warn!(src = %include.src, depth = self.depth + 1, "ESI include left out: {why}");
            self.metrics.esi_fragment(FragmentResult::Failed);
            None
        };
        if nth >= self.config.max_fragments {
            return refuse(format!(
                "more than esi.max_fragments ({}) in one document",
                self.config.max_fragments
            ));
        }
        if self.depth >= self.config.max_depth {
            return refuse(format!(
                "nested deeper than esi.max_depth ({}); a fragment may include itself",
                self.config.max_depth
            ));
        }
        let primary = match self.prepare(&include.src) {
            Ok(primary) => primary,
            Err(why) => return refuse(why),
        };
        let alt = include
            .alt
            .as_deref()
            .and_then(|alt| self.prepare(alt).ok());
        let timeout = Duration::from_millis(self.config.fragment_timeout_ms);
        let max_bytes = self.max_bytes;
        let metrics = self.metrics.clone();
        let src = include.src.clone();
        let loud = !include.continue_on_error;
        Some(tokio::spawn(async move {
            let mut result = fragment::fetch(primary.0, primary.1, timeout, max_bytes).await;
            if let (Err(_), Some(alt)) = (&result, alt) {
                result = fragment::fetch(alt.0, alt.1, timeout, max_bytes).await;
            }
            match result {
                Ok(fetched) => {
                    metrics.esi_fragment(if fetched.cached {
                        FragmentResult::Cached
                    } else {
                        FragmentResult::Fetched
                    });
                    Some(fetched.body)
                }
                Err(why) => {
                    metrics.esi_fragment(FragmentResult::Failed);
                    // Without onerror="continue" the ESI spec would fail the page; a shop
                    // page without its menu beats an error page, so it is left out either
                    // way, and said louder.
                    if loud {
                        tracing::warn!(%src, "ESI fragment left out of the page: {why}");
                    } else {
                        tracing::info!(%src, "ESI fragment left out (onerror=continue): {why}");
                    }
                    None
                }
            }
        }))
    }
}

pub struct Assembly {
    template: Arc<Template>,
    next: usize,
    /// One per include, in order; `None` for those left out.
    fetches: VecDeque<Option<JoinHandle<Option<Bytes>>>>,
}

impl Assembly {
    /// Starts every include's fetch.
    pub fn start(template: Arc<Template>, fetcher: &Fetcher<'_>) -> Self {
        let fetches = template
            .includes()
            .enumerate()
            .map(|(nth, include)| fetcher.start(include, nth))
            .collect();
        Self {
            template,
            next: 0,
            fetches,
        }
    }

    /// The next piece of the page; `None` at its end.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let segment = self.template.segments().get(self.next)?;
            self.next += 1;
            match segment {
                Segment::Literal(bytes) => return Some(bytes.clone()),
                Segment::Include(_) => {
                    let fetch = self.fetches.pop_front().flatten();
                    if let Some(fetch) = fetch {
                        if let Ok(Some(body)) = fetch.await {
                            if !body.is_empty() {
                                return Some(body);
                            }
                        }
                    }
                }
            }
        }
    }
}
