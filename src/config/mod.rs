//! Floodgate's configuration: one TOML file whose defaults are Magento's defaults.
//!
//! `model` holds the shape and the defaults, `load` reads a file, applies command-line
//! overrides and validates everything before a single socket is opened, so a typo stops
//! the start with a message that names the key instead of surfacing under load.

mod load;
mod model;

pub use load::{load, read_token, ConfigError, Overrides};
pub use model::*;
