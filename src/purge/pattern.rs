//! What a `X-Magento-Tags-Pattern` asks for.
//!
//! Magento wraps every tag as `((^|,)TAG(,|$))` and joins them with `|`, never escaping
//! the tag. That shape is read back into the exact tag set and answered from the tag
//! index; `.*` is the full flush; anything else is a regular expression, matched against
//! the known tags (not against every object).

use regex::Regex;

use super::PurgeError;

/// Purges of unusual patterns compile at most this much regex program.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What a pattern selects: the cache's own selector, so each tier answers it from its index.
pub use crate::cache::TagSelector as Selector;

/// Reads a pattern; `Err` says why it is not a valid regular expression.
pub fn parse(pattern: &str) -> Result<Selector, PurgeError> {
    let pattern = pattern.trim();
    if pattern == ".*" {
        return Ok(Selector::AllTagged);
    }
    if let Some(tags) = magento_tags(pattern) {
        return Ok(Selector::Tags(tags));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(Selector::Pattern)
        .map_err(PurgeError::Pattern)
}

/// A pool (`X-Pool`) is always a regular expression against the stored `X-Pool` value.
pub fn pool(pattern: &str) -> Result<Regex, PurgeError> {
    regex::RegexBuilder::new(pattern.trim())
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(PurgeError::Pool)
}

/// `((^|,)a(,|$))|((^|,)b(,|$))` -> `["a", "b"]`; `None` for anything else.
fn magento_tags(pattern: &str) -> Option<Vec<String>> {
    const OPEN: &str = "((^|,)";
    const CLOSE: &str = "(,|$))";
    let mut tags = Vec::new();
    let mut rest = pattern;
    loop {
        rest = rest.strip_prefix(OPEN)?;
        let end = rest.find(CLOSE)?;
        let tag = &rest[..end];
        // A tag with regex syntax in it is left to the regex path, which reads it as
        // Varnish would.
        if tag.is_empty()
            || tag.contains([
                '(', ')', '|', '^', '$', ',', '*', '+', '?', '[', '\\', '.', '{',
            ])
        {
            return None;
        }
        tags.push(tag.to_string());
        rest = &rest[end + CLOSE.len()..];
        if rest.is_empty() {
            return Some(tags);
        }
        rest = rest.strip_prefix('|')?;
    }
}

/// Magento's wire form of a tag list: `((^|,)a(,|$))|((^|,)b(,|$))`.
pub fn magento_pattern(tags: &[String]) -> String {
    tags.iter()
        .map(|t| format!("((^|,){}(,|$))", t.trim()))
        .collect::<Vec<_>>()
        .join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magentos_shape_becomes_exact_tags() {
        match parse("((^|,)cat_p_1(,|$))|((^|,)cat_c_22(,|$))").unwrap() {
            Selector::Tags(tags) => assert_eq!(tags, vec!["cat_p_1", "cat_c_22"]),
            other => panic!("{other:?}"),
        }
        match parse("((^|,)store(,|$))").unwrap() {
            Selector::Tags(tags) => assert_eq!(tags, vec!["store"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flush_regex_and_errors() {
        assert!(matches!(parse(".*").unwrap(), Selector::AllTagged));
        assert!(matches!(
            parse("^cat_p_1[0-9]$").unwrap(),
            Selector::Pattern(_)
        ));
        assert!(matches!(
            parse("((^|,)cat.p(,|$))").unwrap(),
            Selector::Pattern(_)
        ));
        let err = parse("((^|,)cat_p_1(,|$)").unwrap_err();
        assert!(matches!(err, PurgeError::Pattern(_)), "{err}");
        assert!(err.to_string().contains("not a valid regular expression"));
        assert!(matches!(pool("("), Err(PurgeError::Pool(_))));
    }

    #[test]
    fn a_thousand_tags_parse() {
        let pattern: Vec<String> = (0..1000)
            .map(|i| format!("((^|,)cat_p_{i}(,|$))"))
            .collect();
        match parse(&pattern.join("|")).unwrap() {
            Selector::Tags(tags) => assert_eq!(tags.len(), 1000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tags_become_magentos_pattern() {
        let tags = vec!["cat_p_1".to_string(), "store".to_string()];
        assert_eq!(
            magento_pattern(&tags),
            "((^|,)cat_p_1(,|$))|((^|,)store(,|$))"
        );
    }
}
