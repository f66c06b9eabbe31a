//! A page body cut into what is sent as-is and what is fetched: parsed once, when the page
//! is stored, so a hit only walks the segments. Literals are kept compressed (`gzip`), so
//! a template costs about what the gzipped body does and a hit does not compress them.
//!
//! The subset is what Magento emits and Varnish processes: `<esi:include src=…/>`
//! (with `alt` and `onerror`), `<esi:remove>…</esi:remove>`, `<esi:comment …/>` and
//! `<!--esi … -->`. Any other `<esi:` tag, and any tag that is not well formed, passes
//! through untouched: the browser ignores an unknown tag, whereas dropping text could
//! cut a page in half.

use std::ops::Range;

use bytes::Bytes;
use memchr::memmem;

use super::gzip::{one_stream, Piece};

pub(super) const ESI_TAG: &[u8] = b"<esi:";
pub(super) const ESI_COMMENT_OPEN: &[u8] = b"<!--esi";
const COMMENT_CLOSE: &[u8] = b"-->";
const REMOVE_CLOSE: &[u8] = b"</esi:remove>";
const INCLUDE_CLOSE: &[u8] = b"</esi:include>";

/// One `<esi:include>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// As written in the page, entities decoded: absolute, protocol-relative or relative.
    pub src: String,
    /// Fetched when `src` fails.
    pub alt: Option<String>,
    /// `onerror="continue"`. A failed fragment is left out either way (a whole page is
    /// never failed for one fragment); the flag only decides how loudly it is logged.
    pub continue_on_error: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(Piece),
    Include(Include),
}

/// A parsed page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
    includes: usize,
    /// The whole page, markup included, as one gzip stream whose literals are this
    /// template's own (`parse_sharing_body`); `None` when the literals stand alone.
    body: Option<Bytes>,
}

impl Template {
    /// Parses an identity (not compressed) body, compressing its literals at `level`.
    /// `None` when it has no ESI at all, so pages without ESI cost nothing on a hit.
    pub fn parse(body: &[u8], level: u32) -> Option<Template> {
        Self::parse_with_ranges(body, level).map(|(template, _)| template)
    }

    /// Like `parse`, and makes the whole body (ESI markup included) one gzip stream
    /// whose bytes hold the template's literals: the store keeps that stream as the
    /// page's body (`Derived::shared_body`), so a page with ESI is held once, not as its
    /// gzipped body beside its template. `buffer` makes the stream's buffer.
    pub fn parse_sharing_body(
        body: &[u8],
        level: u32,
        buffer: impl FnOnce(&[u8]) -> Bytes,
    ) -> Option<Template> {
        let (mut template, literal_ranges) = Self::parse_with_ranges(body, level)?;
        // The body in order: literals (segment index) and the markup between them,
        // compressed as pieces of their own.
        let literal_segments = template
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Segment::Literal(_)))
            .map(|(i, _)| i);
        let mut parts: Vec<(Option<usize>, Piece)> = Vec::new();
        let mut at = 0;
        let markup = |range: Range<usize>| (None, Piece::compress(&body[range], level));
        for (segment, range) in literal_segments.zip(&literal_ranges) {
            if range.start > at {
                parts.push(markup(at..range.start));
            }
            if let Segment::Literal(piece) = &template.segments[segment] {
                parts.push((Some(segment), piece.clone()));
            }
            at = range.end;
        }
        if body.len() > at {
            parts.push(markup(at..body.len()));
        }
        let pieces: Vec<&Piece> = parts.iter().map(|(_, piece)| piece).collect();
        let (stream, ranges) = one_stream(&pieces, buffer);
        for ((segment, _), range) in parts.iter().zip(ranges) {
            if let Some(Segment::Literal(piece)) = segment.map(|i| &mut template.segments[i]) {
                *piece = piece.within(&stream, range);
            }
        }
        template.body = Some(stream);
        Some(template)
    }

    /// The template, and the body's range of each of its literals, in order.
    fn parse_with_ranges(body: &[u8], level: u32) -> Option<(Template, Vec<Range<usize>>)> {
        if !has_esi(body) {
            return None;
        }
        let mut parser = Parser {
            body,
            level,
            segments: Vec::new(),
            literal_ranges: Vec::new(),
            literal_start: 0,
            includes: 0,
        };
        parser.run();
        let changed = parser
            .segments
            .iter()
            .any(|s| matches!(s, Segment::Include(_)))
            || parser.segments.len() != 1;
        changed.then(|| {
            let template = Template {
                includes: parser.includes,
                segments: parser.segments,
                body: None,
            };
            (template, parser.literal_ranges)
        })
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn includes(&self) -> impl Iterator<Item = &Include> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Include(include) => Some(include),
            Segment::Literal(_) => None,
        })
    }

    pub fn include_count(&self) -> usize {
        self.includes
    }

    pub fn len_bytes(&self) -> usize {
        crate::cache::Derived::len_bytes(self)
    }
}

/// The cache keeps a page's template beside its body and weighs it with the object.
impl crate::cache::Derived for Template {
    fn into_any(self: std::sync::Arc<Self>) -> std::sync::Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    /// The literals' bytes count unless they are the stored body's (which is weighed).
    fn len_bytes(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) if self.body.is_some() => 0,
                Segment::Literal(piece) => piece.compressed_len(),
                Segment::Include(include) => include.src.len() * 2,
            })
            .sum::<usize>()
            + self.segments.len() * std::mem::size_of::<Segment>()
    }

    fn shared_body(&self) -> Option<Bytes> {
        self.body.clone()
    }
}

/// Whether a body has anything the parser would act on, found without parsing.
fn has_esi(body: &[u8]) -> bool {
    memmem::find(body, ESI_TAG).is_some() || memmem::find(body, ESI_COMMENT_OPEN).is_some()
}

struct Parser<'a> {
    body: &'a [u8],
    level: u32,
    segments: Vec<Segment>,
    /// The body's range of each literal in `segments`, in order.
    literal_ranges: Vec<Range<usize>>,
    /// Where the literal being collected starts.
    literal_start: usize,
    includes: usize,
}

impl Parser<'_> {
    fn run(&mut self) {
        let body: &[u8] = self.body;
        let mut pos = 0;
        // Inside `<!--esi … -->` the markers go and the content stays (and is processed).
        let mut in_esi_comment = false;
        while pos < body.len() {
            let rest = &body[pos..];
            let tag = memmem::find(rest, ESI_TAG);
            let open = if in_esi_comment {
                None
            } else {
                memmem::find(rest, ESI_COMMENT_OPEN)
            };
            let close = if in_esi_comment {
                memmem::find(rest, COMMENT_CLOSE)
            } else {
                None
            };
            let next = [tag, open, close].into_iter().flatten().min();
            let Some(offset) = next else { break };
            let at = pos + offset;
            if close == Some(offset) {
                self.cut(at, at + COMMENT_CLOSE.len());
                in_esi_comment = false;
                pos = at + COMMENT_CLOSE.len();
            } else if open == Some(offset) {
                self.cut(at, at + ESI_COMMENT_OPEN.len());
                in_esi_comment = true;
                pos = at + ESI_COMMENT_OPEN.len();
            } else {
                pos = self.tag(at);
            }
        }
        self.flush_literal(body.len());
    }

    /// Handles the `<esi:` tag at `at`; returns where scanning goes on.
    fn tag(&mut self, at: usize) -> usize {
        let body: &[u8] = self.body;
        let name_start = at + ESI_TAG.len();
        let name_end = body[name_start..]
            .iter()
            .position(|b| !b.is_ascii_alphabetic())
            .map_or(body.len(), |n| name_start + n);
        let name = &body[name_start..name_end];
        let Some(tag_end) = tag_end(body, name_end) else {
            return name_end;
        };
        match name {
            b"include" => {
                let attributes = &body[name_end..tag_end];
                let self_closing = attributes.ends_with(b"/>");
                let Some(include) = include(attributes) else {
                    tracing::warn!(
                        tag = %String::from_utf8_lossy(&body[at..tag_end]),
                        "ESI include without a src is passed through as it is"
                    );
                    return tag_end;
                };
                let mut end = tag_end;
                if !self_closing {
                    match memmem::find(&body[tag_end..], INCLUDE_CLOSE) {
                        Some(close) => end = tag_end + close + INCLUDE_CLOSE.len(),
                        None => return tag_end,
                    }
                }
                self.flush_literal(at);
                self.segments.push(Segment::Include(include));
                self.includes += 1;
                self.literal_start = end;
                end
            }
            b"remove" => match memmem::find(&body[tag_end..], REMOVE_CLOSE) {
                Some(close) => {
                    let end = tag_end + close + REMOVE_CLOSE.len();
                    self.cut(at, end);
                    end
                }
                None => tag_end,
            },
            b"comment" => {
                self.cut(at, tag_end);
                tag_end
            }
            _ => tag_end,
        }
    }

    /// Leaves `start..end` out of the output.
    fn cut(&mut self, start: usize, end: usize) {
        self.flush_literal(start);
        self.literal_start = end;
    }

    fn flush_literal(&mut self, end: usize) {
        if end > self.literal_start {
            self.segments.push(Segment::Literal(Piece::compress(
                &self.body[self.literal_start..end],
                self.level,
            )));
            self.literal_ranges.push(self.literal_start..end);
        }
        self.literal_start = end;
    }
}

/// The index just past the `>` that ends the tag whose attributes start at `from`,
/// skipping `>` inside quoted values.
fn tag_end(body: &[u8], from: usize) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, &b) in body[from..].iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return Some(from + i + 1),
            (None, b'<') => return None,
            _ => {}
        }
    }
    None
}

fn include(attributes: &[u8]) -> Option<Include> {
    let text = std::str::from_utf8(attributes).ok()?;
    let src = attribute(text, "src").filter(|s| !s.is_empty())?;
    Some(Include {
        src,
        alt: attribute(text, "alt").filter(|s| !s.is_empty()),
        continue_on_error: attribute(text, "onerror").is_some_and(|v| v == "continue"),
    })
}

/// The value of `name="…"` (or single-quoted) among a tag's attributes.
fn attribute(text: &str, name: &str) -> Option<String> {
    let mut rest = text;
    while let Some(i) = rest.find(name) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + name.len()..].trim_start();
        rest = &rest[i + name.len()..];
        if before.is_some_and(|c| !c.is_whitespace()) {
            continue;
        }
        let Some(value) = after.strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start();
        let quote = value.chars().next()?;
        if quote != '"' && quote != '\'' {
            let end = value
                .find(|c: char| c.is_whitespace() || c == '/' || c == '>')
                .unwrap_or(value.len());
            return Some(decode_entities(&value[..end]));
        }
        let value = &value[1..];
        let end = value.find(quote)?;
        return Some(decode_entities(&value[..end]));
    }
    None
}

/// Magento writes `src` through the HTML escaper, so `&amp;` in a query is `&`.
fn decode_entities(value: &str) -> String {
    if !value.contains('&') {
        return value.to_string();
    }
    value
        .replace("&quot;", "\"")
        .replace("&#039;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &Template, fragment: impl Fn(&Include) -> String) -> String {
        template
            .segments()
            .iter()
            .map(|s| match s {
                Segment::Literal(piece) => String::from_utf8_lossy(&piece.inflate()).into_owned(),
                Segment::Include(i) => fragment(i),
            })
            .collect()
    }

    fn parse(text: &str) -> Option<Template> {
        Template::parse(text.as_bytes(), 6)
    }

    #[test]
    fn a_body_without_esi_is_not_a_template() {
        assert!(parse("<html><body>plain <b>page</b></body></html>").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn magento_top_menu_include_is_found() {
        let page = "<nav><esi:include src=\"http://shop.test/page_cache/block/esi/blocks/%5B%22catalog.topnav%22%5D/handles/WyJkZWZhdWx0Il0%3D/\" /></nav>";
        let t = parse(page).expect("template");
        assert_eq!(t.include_count(), 1);
        let include = t.includes().next().expect("include");
        assert_eq!(
            include.src,
            "http://shop.test/page_cache/block/esi/blocks/%5B%22catalog.topnav%22%5D/handles/WyJkZWZhdWx0Il0%3D/"
        );
        assert_eq!(render(&t, |_| "MENU".into()), "<nav>MENU</nav>");
    }

    #[test]
    fn attributes_in_any_order_quote_and_entity() {
        let t = parse(
            "a<esi:include onerror='continue' alt=\"/b\" src='/f?x=1&amp;y=2'></esi:include>z",
        )
        .expect("template");
        let include = t.includes().next().expect("include");
        assert_eq!(include.src, "/f?x=1&y=2");
        assert_eq!(include.alt.as_deref(), Some("/b"));
        assert!(include.continue_on_error);
        assert_eq!(render(&t, |_| "F".into()), "aFz");
    }

    #[test]
    fn remove_comment_and_esi_comments() {
        let t = parse(
            "1<esi:remove><a href=\"/x\">no ESI</a></esi:remove>2<esi:comment text=\"hi\"/>3<!--esi <esi:include src=\"/in\"/> -->4",
        )
        .expect("template");
        assert_eq!(render(&t, |i| format!("[{}]", i.src)), "123 [/in] 4");
    }

    #[test]
    fn ordinary_comments_and_unknown_tags_pass_untouched() {
        let text = "<!-- normal --><esi:choose><esi:when test=\"1\">x</esi:when></esi:choose><esi:include src=\"/a\"/>";
        let t = parse(text).expect("template");
        assert_eq!(
            render(&t, |_| "A".into()),
            "<!-- normal --><esi:choose><esi:when test=\"1\">x</esi:when></esi:choose>A"
        );
    }

    #[test]
    fn malformed_tags_pass_through_rather_than_cutting_the_page() {
        for text in [
            "before <esi:include src=\"/a\" after",
            "x <esi:include/> y",
            "x <esi:remove> never closed",
            "x <esi:include src=\"/a\"> never closed",
        ] {
            let rendered =
                parse(text).map_or_else(|| text.to_string(), |t| render(&t, |_| "F".into()));
            assert_eq!(rendered, text, "{text}");
        }
    }

    #[test]
    fn a_quoted_greater_than_does_not_end_the_tag() {
        let t = parse("<esi:include src=\"/a?b=>\"/>!").expect("template");
        assert_eq!(t.includes().next().map(|i| i.src.as_str()), Some("/a?b=>"));
        assert_eq!(render(&t, |_| "F".into()), "F!");
    }
}
