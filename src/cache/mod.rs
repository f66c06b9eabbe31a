//! Where pages live: the in-memory store Pingora reads and fills, the tags each object
//! carries, and the hit-for-miss marks that keep uncacheable pages out of the coalescing
//! queue.

pub mod compact_header;
pub mod hit_for_miss;
pub mod store;
pub mod tags;

pub use compact_header::CompactHeader;
pub use hit_for_miss::HitForMissMarks;
pub use store::MemoryStore;
pub use tags::Tags;
