//! Magento's `X-Magento-Tags`: the keys purges are answered by.

use std::sync::Arc;

use http::HeaderMap;

/// The tags of one stored object, normalised to `t1,t2,…` without spaces or empties.
///
/// Kept as one shared string rather than a list: a category page of a large catalogue
/// carries one tag per product (hundreds of KB), and one allocation is much cheaper
/// than one per tag. It travels from the proxy to the store in `CacheMeta::extensions`,
/// so the tag header itself never has to be stored with (and deserialised from) the
/// object's headers on every hit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(Arc<str>);

impl Tags {
    /// Joins every `X-Magento-Tags` line (Magento may split them) with `,`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut joined = String::new();
        for value in headers.get_all("x-magento-tags") {
            let Ok(value) = value.to_str() else { continue };
            for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(tag);
            }
        }
        Self(joined.into())
    }

    /// Tags already normalised (as `as_str` gives them), e.g. read back from Redis.
    pub fn from_normalised(joined: &str) -> Self {
        Self(joined.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len_bytes(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.split(',').filter(|t| !t.is_empty())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_split_header_lines() {
        let mut h = HeaderMap::new();
        h.append("x-magento-tags", "cat_p_1,cat_p_2".parse().unwrap());
        h.append("x-magento-tags", " cat_c_3 ,,store".parse().unwrap());
        let tags = Tags::from_headers(&h);
        assert_eq!(tags.as_str(), "cat_p_1,cat_p_2,cat_c_3,store");
        assert_eq!(tags.iter().count(), 4);
        assert!(Tags::from_headers(&HeaderMap::new()).is_empty());
    }
}
