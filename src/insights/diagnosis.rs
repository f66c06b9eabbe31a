//! The report read for the person on call: what stands out in the window, in words, with
//! the advice that follows from it. Each rule names its evidence (a count, a path, a tag)
//! so the advice can be checked, and says nothing below its threshold: a quiet shop gets
//! one line, not noise.

use super::Report;

/// Fewer lookups than this in the window and shares are not judged.
const MIN_LOOKUPS: u64 = 20;
/// A share of lookups (uncacheable, or a miss reason) worth a word, percent.
const NOTABLE_SHARE: f64 = 5.0;
/// A parameter with at least this many values on one path splits the cache.
const SPLITTING_VALUES: u64 = 20;
/// A tag purged this often in the window is purged by something automatic.
const REPEATED_PURGES: u64 = 5;

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn count_of(list: &[(&'static str, u64)], label: &str) -> u64 {
    list.iter()
        .find(|(l, _)| *l == label)
        .map_or(0, |(_, n)| *n)
}

fn minutes(secs: u64) -> String {
    if secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// Advice for the main reason pages are not stored.
fn uncacheable_advice(reason: &str) -> &'static str {
    match reason {
        "private" => "the origin answers `Cache-Control: private`; look for a layout block with cacheable=\"false\" on those pages (one such block makes the whole page uncacheable)",
        "no_store" => "the origin answers `no-cache`/`no-store`; a module or the web server in front of PHP sets it, Magento sends `public` for cacheable pages",
        "ttl_zero" => "the origin answers `max-age=0` or an `Expires` in the past; check the Full Page Cache TTL (Stores > Configuration > Advanced > System) and modules that change it",
        "status" => "the origin answers errors (404, 5xx) or statuses a shared cache does not keep; fix the links or the errors, each is asked again after its hit-for-miss mark expires",
        "sets_vary_cookie" => "the page sets `X-Magento-Vary` for visitors who did not send it; a module changes the customer context (currency, store, customer group) on a GET",
        "graphql_id_mismatch" => "GraphQL answers carry another `X-Magento-Cache-Id` than the request; the storefront sends a stale id, or a module changes the context",
        "vary" => "the origin answers `Vary: *` or varies on the visitor's credentials",
        "variants" => "the page's `Vary` keeps changing, or it has `cache.max_variants` variants already",
        _ => "",
    }
}

pub fn diagnose(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let window = minutes(report.window_secs);
    let r = &report.reasons;
    if !report.enabled {
        out.push("insights.enabled is off: the reasons are counted in /metrics, the top lists are not kept.".into());
        return out;
    }
    if r.lookups < MIN_LOOKUPS {
        out.push(format!(
            "Too little traffic in the last {window} to judge ({} cacheable requests).",
            r.lookups
        ));
    } else {
        out.push(format!(
            "Hit ratio over the last {window}: {:.1} % of {} cacheable requests.",
            percent(r.hits, r.lookups),
            r.lookups
        ));
        let uncacheable: u64 = r.uncacheable.iter().map(|(_, n)| n).sum();
        let share = percent(uncacheable, r.lookups);
        if share >= NOTABLE_SHARE {
            if let Some((reason, n)) = r.uncacheable.first().filter(|(_, n)| *n > 0) {
                let example = report
                    .top
                    .uncacheable
                    .iter()
                    .find(|p| p.reason == *reason)
                    .map(|p| format!(" (most: {}, {} times)", p.path, p.count))
                    .unwrap_or_default();
                out.push(format!(
                    "{share:.0} % of cacheable requests were not cacheable, {n} of them because {}{example}.",
                    uncacheable_advice(reason)
                ));
            }
        }
        let evicted = count_of(&r.miss, "evicted");
        if percent(evicted, r.lookups) >= NOTABLE_SHARE {
            out.push(format!(
                "{evicted} misses ({:.0} % of cacheable requests) were pages evicted to make room: raise cache.memory_bytes, or set cache.disk_dir to keep more pages.",
                percent(evicted, r.lookups)
            ));
        }
        let after_purge = report
            .top
            .misses_after_purge
            .first()
            .map(|t| format!(" (most after purges of `{}`: {} misses)", t.tag, t.misses))
            .unwrap_or_default();
        // The other miss reasons, each with what to do when it is a notable share.
        let advice = [
            ("expired", "misses were pages past their TTL and grace: a longer TTL (Magento's Full Page Cache TTL) or cache.grace_secs keeps them served while they refresh.".to_string()),
            ("purged", format!("misses followed purges{after_purge}: the re-warmer (warm.enabled) refetches hot pages after a purge.")),
            ("hit_for_miss", "requests went past the cache because their page's last answer was uncacheable (hit-for-miss); see the uncacheable paths.".to_string()),
        ];
        for (reason, what) in advice {
            let n = count_of(&r.miss, reason);
            if percent(n, r.lookups) >= NOTABLE_SHARE {
                out.push(format!("{n} {what}"));
            }
        }
    }
    for p in report
        .top
        .splitting_params
        .iter()
        .filter(|p| p.distinct_values >= SPLITTING_VALUES)
        .take(3)
    {
        out.push(format!(
            "The parameter `{}` splits {} into about {} cache entries ({} misses in the last {window}): if the page does not depend on it, add it to magento.marketing_params.",
            p.param, p.path, p.distinct_values, p.misses
        ));
    }
    for t in report
        .top
        .purged_tags
        .iter()
        .filter(|t| t.purges >= REPEATED_PURGES)
        .take(3)
    {
        out.push(format!(
            "The tag `{}` was purged {} times in the last {window}, {} objects each: something saves it again and again (an indexer on \"Update on Save\", a cron, an import); switch indexers to \"Update by Schedule\" or find what saves it.",
            t.tag, t.purges, t.objects_per_purge
        ));
    }
    if report.now.shed_per_sec > 0.0 {
        out.push(format!(
            "The origin is shedding {:.1} requests/s: visitors get stale pages or the busy page. Raise origin slots only if PHP-FPM has workers to spare.",
            report.now.shed_per_sec
        ));
    }
    if let Some(slow) = report.top.slowest_origin.first().filter(|s| s.fetches > 0) {
        out.push(format!(
            "The origin spent most of its time on {}: {} fetches, {} ms on average, {} ms at most.",
            slow.path, slow.fetches, slow.avg_ms, slow.max_ms
        ));
    }
    if out.len() == 1 && r.lookups >= MIN_LOOKUPS {
        out.push("Nothing else stands out.".into());
    }
    out
}
