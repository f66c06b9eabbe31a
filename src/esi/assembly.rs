//! A template turned into the page's body, chunk by chunk, in order. Every include is
//! resolved before the first chunk leaves: a fragment the cache holds fresh is taken from
//! it at once, every other one is fetched as a subrequest, all of them concurrently, while
//! the chunks before them are already on their way to the client.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::proxy::subrequest::Ctx as SubrequestCtx;
use pingora::proxy::{Session, SubrequestSpawner};
use tokio::task::JoinHandle;

use super::fragment::{self, Role, Target};
use super::gzip::{Piece, PieceReader, Stitcher};
use super::metrics::{EsiMetrics, FragmentResult};
use super::template::{Include, Segment, Template};
use super::{accepts_gzip, prepare_assembled_header, ViewBudget, PER_REQUEST_GZIP_LEVEL};
use crate::cache::{BodySource, StoredObject};
use crate::config::EsiSection;

/// Fresh fragments straight from the cache. A fresh hit needs nothing of the request path
/// but its key and the store, so it skips the subrequest (a third of an ESI hit's cost);
/// everything else (misses, stale, passes) goes through the whole path.
#[async_trait]
pub trait FragmentCache: Send + Sync {
    /// The fresh stored object `req` would be served, if it can be spliced as it is.
    async fn fresh(&self, req: &RequestHeader) -> Option<Arc<StoredObject>>;
}

/// What a request brings to the assembly of its response.
pub struct Settings<'a> {
    /// How many includes deep the document is (a client's page is 0).
    pub depth: u8,
    pub config: &'a EsiSection,
    /// Largest fragment (and held page) accepted, bytes.
    pub max_bytes: usize,
    pub metrics: &'a Arc<EsiMetrics>,
    pub cache: &'a dyn FragmentCache,
    /// The page view's include budget, shared by every depth.
    pub budget: Arc<ViewBudget>,
    /// The visitor the page is for (behind trusted proxies, the one they name): every
    /// fetch made for it counts against that client's origin slots.
    pub client: Option<IpAddr>,
}

/// The including document: what its fragments are resolved against.
struct Page<'a> {
    /// The including request: fragments are copies of it, re-pointed at their URL.
    req: &'a RequestHeader,
    /// The visitor's address, when the including request has it.
    client: Option<IpAddr>,
    depth: u8,
    config: &'a EsiSection,
    max_bytes: usize,
    /// The client takes gzip: the page goes out as one stitched gzip stream.
    gzip: bool,
    metrics: &'a Arc<EsiMetrics>,
    budget: &'a Arc<ViewBudget>,
}

impl Page<'_> {
    fn page_path(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.req.raw_path())
    }

    fn left_out(&self, include: &Include, why: &str) -> Pending {
        tracing::debug!(src = %include.src, depth = self.depth + 1, "ESI include left out: {why}");
        self.budget.left_out(&include.src, why);
        self.metrics.fragment(FragmentResult::Failed);
        Pending::Ready(None)
    }
}

/// The most of a literal inflated into one chunk for a client without gzip.
const IDENTITY_CHUNK: usize = crate::cache::inflate::CHUNK;

/// A fetched fragment, in the page's encoding.
enum Chunk {
    Gzip(Piece),
    Identity(Bytes),
}

enum Pending {
    /// From the cache, or left out (`None`).
    Ready(Option<Chunk>),
    /// Being fetched as a subrequest.
    Running(JoinHandle<Option<Chunk>>),
}

/// The page, as one gzip stream (see `gzip`) or in identity.
pub struct Assembly {
    template: Arc<Template>,
    next: usize,
    /// One per include, in order.
    fragments: VecDeque<Pending>,
    /// `None` for identity.
    gzip: Option<Stitcher>,
    /// In identity: the literal being inflated, a stretch per chunk.
    literal: Option<PieceReader>,
    finished: bool,
}

impl Assembly {
    /// Readies `resp` to carry `template` assembled for the client of `session`, and
    /// starts the assembly; `None` when no body goes out (HEAD) or nothing can fetch.
    pub async fn for_response(
        session: &Session,
        resp: &mut ResponseHeader,
        template: Arc<Template>,
        settings: &Settings<'_>,
    ) -> Option<Assembly> {
        let req = session.req_header();
        let gzip = accepts_gzip(req);
        prepare_assembled_header(resp, gzip);
        if req.method == http::Method::HEAD {
            return None;
        }
        Self::continuing(session, template, settings, gzip.then(Stitcher::default)).await
    }

    /// Starts the assembly of `template` as the rest of a page whose start already left
    /// (`streaming`), continuing its gzip stream `gzip` (`None`: identity).
    pub async fn continuing(
        session: &Session,
        template: Arc<Template>,
        settings: &Settings<'_>,
        gzip: Option<Stitcher>,
    ) -> Option<Assembly> {
        let req = session.req_header();
        let spawner = session.subrequest_spawner.as_ref()?;
        let page = Page {
            req,
            client: settings.client,
            depth: settings.depth,
            config: settings.config,
            max_bytes: settings.max_bytes,
            gzip: gzip.is_some(),
            metrics: settings.metrics,
            budget: &settings.budget,
        };
        Some(Self::start(template, &page, settings.cache, spawner, gzip).await)
    }

    /// Resolves every include and starts what has to be fetched: each one is left out
    /// (limits, a bad `src`), taken fresh from the cache, or fetched as a subrequest
    /// through `spawner`, all concurrently.
    async fn start(
        template: Arc<Template>,
        page: &Page<'_>,
        cache: &dyn FragmentCache,
        spawner: &SubrequestSpawner,
        gzip: Option<Stitcher>,
    ) -> Assembly {
        let path = page.page_path();
        let mut fragments = VecDeque::with_capacity(template.include_count());
        for (nth, include) in template.includes().enumerate() {
            let pending = if nth >= page.config.max_fragments {
                page.left_out(
                    include,
                    &format!(
                        "more than esi.max_fragments ({}) in one document",
                        page.config.max_fragments
                    ),
                )
            } else if page.depth >= page.config.max_depth {
                page.left_out(
                    include,
                    &format!(
                        "nested deeper than esi.max_depth ({}); a fragment may include itself",
                        page.config.max_depth
                    ),
                )
            } else if !page.budget.take() {
                page.left_out(
                    include,
                    &format!(
                        "the page view used its esi.max_includes_per_view ({})",
                        page.config.max_includes_per_view
                    ),
                )
            } else {
                match Target::resolve(&include.src, &path) {
                    Err(why) => page.left_out(include, &why.to_string()),
                    Ok(target) => match cached(&target, page, cache).await {
                        Some(chunk) => {
                            page.metrics.fragment(FragmentResult::Cached);
                            Pending::Ready(Some(chunk))
                        }
                        None => fetch(&target, include, &path, page, spawner).await,
                    },
                }
            };
            fragments.push_back(pending);
        }
        Assembly {
            template,
            next: 0,
            fragments,
            gzip,
            literal: None,
            finished: false,
        }
    }

    /// The next stretch of the page: everything that is ready, in one chunk (one write
    /// to the client), up to a fragment still being fetched; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        self.next_stretch().await
    }

    async fn next_stretch(&mut self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        loop {
            // A literal inflated for a client without gzip goes out a bounded stretch
            // per chunk, so a slow client holds that much of it, not the whole page.
            if let Some(literal) = &mut self.literal {
                let room = IDENTITY_CHUNK.saturating_sub(out.len());
                if room == 0 {
                    return Some(out.freeze());
                }
                if !literal.read_into(&mut out, room) {
                    self.literal = None;
                }
                continue;
            }
            let Some(segment) = self.template.segments().get(self.next) else {
                if !self.finished {
                    self.finished = true;
                    if let Some(gzip) = &mut self.gzip {
                        out.extend_from_slice(&gzip.finish());
                    }
                }
                return (!out.is_empty()).then(|| out.freeze());
            };
            let chunk = match segment {
                Segment::Literal(piece) => {
                    self.next += 1;
                    match &mut self.gzip {
                        Some(gzip) => out.extend_from_slice(&gzip.piece(piece)),
                        None => self.literal = Some(PieceReader::new(piece)),
                    }
                    continue;
                }
                Segment::Include(_) => {
                    let waits = matches!(self.fragments.front(), Some(Pending::Running(_)));
                    if waits && !out.is_empty() {
                        // What comes before a fragment leaves before it is waited for.
                        return Some(out.freeze());
                    }
                    self.next += 1;
                    match self.fragments.pop_front() {
                        Some(Pending::Ready(chunk)) => chunk,
                        Some(Pending::Running(task)) => task.await.ok().flatten(),
                        None => None,
                    }
                }
            };
            match (chunk, &mut self.gzip) {
                (Some(Chunk::Gzip(piece)), Some(gzip)) => {
                    out.extend_from_slice(&gzip.piece(&piece))
                }
                (Some(Chunk::Identity(body)), None) => out.extend_from_slice(&body),
                _ => {}
            }
        }
    }
}

/// A hit on a page with ESI reads its body from the assembly.
#[async_trait]
impl BodySource for Assembly {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        self.next_stretch().await
    }
}

/// Starts the subrequest for one include (and its `alt`, tried if `src` fails).
async fn fetch(
    target: &Target,
    include: &Include,
    page_path: &str,
    page: &Page<'_>,
    spawner: &SubrequestSpawner,
) -> Pending {
    let prepare = |session: ServerSession| {
        let ctx = SubrequestCtx::builder()
            .user_ctx(Box::new(Role::Fragment {
                depth: page.depth + 1,
                budget: page.budget.clone(),
                client: page.client,
            }))
            .build();
        spawner.create_subrequest(&session, ctx)
    };
    let client = page.client;
    let Some(primary) = target.session(page.req, client).await.map(prepare) else {
        return page.left_out(include, "its request could not be built");
    };
    let alt = match include
        .alt
        .as_deref()
        .and_then(|alt| Target::resolve(alt, page_path).ok())
    {
        Some(alt) => alt.session(page.req, client).await.map(prepare),
        None => None,
    };
    let timeout = Duration::from_millis(page.config.fragment_timeout_ms);
    let (max_bytes, gzip) = (page.max_bytes, page.gzip);
    let metrics = page.metrics.clone();
    let budget = page.budget.clone();
    let include = include.clone();
    Pending::Running(tokio::spawn(async move {
        let mut result = fragment::fetch(primary.0, primary.1, timeout, max_bytes).await;
        if let (Err(_), Some(alt)) = (&result, alt) {
            result = fragment::fetch(alt.0, alt.1, timeout, max_bytes).await;
        }
        match result {
            Ok(fetched) => {
                metrics.fragment(if fetched.cached {
                    FragmentResult::Cached
                } else {
                    FragmentResult::Fetched
                });
                // Compressed here, in the fetch's own task, while the page waits for
                // earlier pieces.
                let body = fetched.body;
                (!body.is_empty()).then(|| {
                    if gzip {
                        Chunk::Gzip(Piece::compress(&body, PER_REQUEST_GZIP_LEVEL))
                    } else {
                        Chunk::Identity(body)
                    }
                })
            }
            Err(why) => {
                metrics.fragment(FragmentResult::Failed);
                // Without onerror="continue" the ESI spec would fail the page; a shop
                // page without its menu beats an error page, so it is left out either
                // way, and said louder.
                tracing::debug!(src = %include.src, continue_on_error = include.continue_on_error, "ESI fragment left out: {why}");
                if !include.continue_on_error {
                    budget.left_out(&include.src, &why.to_string());
                }
                None
            }
        }
    }))
}

/// `object` as a piece of other pages, or `None` when it cannot be spliced as it is: an
/// error status, a body past `max_bytes`, or includes of its own (those are assembled by
/// a request of its own). Kept with the object (`memo`): compressed once.
fn splice_piece(object: &StoredObject, max_bytes: usize) -> Option<Piece> {
    if object.derived.is_some() {
        return None;
    }
    let header = object.header.unpack().ok()?;
    if !header.status.is_success() {
        return None;
    }
    let body = if super::is_gzip(&header.headers) {
        super::gunzip(&object.body, max_bytes).ok()?
    } else if object.body.len() <= max_bytes {
        object.body.clone()
    } else {
        return None;
    };
    Some(Piece::compress(&body, super::TEMPLATE_GZIP_LEVEL))
}

/// A fresh cached copy of the fragment `target`, in the page's encoding.
async fn cached(target: &Target, page: &Page<'_>, cache: &dyn FragmentCache) -> Option<Chunk> {
    let mut req = page.req.clone();
    target.rewrite(&mut req).ok()?;
    let object = cache.fresh(&req).await?;
    let max_bytes = page.max_bytes;
    let piece = object.memo(|object| splice_piece(object, max_bytes))?;
    Some(if page.gzip {
        Chunk::Gzip(piece.clone())
    } else {
        Chunk::Identity(piece.inflate())
    })
}
