//! Which objects a purge's tag pattern selects, in terms every tier answers from its own
//! index (memory, disk, the shared tier in Redis).

use regex::Regex;

#[derive(Debug, Clone)]
pub enum TagSelector {
    /// Magento's own shape: these exact tags.
    Tags(Vec<String>),
    /// `.*`: every object that carries a tag.
    AllTagged,
    /// Any other pattern, matched against the known tags (not against every object).
    Pattern(Regex),
}
