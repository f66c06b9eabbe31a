//! Priority classes: which origin requests go first when PHP-FPM is full.
//!
//! A shopper paying must not wait behind a crawler walking the catalogue, and neither
//! should wait behind the re-warmer. Classes come from `[[limits.class]]`, highest first;
//! the re-warmer and background refreshes form a last, built-in class.

use std::time::Duration;

use http::Method;
use regex::RegexSet;

use crate::config::{invalid, ConfigError, LimitsSection};

/// A class's rank: 0 is served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassId(pub usize);

/// The name of the built-in lowest class.
pub const WARM_CLASS: &str = "warm";

struct ClassRule {
    methods: Vec<Method>,
    paths: Option<RegexSet>,
    user_agents: Option<RegexSet>,
}

impl ClassRule {
    fn matches(&self, method: &Method, url: &str, user_agent: &str) -> bool {
        self.methods.contains(method)
            || self.paths.as_ref().is_some_and(|set| set.is_match(url))
            || self
                .user_agents
                .as_ref()
                .is_some_and(|set| !user_agent.is_empty() && set.is_match(user_agent))
    }
}

pub struct Classes {
    rules: Vec<ClassRule>,
    names: Vec<String>,
    waits: Vec<Duration>,
    default: ClassId,
}

fn bad(key: impl AsRef<str>, reason: impl Into<String>) -> ConfigError {
    invalid(key.as_ref(), reason)
}

impl Classes {
    pub fn new(config: &LimitsSection) -> Result<Self, ConfigError> {
        let mut rules = Vec::with_capacity(config.classes.len());
        let mut names: Vec<String> = Vec::with_capacity(config.classes.len() + 1);
        let mut waits = Vec::with_capacity(config.classes.len() + 1);
        for (i, class) in config.classes.iter().enumerate() {
            let key = |field: &str| format!("limits.class[{i}].{field}");
            if class.name.is_empty() || class.name == WARM_CLASS {
                return Err(bad(
                    key("name"),
                    format!("needs a name other than `{WARM_CLASS}` (the re-warmer's class)"),
                ));
            }
            if names.contains(&class.name) {
                return Err(bad(key("name"), format!("`{}` is used twice", class.name)));
            }
            let methods = class
                .methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| bad(key("methods"), format!("`{m}` is not an HTTP method")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let set = |field: &str, patterns: &[String]| -> Result<Option<RegexSet>, ConfigError> {
                if patterns.is_empty() {
                    return Ok(None);
                }
                RegexSet::new(patterns)
                    .map(Some)
                    .map_err(|e| bad(key(field), e.to_string()))
            };
            rules.push(ClassRule {
                methods,
                paths: set("paths", &class.paths)?,
                user_agents: set("user_agents", &class.user_agents)?,
            });
            names.push(class.name.clone());
            waits.push(Duration::from_millis(if class.max_wait_ms == 0 {
                config.max_wait_ms
            } else {
                class.max_wait_ms
            }));
        }
        let default = names
            .iter()
            .position(|n| *n == config.default_class)
            .map(ClassId)
            .ok_or_else(|| {
                bad(
                    "limits.default_class",
                    format!(
                        "`{}` is not one of the classes ({})",
                        config.default_class,
                        names.join(", ")
                    ),
                )
            })?;
        names.push(WARM_CLASS.to_string());
        waits.push(Duration::from_millis(config.max_wait_ms));
        Ok(Self {
            rules,
            names,
            waits,
            default,
        })
    }

    /// The first class, highest first, with a rule matching the request.
    pub fn classify(&self, method: &Method, url: &str, user_agent: &str) -> ClassId {
        self.rules
            .iter()
            .position(|rule| rule.matches(method, url, user_agent))
            .map_or(self.default, ClassId)
    }

    /// The re-warmer's and background refreshes' class, after all others.
    pub fn warm(&self) -> ClassId {
        ClassId(self.names.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, class: ClassId) -> &str {
        self.names.get(class.0).map_or(WARM_CLASS, String::as_str)
    }

    pub fn max_wait(&self, class: ClassId) -> Duration {
        self.waits
            .get(class.0)
            .copied()
            .unwrap_or(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(e: ConfigError) -> (String, String) {
        match e {
            ConfigError::Invalid { key, reason } => (key, reason),
            other => panic!("not a key's mistake: {other}"),
        }
    }

    fn classes() -> Classes {
        Classes::new(&LimitsSection::default()).expect("default classes")
    }

    #[test]
    fn default_classes_put_checkout_first_and_crawlers_last() {
        let c = classes();
        let name = |m: Method, url: &str, ua: &str| c.name(c.classify(&m, url, ua)).to_string();
        assert_eq!(
            name(Method::POST, "/catalog/product/view", "Mozilla"),
            "checkout"
        );
        assert_eq!(name(Method::GET, "/checkout/cart/", "Mozilla"), "checkout");
        assert_eq!(
            name(Method::GET, "/default/customer/account/", ""),
            "checkout"
        );
        assert_eq!(name(Method::GET, "/checkout?x=1", ""), "checkout");
        assert_eq!(name(Method::GET, "/checkout-bag.html", "Mozilla"), "pages");
        assert_eq!(
            name(Method::GET, "/women/tops.html", "Mozilla/5.0"),
            "pages"
        );
        assert_eq!(
            name(
                Method::GET,
                "/women/tops.html",
                "Mozilla/5.0 (compatible; Googlebot/2.1)"
            ),
            "crawlers"
        );
        assert_eq!(c.name(c.warm()), "warm");
        assert!(c.classify(&Method::GET, "/", "AhrefsBot") < c.warm());
    }

    #[test]
    fn mistakes_name_their_key() {
        let mut config = LimitsSection::default();
        config.classes[2].user_agents = vec!["(".into()];
        let (key, _) = parts(Classes::new(&config).err().expect("bad regex refused"));
        assert_eq!(key, "limits.class[2].user_agents");

        let config = LimitsSection {
            default_class: "nope".into(),
            ..LimitsSection::default()
        };
        let (key, reason) = parts(
            Classes::new(&config)
                .err()
                .expect("unknown default refused"),
        );
        assert_eq!(key, "limits.default_class");
        assert!(reason.contains("checkout, pages, crawlers"), "{reason}");

        let mut config = LimitsSection::default();
        config.classes[1].name = "warm".into();
        assert!(Classes::new(&config).is_err());
    }
}
