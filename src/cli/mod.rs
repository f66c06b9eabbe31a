//! The operator's commands that talk to a running Floodgate: `floodgate purge` (as
//! Magento does, with PURGE, or through the admin API: `admin`), `floodgate warm` and
//! `floodgate maintenance`, and `floodgate top`, the live view.
//!
//! Invariant: the top of the dependency order, beside the binary. It speaks HTTP to a
//! running process and holds no state of its own; nothing in the library imports it.

pub mod admin;
pub mod top;

use std::time::Duration;

pub use crate::purge::pattern::magento_pattern;
use crate::warm::sitemap::{self, Summary};

/// The CLI's HTTP client: no proxy from the environment, a minute per request.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build an HTTP client: {e}"))
}

/// Sends one PURGE; returns Floodgate's status and answer.
pub async fn purge(
    target: &str,
    pattern: Option<&str>,
    pool: Option<&str>,
    soft: bool,
) -> anyhow::Result<(u16, String)> {
    let method = reqwest::Method::from_bytes(b"PURGE").map_err(anyhow::Error::from)?;
    let mut request = client()?.request(method, format!("{target}/"));
    if let Some(pattern) = pattern {
        request = request.header("X-Magento-Tags-Pattern", pattern);
    }
    if let Some(pool) = pool {
        request = request.header("X-Pool", pool);
    }
    if soft {
        request = request.header("X-Floodgate-Purge", "soft");
    }
    let response = request
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach Floodgate at {target}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Ok((status, body))
}

/// Loads a sitemap from a file, or from a URL through Floodgate itself (so an `https`
/// shop needs no TLS here), following one level of sitemap index.
async fn load(client: &reqwest::Client, target: &str, source: &str) -> anyhow::Result<String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let page = sitemap::identity(source, "X-Forwarded-Proto").map_err(anyhow::Error::from)?;
        let mut request = client.get(format!("{target}{}", page.url));
        for (name, value) in page.headers.iter() {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot fetch {source} through {target}: {e}"))?;
        if !response.status().is_success() {
            return Err(anyhow::anyhow!("{source}: {}", response.status()));
        }
        response
            .text()
            .await
            .map_err(|e| anyhow::anyhow!("{source}: {e}"))
    } else {
        std::fs::read_to_string(source).map_err(|e| anyhow::anyhow!("cannot read {source}: {e}"))
    }
}

/// `floodgate warm --sitemap`: every page of the sitemap, once, at `rate` per second.
pub async fn warm(
    target: &str,
    source: &str,
    rate: f64,
    concurrency: usize,
    offload_header: &str,
) -> anyhow::Result<Summary> {
    if rate.is_nan() || rate <= 0.0 {
        anyhow::bail!("--rate must be above 0");
    }
    let client = client()?;
    let xml = load(&client, target, source).await?;
    let mut locations = Vec::new();
    if sitemap::is_index(&xml) {
        for child in sitemap::locations(&xml).map_err(anyhow::Error::from)? {
            let xml = load(&client, target, &child).await?;
            locations.extend(sitemap::locations(&xml).map_err(anyhow::Error::from)?);
        }
    } else {
        locations = sitemap::locations(&xml).map_err(anyhow::Error::from)?;
    }
    let pages = locations
        .iter()
        .map(|loc| sitemap::identity(loc, offload_header))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::from)?;
    eprintln!(
        "warming {} pages from {source} through {target} at {rate}/s",
        pages.len()
    );
    Ok(sitemap::warm(&client, target, pages, rate, concurrency, true).await)
}
