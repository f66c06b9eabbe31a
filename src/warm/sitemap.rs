//! `floodgate warm --sitemap`: fill the cache from a Magento `sitemap.xml` before an event.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use quick_xml::events::Event;
use quick_xml::Reader;
use tokio::sync::Semaphore;

use super::metrics::WarmResult;
use super::worker::fetch;
use crate::cache::RequestIdentity;

/// How a warm run went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub fetched: usize,
    pub already_warm: usize,
    pub failed: usize,
}

/// What is wrong with a sitemap or one of its URLs.
#[derive(Debug, thiserror::Error)]
pub enum SitemapError {
    #[error("bad text in <loc>: {0}")]
    BadText(String),
    #[error("sitemap is not valid XML at byte {at}: {reason}")]
    NotXml { at: u64, reason: String },
    #[error("`{loc}` is not a URL: {reason}")]
    NotUrl { loc: String, reason: String },
    #[error("`{0}` has no host")]
    NoHost(String),
}

/// Every `<loc>` of a sitemap or sitemap index, in order.
pub fn locations(xml: &str) -> Result<Vec<String>, SitemapError> {
    let mut reader = Reader::from_str(xml);
    let mut in_loc = false;
    let mut locs = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"loc" => in_loc = true,
            Ok(Event::End(e)) if e.local_name().as_ref() == b"loc" => in_loc = false,
            Ok(Event::Text(text)) if in_loc => {
                let loc = text
                    .unescape()
                    .map_err(|e| SitemapError::BadText(e.to_string()))?;
                locs.push(loc.trim().to_string());
            }
            Ok(Event::Eof) => return Ok(locs),
            Err(e) => {
                return Err(SitemapError::NotXml {
                    at: reader.buffer_position(),
                    reason: e.to_string(),
                })
            }
            _ => {}
        }
    }
}

/// Whether the document is a sitemap index (its `<loc>`s are further sitemaps).
pub fn is_index(xml: &str) -> bool {
    xml.contains("<sitemapindex")
}

/// The request a visitor of `loc` makes: its path, its Host, and the SSL-offload header
/// the TLS terminator would add for an `https` URL (it is part of the cache key).
pub fn identity(loc: &str, offload_header: &str) -> Result<RequestIdentity, SitemapError> {
    let uri: http::Uri = loc
        .parse()
        .map_err(|e: http::uri::InvalidUri| SitemapError::NotUrl {
            loc: loc.to_string(),
            reason: e.to_string(),
        })?;
    let host = uri
        .authority()
        .ok_or_else(|| SitemapError::NoHost(loc.to_string()))?
        .to_string();
    let url = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
    let mut headers = vec![("host".to_string(), host)];
    if uri.scheme_str() == Some("https") {
        headers.push((offload_header.to_string(), "https".to_string()));
    }
    Ok(RequestIdentity::new(url, headers))
}

/// Requests every page through Floodgate at `target`, at most `rate` per second and
/// `concurrency` at once, with a progress bar on stderr.
pub async fn warm(
    client: &reqwest::Client,
    target: &str,
    pages: Vec<RequestIdentity>,
    rate: f64,
    concurrency: usize,
    progress: bool,
) -> Summary {
    let bar = if progress {
        let bar = ProgressBar::new(pages.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} pages, {per_sec}, eta {eta} {msg}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::with_capacity(pages.len());
    for page in pages {
        pace.tick().await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (client, target, bar) = (client.clone(), target.to_string(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let result = fetch(&client, &target, &page).await;
            bar.inc(1);
            drop(slot);
            result
        }));
    }
    let mut summary = Summary::default();
    for task in tasks {
        match task.await {
            Ok(WarmResult::Fetched) => summary.fetched += 1,
            Ok(WarmResult::AlreadyWarm) => summary.already_warm += 1,
            Ok(WarmResult::Failed) | Err(_) => summary.failed += 1,
        }
    }
    bar.finish_and_clear();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_locations_of_sitemaps_and_indexes() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>https://shop.test/a.html</loc><lastmod>2026-01-01</lastmod></url>
  <url><loc> https://shop.test/b.html?x=1&amp;y=2 </loc></url>
</urlset>"#;
        assert_eq!(
            locations(xml).unwrap(),
            vec![
                "https://shop.test/a.html",
                "https://shop.test/b.html?x=1&y=2"
            ]
        );
        assert!(!is_index(xml));
        let index = r#"<sitemapindex><sitemap><loc>https://shop.test/s1.xml</loc></sitemap></sitemapindex>"#;
        assert!(is_index(index));
        assert_eq!(locations(index).unwrap(), vec!["https://shop.test/s1.xml"]);
        assert!(locations("<urlset><url><loc>x</url>").is_err());
    }

    #[test]
    fn https_locations_carry_the_offload_header() {
        let page = identity("https://shop.test/p.html?a=1", "X-Forwarded-Proto").unwrap();
        assert_eq!(&*page.url, "/p.html?a=1");
        assert!(page.headers.contains(&("host".into(), "shop.test".into())));
        assert!(page
            .headers
            .contains(&("X-Forwarded-Proto".into(), "https".into())));
        let plain = identity("http://shop.test/", "X-Forwarded-Proto").unwrap();
        assert_eq!(plain.headers.len(), 1);
    }
}
