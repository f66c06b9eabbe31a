//! Where pages live: the in-memory store Pingora reads and fills, the tags each object
//! carries and the index from tag to objects, the memory of recent purges, and the
//! hit-for-miss marks that keep uncacheable pages out of the coalescing queue.
//!
//! Invariant: below ESI and the proxy. What they need of a stored body plugs in through
//! `derived` (traits this module owns); nothing here imports them.

pub mod body;
pub mod compact_header;
pub mod derived;
pub mod disk;
pub mod hit;
pub mod hit_for_miss;
pub mod identity;
mod index_cleanup;
pub mod inflate;
mod interner;
pub mod metrics;
mod miss;
pub mod object;
mod object_map;
pub mod recent_purges;
pub mod removals;
pub mod selector;
pub mod shared_tier;
pub mod store;
pub mod tag_index;
pub mod tags;
pub mod variants;
pub mod wire;

pub use compact_header::CompactHeader;
pub use derived::{BodySource, Derive, Derived, Deriver};
pub use hit::StoredHit;
pub use hit_for_miss::HitForMissMarks;
pub use identity::RequestIdentity;
pub use object::{FetchStarted, Servable, StoredObject, VisitorFetch, PURGED_COPY_HEADER};
pub use removals::Removal;
pub use selector::TagSelector;
pub use store::MemoryStore;
pub use tags::Tags;
pub use variants::{VariantVerdict, Variants};

/// The hasher of the maps a hit or a purge goes through (the store, the tag index, the
/// re-warm queue, removals, recent purges): keyed per process like std's SipHash, so a
/// visitor who picks URLs cannot pile keys into one bucket, and several times faster on
/// short keys (SipHash was about a fifth of a purge's time in the profile).
pub type FastHasher = foldhash::fast::RandomState;
