//! Keeping hot pages warm: purged pages that visitors were asking for are fetched again
//! in the background, and `floodgate warm --sitemap` fills a catalogue before an event.
//! With a fleet, each purged page is re-warmed by one node (`claims`).

pub mod claims;
pub mod metrics;
mod queue;
pub mod sitemap;
pub mod worker;

pub use queue::WarmQueue;
pub use worker::Warmer;
