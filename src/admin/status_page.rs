//! `GET /` on the admin listener: one self-contained HTML page (no script, no external
//! asset, so it works on a machine without Internet and under a strict CSP) with the
//! history's hit ratio, traffic by outcome and origin load drawn as inline SVG, the
//! diagnosis and the top lists. It reloads itself every 5 seconds.
//!
//! Invariant: every text that came from traffic (paths, tags, parameters) is escaped:
//! a visitor chooses URLs, and this page is read by the operator's browser.

use std::fmt::Write;

use crate::insights::samples::{Gauges, Sample};
use crate::insights::Report;

/// Points per chart at most (the history is bucketed to fit).
pub const POINTS: usize = 360;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 140.0;

/// The outcomes stacked in the traffic chart, bottom up, with their colours.
const STACK: [(usize, &str, &str); 6] = [
    (0, "hit", "#2a9d8f"),
    (1, "stale", "#8ab17d"),
    (2, "miss", "#e9c46a"),
    (3, "uncacheable", "#f4a261"),
    (4, "pass", "#a0a0a0"),
    (7, "shed", "#e76f51"),
];

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn x(i: usize, n: usize) -> f64 {
    if n <= 1 {
        WIDTH
    } else {
        i as f64 * WIDTH / (n - 1) as f64
    }
}

fn y(value: f64, max: f64) -> f64 {
    if max <= 0.0 {
        HEIGHT
    } else {
        HEIGHT - (value / max).clamp(0.0, 1.0) * HEIGHT
    }
}

fn polyline(points: &[(f64, f64)], colour: &str, dashed: bool) -> String {
    let mut d = String::new();
    for (px, py) in points {
        let _ = write!(d, "{px:.1},{py:.1} ");
    }
    format!(
        r##"<polyline fill="none" stroke="{colour}" stroke-width="2"{} points="{d}"/>"##,
        if dashed {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        }
    )
}

fn chart(title: &str, legend: &str, body: &str, top_label: &str) -> String {
    format!(
        r##"<section class="chart"><h2>{title}</h2><div class="legend">{legend}</div>
<svg viewBox="-64 -10 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{title}">
<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fafafa" stroke="#ddd"/>
<text x="-6" y="8" text-anchor="end" font-size="10">{top_label}</text>
<text x="-6" y="{HEIGHT}" text-anchor="end" font-size="10">0</text>
{body}</svg></section>"##,
        w = WIDTH + 74.0,
        h = HEIGHT + 20.0,
    )
}

fn swatch(name: &str, colour: &str) -> String {
    format!(r##"<span><i style="background:{colour}"></i>{name}</span>"##)
}

fn hit_ratio_chart(samples: &[Sample]) -> String {
    let n = samples.len();
    let points: Vec<(f64, f64)> = samples
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let (served, lookups) = s.lookups();
            (lookups > 0).then(|| (x(i, n), y(served as f64 / lookups as f64, 1.0)))
        })
        .collect();
    chart(
        "Hit ratio",
        &swatch("hit or stale, of cacheable requests", "#264653"),
        &polyline(&points, "#264653", false),
        "100 %",
    )
}

fn traffic_chart(samples: &[Sample]) -> String {
    let n = samples.len();
    let total = |s: &Sample| {
        STACK
            .iter()
            .map(|(i, _, _)| f64::from(s.outcomes[*i]))
            .sum::<f64>()
    };
    let max = samples.iter().map(total).fold(0.0, f64::max);
    let mut body = String::new();
    let mut below = vec![0.0; n];
    for (index, _, colour) in STACK {
        let above: Vec<f64> = samples
            .iter()
            .zip(&below)
            .map(|(s, b)| b + f64::from(s.outcomes[index]))
            .collect();
        if above.iter().zip(&below).all(|(a, b)| a == b) {
            continue;
        }
        // An area: along the top of this layer, back along the top of the one below.
        let mut d = String::new();
        for (i, v) in above.iter().enumerate() {
            let _ = write!(d, "{:.1},{:.1} ", x(i, n), y(*v, max));
        }
        for (i, v) in below.iter().enumerate().rev() {
            let _ = write!(d, "{:.1},{:.1} ", x(i, n), y(*v, max));
        }
        let _ = write!(
            body,
            r##"<polygon fill="{colour}" stroke="{colour}" points="{d}"/>"##
        );
        below = above;
    }
    let legend: String = STACK
        .iter()
        .map(|(_, name, colour)| swatch(name, colour))
        .collect();
    chart(
        "Traffic by outcome",
        &legend,
        &body,
        &format!("{max:.0} req"),
    )
}

fn origin_chart(samples: &[Sample]) -> String {
    let n = samples.len();
    let max = samples
        .iter()
        .map(|s| f64::from(s.origin_limit.max(s.origin_in_flight).max(s.queued)))
        .fold(1.0, f64::max);
    let line = |f: &dyn Fn(&Sample) -> u32| -> Vec<(f64, f64)> {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| (x(i, n), y(f64::from(f(s)), max)))
            .collect()
    };
    let body = [
        polyline(&line(&|s| s.origin_limit), "#e76f51", true),
        polyline(&line(&|s| s.queued), "#e9c46a", false),
        polyline(&line(&|s| s.origin_in_flight), "#2a9d8f", false),
    ]
    .concat();
    let legend = [
        swatch("in flight", "#2a9d8f"),
        swatch("limit", "#e76f51"),
        swatch("queued", "#e9c46a"),
    ]
    .concat();
    chart(
        "Origin load against its limit",
        &legend,
        &body,
        &format!("{max:.0}"),
    )
}

fn table(title: &str, head: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut html = format!("<section><h2>{title}</h2>");
    if rows.is_empty() {
        html.push_str(r##"<p class="none">nothing in the window</p></section>"##);
        return html;
    }
    html.push_str("<table><tr>");
    for h in head {
        let _ = write!(html, "<th>{h}</th>");
    }
    html.push_str("</tr>");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{}</td>", escape(&cell));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table></section>");
    html
}

/// The fleet this node shares its origin budget with: its live nodes, this node's share
/// (red while it runs on its fallback share), the fleet's in-flight count per origin.
fn fleet_tile(fleet: Option<&crate::insights::FleetNow>) -> String {
    let Some(fleet) = fleet else {
        return String::new();
    };
    let warn = if fleet.mode == "fleet" {
        ""
    } else {
        " style=\"border-color:#c00;color:#c00\""
    };
    let origins: Vec<String> = fleet
        .in_flight
        .iter()
        .map(|(origin, n)| format!("{} {n}/{}", escape(origin), fleet.budget))
        .collect();
    format!(
        "<div class=\"tile\"{warn}>fleet: {} ({})<b>{} nodes</b>share {} of {}; in flight {}</div>\n",
        escape(&fleet.node),
        escape(fleet.mode),
        fleet.nodes,
        fleet.share,
        fleet.budget,
        if origins.is_empty() {
            "–".to_string()
        } else {
            origins.join(", ")
        }
    )
}

pub fn render(report: &Report, history: &[Sample], gauges: &Gauges, seconds: usize) -> String {
    let now = &report.now;
    let ratio = now
        .hit_ratio
        .map_or("–".to_string(), |r| format!("{:.1} %", r * 100.0));
    let mut html = String::with_capacity(64 << 10);
    let _ = write!(
        html,
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5"><title>Floodgate status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}}
h1{{font-size:20px;margin:0 0 12px}} h2{{font-size:15px;margin:18px 0 6px}}
.tiles{{display:flex;gap:12px;flex-wrap:wrap}} .tile{{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}}
.tile b{{display:block;font-size:22px}} .legend span{{margin-right:14px;font-size:12px}}
.legend i{{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border-bottom:1px solid #eee;padding:3px 10px;text-align:left}}
.none{{color:#888}} ul.diagnosis li{{margin:4px 0}} .grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px 24px}}
</style></head><body>
<h1>Floodgate status</h1>
<div class="tiles">
<div class="tile">hit ratio (1 min)<b>{ratio}</b></div>
<div class="tile">requests/s<b>{:.1}</b></div>
<div class="tile">origin in flight<b>{} / {}</b></div>
<div class="tile">queued<b>{}</b></div>
<div class="tile">shed/s<b>{:.1}</b></div>
<div class="tile">purges/s<b>{:.2}</b></div>
<div class="tile">origin<b>{}</b></div>
{}</div>
<p>History: the last {} s, one point per {} s. Top lists: the last {} s.</p>"##,
        now.requests_per_sec,
        gauges.origin_in_flight,
        gauges.origin_limit,
        gauges.queued.iter().map(|(_, n)| n).sum::<u64>(),
        now.shed_per_sec,
        now.purges_per_sec,
        if gauges.maintenance {
            "maintenance"
        } else if gauges.origin_healthy {
            "healthy"
        } else {
            "down"
        },
        fleet_tile(now.fleet.as_ref()),
        seconds,
        seconds.div_ceil(history.len().max(1)),
        report.window_secs,
    );
    html.push_str(&hit_ratio_chart(history));
    html.push_str(&traffic_chart(history));
    html.push_str(&origin_chart(history));
    html.push_str("<section><h2>Diagnosis</h2><ul class=\"diagnosis\">");
    for line in &report.diagnosis {
        let _ = write!(html, "<li>{}</li>", escape(line));
    }
    html.push_str("</ul></section><div class=\"grid\">");
    let top = &report.top;
    html.push_str(&table(
        "Paths that miss most",
        &["path", "misses", "main reason"],
        top.misses
            .iter()
            .map(|p| vec![p.path.clone(), p.count.to_string(), p.reason.to_string()])
            .collect(),
    ));
    html.push_str(&table(
        "Uncacheable paths",
        &["path", "requests", "reason"],
        top.uncacheable
            .iter()
            .map(|p| vec![p.path.clone(), p.count.to_string(), p.reason.to_string()])
            .collect(),
    ));
    html.push_str(&table(
        "Tags purged most",
        &["tag", "purges", "objects each"],
        top.purged_tags
            .iter()
            .map(|t| {
                vec![
                    t.tag.clone(),
                    t.purges.to_string(),
                    t.objects_per_purge.to_string(),
                ]
            })
            .collect(),
    ));
    html.push_str(&table(
        "Parameters that split a path",
        &["path", "parameter", "values", "misses"],
        top.splitting_params
            .iter()
            .map(|p| {
                vec![
                    p.path.clone(),
                    p.param.clone(),
                    p.distinct_values.to_string(),
                    p.misses.to_string(),
                ]
            })
            .collect(),
    ));
    html.push_str(&table(
        "Origin time by path",
        &["path", "fetches", "avg ms", "max ms"],
        top.slowest_origin
            .iter()
            .map(|p| {
                vec![
                    p.path.clone(),
                    p.fetches.to_string(),
                    p.avg_ms.to_string(),
                    p.max_ms.to_string(),
                ]
            })
            .collect(),
    ));
    html.push_str("</div></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_text_is_escaped() {
        assert_eq!(
            escape(r##"/p/<script>alert("x")</script>&'"##),
            "/p/&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }
}
