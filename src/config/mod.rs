//! Floodgate's configuration: one TOML file whose defaults are Magento's defaults.
//!
//! `model` holds the shape and the defaults, `load` reads a file, applies command-line
//! overrides, parses and range-checks it. What the configuration describes (rules, ACLs,
//! priority classes, busy pages, the Redis client) is built once from it by
//! `proxy::Runtime::compile`, before a single socket is opened, so a typo stops the start
//! with a message that names the key instead of surfacing under load.
//!
//! Invariant: a leaf. Nothing here imports another Floodgate module.

mod load;
mod model;

pub use load::{
    invalid, load, read_token, ConfigError, Overrides, TokenError, MIN_RESPONSE_BUFFER_BYTES,
};
pub use model::*;
