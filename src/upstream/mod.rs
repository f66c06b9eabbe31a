//! The way to Magento: which origin gets a request, when (the limiter and its priority
//! classes), and what the visitor gets when it cannot be now (the shed pages).

pub mod adaptive;
pub mod classes;
pub mod discovery;
pub mod fleet;
pub mod health;
pub mod limiter;
pub mod metrics;
pub mod origins;
pub mod pages;
pub mod per_client;
pub mod shed_fanout;

pub use classes::{ClassId, Classes};
pub use limiter::Shed;
pub use origins::{Origins, StaleReason};
pub use pages::ShedPages;
pub use per_client::{ClientPermit, ClientSlots};
pub use shed_fanout::ShedFanout;
