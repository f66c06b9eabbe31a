//! `floodgate top`: `varnishstat` and `varnishtop` in one terminal screen, refreshed every
//! second from `GET /insights`: hit ratio, requests by outcome, the origin against its
//! limit, the queue by class, shedding, purges, the diagnosis and the top lists.
//!
//! Invariant: it only reads. It holds the terminal in raw mode while it runs and gives
//! it back on every way out (q, Esc, Ctrl-C, an error), so a shell is never left broken.

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Gauge, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use serde_json::Value;

use super::admin::authorized;
use super::client;

/// The outcomes shown, with their colours (as on the status page).
const OUTCOMES: [(&str, Color); 6] = [
    ("hit", Color::Green),
    ("stale", Color::LightGreen),
    ("miss", Color::Yellow),
    ("uncacheable", Color::LightRed),
    ("pass", Color::Gray),
    ("shed", Color::Red),
];

/// What the screen shows: the last report, or why there is none.
struct View {
    admin: String,
    report: Result<Value, String>,
    at: Instant,
}

async fn fetch(admin: &str, token: Option<&str>) -> Result<Value, String> {
    let base = admin.trim_end_matches('/');
    let client = client().map_err(|e| e.to_string())?;
    let response = authorized(client.get(format!("{base}/insights")), token)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("cannot reach Floodgate's admin listener at {base}: {e}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("the admin listener answered {status} with no JSON: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("no reason given")
        ));
    }
    Ok(body)
}

/// Runs the screen until q, Esc or Ctrl-C.
pub fn run(admin: &str, token: Option<&str>, interval: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start a runtime: {e}"))?;
    let mut terminal = ratatui::try_init()
        .map_err(|e| anyhow::anyhow!("cannot take the terminal (is this a TTY?): {e}"))?;
    let result = (|| -> anyhow::Result<()> {
        loop {
            let view = View {
                admin: admin.to_string(),
                report: runtime.block_on(fetch(admin, token)),
                at: Instant::now(),
            };
            terminal
                .draw(|frame| draw(frame, &view))
                .map_err(|e| anyhow::anyhow!("cannot draw: {e}"))?;
            // Keys are read until the next refresh is due.
            while let Some(left) = interval.checked_sub(view.at.elapsed()) {
                if !event::poll(left).map_err(|e| anyhow::anyhow!("cannot read keys: {e}"))? {
                    break;
                }
                if let Event::Key(key) =
                    event::read().map_err(|e| anyhow::anyhow!("cannot read keys: {e}"))?
                {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if key.kind == KeyEventKind::Press
                        && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                    {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `[["hit", 12.5], …]` as pairs.
fn pairs(v: &Value) -> Vec<(String, f64)> {
    v.as_array()
        .map(|a| a.iter().map(|p| (text(&p[0]), number(&p[1]))).collect())
        .unwrap_or_default()
}

fn draw(frame: &mut Frame, view: &View) {
    let report = match &view.report {
        Ok(report) => report,
        Err(e) => {
            let p = Paragraph::new(vec![
                Line::from(Span::styled(
                    format!("floodgate top — {}", view.admin),
                    Style::default().add_modifier(Modifier::BOLD),
                )),
                Line::from(""),
                Line::from(Span::styled(e.clone(), Style::default().fg(Color::Red))),
                Line::from("retrying every second; q to quit"),
            ])
            .wrap(Wrap { trim: false });
            frame.render_widget(p, frame.area());
            return;
        }
    };
    let now = &report["now"];
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(2),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Min(6),
        ])
        .split(frame.area());
    header(frame, rows[0], view, now);
    let middle = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(rows[1]);
    outcomes(frame, middle[0], now);
    origin(frame, middle[1], now);
    diagnosis(frame, rows[2], report);
    lists(frame, rows[3], report);
}

fn header(frame: &mut Frame, area: Rect, view: &View, now: &Value) {
    let ratio = now["hit_ratio"]
        .as_f64()
        .map_or("–".to_string(), |r| format!("{:.1} %", r * 100.0));
    let state = if now["maintenance"].as_bool() == Some(true) {
        ("maintenance", Color::Yellow)
    } else if now["origin_healthy"].as_bool() == Some(true) {
        ("origin healthy", Color::Green)
    } else {
        ("origin down", Color::Red)
    };
    let line = Line::from(vec![
        Span::styled(
            "floodgate top ",
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("{}  ", view.admin)),
        Span::styled(
            format!("hit ratio {ratio}"),
            Style::default().fg(Color::Green),
        ),
        Span::raw(format!(
            "  {:.1} req/s  shed {:.1}/s  purges {:.2}/s  ",
            number(&now["requests_per_sec"]),
            number(&now["shed_per_sec"]),
            number(&now["purges_per_sec"]),
        )),
        Span::styled(state.0, Style::default().fg(state.1)),
    ]);
    let help = Line::from(Span::styled(
        "last minute; top lists over the insights window; q to quit",
        Style::default().fg(Color::DarkGray),
    ));
    frame.render_widget(Paragraph::new(vec![line, help]), area);
}

fn outcomes(frame: &mut Frame, area: Rect, now: &Value) {
    let by = pairs(&now["outcomes"]);
    let total: f64 = by.iter().map(|(_, n)| n).sum();
    let block = Block::default()
        .borders(Borders::ALL)
        .title("Requests by outcome, per second");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints(OUTCOMES.map(|_| Constraint::Length(1)))
        .split(inner);
    for (i, (name, colour)) in OUTCOMES.iter().enumerate() {
        let n = by.iter().find(|(o, _)| o == name).map_or(0.0, |(_, n)| *n);
        let ratio = if total > 0.0 { n / total } else { 0.0 };
        let gauge = Gauge::default()
            .gauge_style(Style::default().fg(*colour))
            .ratio(ratio.clamp(0.0, 1.0))
            .label(format!("{name:<12}{n:>10.1}"));
        if let Some(row) = rows.get(i) {
            frame.render_widget(gauge, *row);
        }
    }
}

fn origin(frame: &mut Frame, area: Rect, now: &Value) {
    let in_flight = number(&now["origin_in_flight"]);
    let limit = number(&now["origin_limit"]);
    let block = Block::default()
        .borders(Borders::ALL)
        .title("Origin and queue");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(1), Constraint::Min(1)])
        .split(inner);
    let ratio = if limit > 0.0 { in_flight / limit } else { 0.0 };
    frame.render_widget(
        Gauge::default()
            .gauge_style(Style::default().fg(if ratio >= 1.0 {
                Color::Red
            } else {
                Color::Cyan
            }))
            .ratio(ratio.clamp(0.0, 1.0))
            .label(format!("in flight {in_flight:.0} / limit {limit:.0}")),
        rows[0],
    );
    let mut queue: Vec<Line> = Vec::new();
    let fleet = &now["fleet"];
    if fleet.is_object() {
        let mode = text(&fleet["mode"]);
        let line = format!(
            "fleet {} nodes, {mode}: share {:.0} of {:.0}",
            number(&fleet["nodes"]),
            number(&fleet["share"]),
            number(&fleet["budget"]),
        );
        queue.push(Line::from(Span::styled(
            line,
            Style::default().fg(if mode == "fleet" {
                Color::Green
            } else {
                Color::Red
            }),
        )));
        for (origin, n) in pairs(&fleet["in_flight"]) {
            queue.push(Line::from(format!("fleet in flight {origin} {n:.0}")));
        }
    }
    queue.extend(
        pairs(&now["queued"])
            .into_iter()
            .map(|(class, n)| Line::from(format!("queued {class:<14}{n:>6.0}"))),
    );
    frame.render_widget(Paragraph::new(queue), rows[1]);
}

fn diagnosis(frame: &mut Frame, area: Rect, report: &Value) {
    let lines: Vec<Line> = report["diagnosis"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| Line::from(format!("• {}", text(l))))
                .collect()
        })
        .unwrap_or_default();
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title("Diagnosis")),
        area,
    );
}

fn list(title: &str, head: [&str; 3], rows: Vec<[String; 3]>) -> Table<'static> {
    let rows = rows.into_iter().map(|r| Row::new(r.map(Cell::from)));
    Table::new(
        rows,
        [
            Constraint::Min(20),
            Constraint::Length(9),
            Constraint::Length(13),
        ],
    )
    .header(
        Row::new(head.map(|h| h.to_string())).style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title(title.to_string()),
    )
}

fn lists(frame: &mut Frame, area: Rect, report: &Value) {
    let top = &report["top"];
    let items = |key: &str| top[key].as_array().cloned().unwrap_or_default();
    let grid = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(area);
    let upper = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(grid[0]);
    let lower = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([
            Constraint::Percentage(34),
            Constraint::Percentage(33),
            Constraint::Percentage(33),
        ])
        .split(grid[1]);
    let path_rows = |key: &str| -> Vec<[String; 3]> {
        items(key)
            .iter()
            .map(|p| [text(&p["path"]), text(&p["count"]), text(&p["reason"])])
            .collect()
    };
    frame.render_widget(
        list("Misses", ["path", "misses", "reason"], path_rows("misses")),
        upper[0],
    );
    frame.render_widget(
        list(
            "Uncacheable",
            ["path", "requests", "reason"],
            path_rows("uncacheable"),
        ),
        upper[1],
    );
    let tags = items("purged_tags")
        .iter()
        .map(|t| {
            [
                text(&t["tag"]),
                text(&t["purges"]),
                text(&t["objects_per_purge"]),
            ]
        })
        .collect();
    frame.render_widget(
        list("Purged tags", ["tag", "purges", "objects each"], tags),
        lower[0],
    );
    let params = items("splitting_params")
        .iter()
        .map(|p| {
            [
                format!("{}?{}", text(&p["path"]), text(&p["param"])),
                text(&p["distinct_values"]),
                text(&p["misses"]),
            ]
        })
        .collect();
    frame.render_widget(
        list(
            "Splitting parameters",
            ["path?param", "values", "misses"],
            params,
        ),
        lower[1],
    );
    let slow = items("slowest_origin")
        .iter()
        .map(|p| {
            [
                text(&p["path"]),
                text(&p["fetches"]),
                format!("{} ms", text(&p["avg_ms"])),
            ]
        })
        .collect();
    frame.render_widget(
        list("Origin time", ["path", "fetches", "avg"], slow),
        lower[2],
    );
}
