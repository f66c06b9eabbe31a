//! The way to Magento: which origin gets a request, and whether any of them is healthy.

pub mod health;
pub mod origins;

pub use origins::Origins;
