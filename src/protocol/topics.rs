//! Topics within a channel: what an event may carry (`Topics`) and what a subscriber may ask
//! for (`Filter`: exact topics and WHATWG URL Patterns, any of which lets an event through).
//! Patterns are compiled by the `urlpattern` crate into the `regex` crate's automata, which
//! match in time linear in the topic: no pattern a client sends can make matching backtrack.
//! See `docs/API.md#topics`.

use super::query::{percent_decode, percent_encode};
use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::cell::OnceCell;
use url::Url;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions};

/// The most topics one event carries.
pub const MAX_TOPICS: usize = 16;
/// The longest topic, and the longest pattern, in bytes of UTF-8.
pub const MAX_TOPIC_BYTES: usize = 1024;
/// The most matchers (`topic=` and `topic_pattern=` together) one subscription holds.
pub const MAX_MATCHERS: usize = 32;
/// The most bytes all of one subscription's matchers hold together: they travel in its URL,
/// which Cloudflare caps at 16 KiB.
pub const MAX_FILTER_BYTES: usize = 8 * 1024;
/// Query parameters of a subscription or poll.
pub const TOPIC_PARAM: &str = "topic";
pub const PATTERN_PARAM: &str = "topic_pattern";

/// U+0000–U+001F and U+007F–U+009F: refused in topics, so a topic can never break a log line,
/// an SSE field (Mercure sends topics in subscription events) or a header.
fn is_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// One topic as the rules allow it: 1 to `MAX_TOPIC_BYTES` bytes, no control characters.
pub fn check_topic(topic: &str, what: &str) -> Result<(), Error> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
        return Err(Error::bad_request(format!(
            "{what} is 1-{MAX_TOPIC_BYTES} bytes (got {})",
            topic.len()
        )));
    }
    if topic.chars().any(is_control) {
        return Err(Error::bad_request(format!(
            "{what} may not hold control characters (U+0000-U+001F, U+007F-U+009F)"
        )));
    }
    Ok(())
}

/// An event's topics: 1 to `MAX_TOPICS` valid topics, in the publisher's order (repeats kept,
/// they change nothing). Stored and sent as a JSON array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Topics(Vec<String>);

impl Topics {
    pub fn parse(topics: Vec<String>) -> Result<Topics, Error> {
        if topics.is_empty() || topics.len() > MAX_TOPICS {
            return Err(Error::bad_request(format!(
                "topics holds 1-{MAX_TOPICS} strings (got {}); leave it out for none",
                topics.len()
            )));
        }
        for (i, topic) in topics.iter().enumerate() {
            check_topic(topic, &format!("topics[{i}]"))?;
        }
        Ok(Topics(topics))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The JSON array, as stored and sent.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".to_string())
    }

    /// Reads a stored array back; `None` for anything that is not one (never stored).
    pub fn from_json(text: &str) -> Option<Topics> {
        serde_json::from_str(text).ok()
    }
}

impl TryFrom<Vec<String>> for Topics {
    type Error = Error;
    fn try_from(topics: Vec<String>) -> Result<Topics, Error> {
        Topics::parse(topics)
    }
}

impl From<Topics> for Vec<String> {
    fn from(topics: Topics) -> Vec<String> {
        topics.0
    }
}

/// Every value of `name=` in a query string, decoded (`+` is a space, as in forms).
pub fn query_values(query: &str, name: &str) -> Result<Vec<String>, Error> {
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
        .map(|value| {
            percent_decode(&value.replace('+', " ")).ok_or_else(|| {
                Error::bad_request(format!("query parameter {name} is badly encoded"))
            })
        })
        .collect()
}

/// One topic matcher as a protocol names it (Mercure's selectors and matchers, the native
/// `topic=`/`topic_pattern=`): what it is and its text, not yet compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum MatcherSpec {
    /// `*`: every topic.
    Any,
    /// Byte for byte.
    Exact(String),
    /// A WHATWG URL Pattern.
    UrlPattern(String),
    /// An RFC 6570 URI template: a topic matches when some expansion of it gives the topic.
    UriTemplate(String),
}

/// A compiled WHATWG URL Pattern and the text it came from.
#[derive(Debug)]
struct Pattern {
    source: String,
    compiled: UrlPattern,
}

/// What a subscriber asks for: events with a topic equal to one of `exact` or matched by one of
/// `patterns`. Built only from valid input (`parse`), kept sorted and without repeats, so two
/// equal filters have one `spec` and one `key`.
#[derive(Debug)]
pub struct Filter {
    exact: Vec<String>,
    patterns: Vec<Pattern>,
}

/// A filter as it travels and is stored: its matchers' texts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topic: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topic_pattern: Vec<String>,
}

impl FilterSpec {
    /// The `topic=` and `topic_pattern=` of a query string.
    pub fn from_query(query: &str) -> Result<FilterSpec, Error> {
        Ok(FilterSpec {
            topic: query_values(query, TOPIC_PARAM)?,
            topic_pattern: query_values(query, PATTERN_PARAM)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.topic.is_empty() && self.topic_pattern.is_empty()
    }

    /// The spec as query parameters (`&topic=…&topic_pattern=…`, each value percent-encoded),
    /// for the Worker's calls to a channel's object.
    pub fn to_query(&self) -> String {
        let pairs = self.topic.iter().map(|t| (TOPIC_PARAM, t));
        let pairs = pairs.chain(self.topic_pattern.iter().map(|p| (PATTERN_PARAM, p)));
        pairs
            .map(|(name, value)| format!("&{name}={}", percent_encode(value)))
            .collect()
    }
}

/// A topic pattern is compiled without a base URL: it must be absolute (`https://host/path/:id`,
/// or `*://*/books/:id`).
fn compile(source: &str) -> Result<UrlPattern, Error> {
    let bad = |e: urlpattern::Error| {
        Error::bad_request(format!(
            "topic_pattern {source:?} is not a URL pattern: {e}"
        ))
    };
    let init =
        UrlPatternInit::parse_constructor_string::<regex::Regex>(source, None).map_err(bad)?;
    <UrlPattern>::parse(init, UrlPatternOptions::default()).map_err(bad)
}

impl Filter {
    /// Validates and compiles `spec`: `None` when it has no matcher (every event passes). At
    /// most `MAX_MATCHERS` matchers, each a valid topic; a pattern that does not compile is 400.
    pub fn parse(spec: &FilterSpec) -> Result<Option<Filter>, Error> {
        if spec.is_empty() {
            return Ok(None);
        }
        let count = spec.topic.len() + spec.topic_pattern.len();
        if count > MAX_MATCHERS {
            return Err(Error::bad_request(format!(
                "a subscription holds at most {MAX_MATCHERS} topic and topic_pattern matchers \
                 (got {count})"
            )));
        }
        let bytes: usize = spec
            .topic
            .iter()
            .chain(&spec.topic_pattern)
            .map(String::len)
            .sum();
        if bytes > MAX_FILTER_BYTES {
            return Err(Error::bad_request(format!(
                "a subscription's topic and topic_pattern matchers hold at most \
                 {MAX_FILTER_BYTES} bytes together (got {bytes})"
            )));
        }
        let mut exact = spec.topic.clone();
        for topic in &exact {
            check_topic(topic, "topic")?;
        }
        exact.sort();
        exact.dedup();
        let mut sources = spec.topic_pattern.clone();
        sources.sort();
        sources.dedup();
        let patterns = sources
            .into_iter()
            .map(|source| {
                check_topic(&source, "topic_pattern")?;
                let compiled = compile(&source)?;
                Ok(Pattern { source, compiled })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Some(Filter { exact, patterns }))
    }

    /// A filter that lets nothing through (for a socket whose filter cannot be read).
    pub fn nothing() -> Filter {
        Filter {
            exact: Vec::new(),
            patterns: Vec::new(),
        }
    }

    /// The exact topics when the filter has no pattern (a store can then filter by itself).
    pub fn exact_only(&self) -> Option<&[String]> {
        self.patterns.is_empty().then_some(self.exact.as_slice())
    }

    /// The canonical spec: sorted, without repeats.
    pub fn spec(&self) -> FilterSpec {
        FilterSpec {
            topic: self.exact.clone(),
            topic_pattern: self.patterns.iter().map(|p| p.source.clone()).collect(),
        }
    }

    /// A short name for this filter (hex of a digest of its canonical spec): equal filters have
    /// equal keys, so subscribers with the same filter share one compiled copy.
    pub fn key(&self) -> String {
        use sha2::{Digest, Sha256};
        let spec = serde_json::to_string(&self.spec()).unwrap_or_default();
        let digest = Sha256::digest(spec.as_bytes());
        digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }

    /// True when some topic of the event is one of the exact matchers or matched by a pattern.
    /// An event without topics matches no filter.
    pub fn matches(&self, topics: &EventTopics<'_>) -> bool {
        let list = topics.list();
        if list.iter().any(|t| self.exact.binary_search(t).is_ok()) {
            return true;
        }
        if self.patterns.is_empty() {
            return false;
        }
        topics.urls().iter().flatten().any(|url| {
            self.patterns.iter().any(|p| {
                p.compiled
                    .test(UrlPatternMatchInput::Url(url.clone()))
                    .unwrap_or(false)
            })
        })
    }
}

/// An event's topics as filters read them: each parsed as a URL at most once, however many
/// subscribers' patterns test it. A topic that is not an absolute URL matches no pattern.
pub struct EventTopics<'a> {
    topics: Option<&'a Topics>,
    urls: OnceCell<Vec<Option<Url>>>,
}

impl<'a> EventTopics<'a> {
    pub fn new(topics: Option<&'a Topics>) -> Self {
        EventTopics {
            topics,
            urls: OnceCell::new(),
        }
    }

    fn list(&self) -> &'a [String] {
        self.topics.map_or(&[], Topics::as_slice)
    }

    fn urls(&self) -> &[Option<Url>] {
        self.urls
            .get_or_init(|| self.list().iter().map(|t| Url::parse(t).ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(list: &[&str]) -> Topics {
        Topics::parse(list.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    fn filter(exact: &[&str], patterns: &[&str]) -> Filter {
        let spec = FilterSpec {
            topic: exact.iter().map(|s| s.to_string()).collect(),
            topic_pattern: patterns.iter().map(|s| s.to_string()).collect(),
        };
        Filter::parse(&spec).unwrap().unwrap()
    }

    fn passes(f: &Filter, list: &[&str]) -> bool {
        let t = topics(list);
        f.matches(&EventTopics::new(Some(&t)))
    }

    #[test]
    fn topics_are_one_to_sixteen_valid_strings() {
        assert!(Topics::parse(vec![]).is_err());
        assert!(Topics::parse(vec!["a".into(); 16]).is_ok());
        assert!(Topics::parse(vec!["a".into(); 17]).is_err());
        assert!(Topics::parse(vec!["x".repeat(MAX_TOPIC_BYTES)]).is_ok());
        assert!(Topics::parse(vec!["x".repeat(MAX_TOPIC_BYTES + 1)]).is_err());
        assert!(Topics::parse(vec!["é".repeat(512)]).is_ok(), "1,024 bytes");
        assert!(Topics::parse(vec!["é".repeat(513)]).is_err());
        assert!(Topics::parse(vec![String::new()]).is_err());
        for bad in ["a\nb", "a\u{0}", "\u{7f}", "a\u{85}b", "\u{9f}", "\t"] {
            assert!(Topics::parse(vec![bad.into()]).is_err(), "{bad:?}");
        }
        for good in ["\u{a0}", "https://example.com/a b", "🦀", "\u{200b}"] {
            assert!(Topics::parse(vec![good.into()]).is_ok(), "{good:?}");
        }
        let t = topics(&["https://x/a", "b\"c"]);
        assert_eq!(t.to_json(), r#"["https://x/a","b\"c"]"#);
        assert_eq!(Topics::from_json(&t.to_json()), Some(t));
        assert_eq!(Topics::from_json("[]"), None);
        let parsed: Result<Topics, _> = serde_json::from_str(r#"["a\u0001"]"#);
        assert!(parsed.is_err(), "deserialising validates too");
    }

    #[test]
    fn exact_matchers_compare_bytes() {
        let f = filter(&["https://example.com/books/1", "plain"], &[]);
        assert!(passes(&f, &["https://example.com/books/1"]));
        assert!(passes(&f, &["other", "plain"]), "any topic of the event");
        assert!(!passes(&f, &["https://example.com/books/1/"]));
        assert!(
            !passes(&f, &["https://EXAMPLE.com/books/1"]),
            "no normalising"
        );
        assert!(!passes(&f, &["Plain"]));
        assert!(!f.matches(&EventTopics::new(None)), "no topics, no match");
    }

    #[test]
    fn patterns_follow_url_pattern() {
        let f = filter(&[], &["https://example.com/books/:id"]);
        assert!(passes(&f, &["https://example.com/books/1"]));
        assert!(
            passes(&f, &["https://example.com/books/abc?x=1#h"]),
            "search and hash"
        );
        assert!(!passes(&f, &["https://example.com/books/1/2"]));
        assert!(!passes(&f, &["https://example.com/books/"]));
        assert!(!passes(&f, &["http://example.com/books/1"]));
        assert!(
            !passes(&f, &["books/1"]),
            "not a URL: no pattern matches it"
        );
        let any = filter(&[], &["*://*/orders/*"]);
        assert!(passes(&any, &["https://a.example/orders/7/lines"]));
        assert!(!passes(&any, &["https://a.example/order/7"]));
        let union = filter(&["x"], &["https://e.com/:a"]);
        assert!(passes(&union, &["x"]) && passes(&union, &["https://e.com/q"]));
        assert!(!passes(&union, &["y", "https://e.com/q/r"]));
    }

    #[test]
    fn bad_filters_are_400_and_equal_ones_share_a_key() {
        let spec = |exact: Vec<String>, patterns: Vec<String>| FilterSpec {
            topic: exact,
            topic_pattern: patterns,
        };
        assert!(Filter::parse(&FilterSpec::default()).unwrap().is_none());
        for patterns in [
            vec!["/relative/:id".to_string()],
            vec!["https://e.com/(a".to_string()],
            vec!["https://e.com/:".to_string()],
            vec!["x".repeat(MAX_TOPIC_BYTES + 1)],
        ] {
            let err = Filter::parse(&spec(vec![], patterns.clone())).err();
            assert_eq!(err.map(|e| e.status()), Some(400), "{patterns:?}");
        }
        let many = (0..=MAX_MATCHERS).map(|i| i.to_string()).collect();
        assert!(Filter::parse(&spec(many, vec![])).is_err());
        assert!(Filter::parse(&spec(vec!["a\r".into()], vec![])).is_err());
        let a = filter(&["b", "a", "b"], &["https://e.com/:x"]);
        let b = filter(&["a", "b"], &["https://e.com/:x", "https://e.com/:x"]);
        assert_eq!((a.spec(), a.key()), (b.spec(), b.key()));
        assert_eq!(a.key().len(), 24);
        assert_ne!(a.key(), filter(&["a"], &[]).key());
    }

    #[test]
    fn specs_round_trip_through_a_query() {
        let spec = FilterSpec {
            topic: vec!["https://e.com/a b?c=d&e".into(), "é".into()],
            topic_pattern: vec!["https://e.com/:id".into()],
        };
        let query = format!("channel=x{}", spec.to_query());
        assert_eq!(FilterSpec::from_query(&query).unwrap(), spec);
        assert!(FilterSpec::from_query("topic=%zz").is_err());
        assert!(FilterSpec::from_query("channel=x").unwrap().is_empty());
    }

    #[test]
    fn a_hostile_pattern_matches_in_linear_time() {
        // A backtracking engine takes exponential time on this; the regex crate does not.
        let f = filter(&[], &["https://e.com/(a+)+b"]);
        let topic = format!("https://e.com/{}c", "a".repeat(1000));
        assert!(!passes(&f, &[topic.as_str()]));
    }
}
