//! The pages a visitor gets when the origin cannot take the request: "we are busy" when
//! shedding or when the origin is down, and the maintenance page. Floodgate answers them
//! itself with 503 and `Retry-After`, so browsers retry and search engines do not index them.

use bytes::Bytes;

use crate::config::{invalid, ConfigError, LimitsSection};

const BUSY: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="10"><title>One moment, please</title>
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:15vh auto;padding:0 1em;color:#333}</style></head>
<body><h1>We are a little busy right now</h1>
<p>So many people are shopping with us at the moment that this page could not be prepared in time.
Your basket is safe. This page will try again by itself in a few seconds.</p></body></html>
"#;

const MAINTENANCE: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="30"><title>Back soon</title>
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:15vh auto;padding:0 1em;color:#333}</style></head>
<body><h1>We will be back soon</h1>
<p>The shop is being updated. Please come back in a few minutes.</p></body></html>
"#;

#[derive(Clone)]
pub struct ShedPages {
    pub busy: Bytes,
    pub maintenance: Bytes,
    pub retry_after: String,
}

impl ShedPages {
    /// Reads the configured pages; an error names the key and the file.
    pub fn load(config: &LimitsSection) -> Result<Self, ConfigError> {
        let read = |key: &str, path: &str, builtin: &'static str| -> Result<Bytes, ConfigError> {
            if path.is_empty() {
                return Ok(Bytes::from_static(builtin.as_bytes()));
            }
            std::fs::read(path)
                .map(Bytes::from)
                .map_err(|e| invalid(key, format!("cannot read {path}: {e}")))
        };
        Ok(Self {
            busy: read("limits.busy_page", &config.busy_page, BUSY)?,
            maintenance: read(
                "limits.maintenance_page",
                &config.maintenance_page,
                MAINTENANCE,
            )?,
            retry_after: config.retry_after_secs.to_string(),
        })
    }
}
