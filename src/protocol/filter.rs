//! What a subscriber asks for (`Filter`): events with a topic some matcher lets through. The
//! native API names matchers `topic=` (exact) and `topic_pattern=` (WHATWG URL Pattern);
//! Mercure adds `*` and RFC 6570 URI templates, a base URL for relative patterns and topics,
//! and private updates, which only reach a subscriber whose token's selectors match one of
//! their topics. Patterns and templates compile to the `regex` crate's automata, which match in
//! time linear in the topic: no matcher a client sends can make matching backtrack. See
//! `docs/API.md#topics`.

use super::query::percent_encode;
use super::topics::{
    check_topic, query_values, MatcherSpec, Topics, MAX_FILTER_BYTES, MAX_MATCHERS, PATTERN_PARAM,
    TOPIC_PARAM,
};
use super::uritemplate::UriTemplate;
use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::cell::OnceCell;
use url::Url;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternMatchInput, UrlPatternOptions};

/// The most selectors a token may give for private updates: a token holds at most 100, and a
/// 0.x template selector counts twice (exact, then as a template).
pub const MAX_PRIVATE_MATCHERS: usize = 200;
/// The query parameter that carries a whole spec from the Worker to a channel's object.
const SPEC_PARAM: &str = "filter";

/// A filter as it travels and is stored: its matchers' texts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterSpec {
    /// Native `topic=` matchers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topic: Vec<String>,
    /// Native `topic_pattern=` matchers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topic_pattern: Vec<String>,
    /// Matchers a protocol named (Mercure's `topic=`, `match=`, `match_urlpattern=`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<MatcherSpec>,
    /// The URL relative patterns and topics resolve against (Mercure: the hub's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Which private updates this subscriber may receive: those with a topic one of these
    /// matches. `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<Vec<MatcherSpec>>,
    /// Frame events as Mercure updates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mercure: bool,
}

impl FilterSpec {
    /// The native `topic=` and `topic_pattern=` of a query string.
    pub fn from_query(query: &str) -> Result<FilterSpec, Error> {
        Ok(FilterSpec {
            topic: query_values(query, TOPIC_PARAM)?,
            topic_pattern: query_values(query, PATTERN_PARAM)?,
            ..FilterSpec::default()
        })
    }

    /// True when the spec selects nothing (every event passes).
    pub fn is_empty(&self) -> bool {
        self.topic.is_empty() && self.topic_pattern.is_empty() && self.matchers.is_empty()
    }

    /// The whole spec as one query parameter (`&filter=<JSON, percent-encoded>`), for the
    /// Worker's calls to a channel's object.
    pub fn to_query(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("&{SPEC_PARAM}={}", percent_encode(&json))
    }

    /// Reads `to_query`'s parameter back; `None` when the query has none.
    pub fn from_call(query: &str) -> Result<Option<FilterSpec>, Error> {
        let Some(json) = query_values(query, SPEC_PARAM)?.into_iter().next() else {
            return Ok(None);
        };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|_| Error::bad_request("internal subscribe with a bad filter"))
    }

    fn all_matchers(&self) -> Vec<MatcherSpec> {
        let exact = self.topic.iter().cloned().map(MatcherSpec::Exact);
        let patterns = self
            .topic_pattern
            .iter()
            .cloned()
            .map(MatcherSpec::UrlPattern);
        exact
            .chain(patterns)
            .chain(self.matchers.iter().cloned())
            .collect()
    }
}

/// One compiled matcher.
#[derive(Debug)]
enum Compiled {
    Pattern(Box<UrlPattern>),
    Template(UriTemplate),
}

/// A set of matchers, compiled: a topic passes when any of them matches it.
#[derive(Debug, Default)]
struct Matchers {
    any: bool,
    /// Sorted, without repeats.
    exact: Vec<String>,
    compiled: Vec<Compiled>,
}

impl Matchers {
    fn compile(specs: &[MatcherSpec], base: Option<&Url>) -> Result<Matchers, Error> {
        let mut set = Matchers::default();
        for spec in specs {
            match spec {
                MatcherSpec::Any => set.any = true,
                MatcherSpec::Exact(topic) => {
                    check_topic(topic, "topic")?;
                    set.exact.push(topic.clone());
                }
                MatcherSpec::UrlPattern(source) => {
                    check_topic(source, "topic_pattern")?;
                    let pattern = compile_pattern(source, base)?;
                    set.compiled.push(Compiled::Pattern(Box::new(pattern)));
                }
                MatcherSpec::UriTemplate(source) => {
                    set.compiled
                        .push(Compiled::Template(UriTemplate::parse(source)?));
                }
            }
        }
        set.exact.sort();
        set.exact.dedup();
        Ok(set)
    }

    fn matches(&self, topics: &EventTopics<'_>, base: Option<&Url>) -> bool {
        if self.any {
            return !topics.list().is_empty();
        }
        let list = topics.list();
        if list.iter().any(|t| self.exact.binary_search(t).is_ok()) {
            return true;
        }
        self.compiled.iter().any(|matcher| match matcher {
            Compiled::Template(template) => list.iter().any(|t| template.matches(t)),
            Compiled::Pattern(pattern) => topics.with_urls(base, |urls| {
                urls.iter().flatten().any(|url| {
                    pattern
                        .test(UrlPatternMatchInput::Url(url.clone()))
                        .unwrap_or(false)
                })
            }),
        })
    }
}

/// The most groups (`:name`, `*`, `(…)`) one URL pattern may hold: testing a topic captures
/// every group, so its cost grows with groups × topic length, and a pattern made of hundreds of
/// wildcards would make every publish slow for everyone.
pub const MAX_PATTERN_GROUPS: usize = 16;

/// A URL pattern, absolute or (with a base) relative to `base`.
fn compile_pattern(source: &str, base: Option<&Url>) -> Result<UrlPattern, Error> {
    let groups = source
        .char_indices()
        .filter(|&(i, c)| {
            let named = c == ':'
                && source
                    .get(i + 1..)
                    .and_then(|rest| rest.chars().next())
                    .is_some_and(|n| n.is_alphabetic() || n == '_' || n == '$');
            named || c == '*' || c == '('
        })
        .count();
    if groups > MAX_PATTERN_GROUPS {
        return Err(Error::bad_request(format!(
            "{source:?} holds {groups} groups and wildcards; a URL pattern may hold at most \
             {MAX_PATTERN_GROUPS}"
        )));
    }
    let bad =
        |e: urlpattern::Error| Error::bad_request(format!("{source:?} is not a URL pattern: {e}"));
    let init = UrlPatternInit::parse_constructor_string::<regex::Regex>(source, base.cloned())
        .map_err(bad)?;
    <UrlPattern>::parse(init, UrlPatternOptions::default()).map_err(bad)
}

/// A subscriber's compiled filter. Built only from valid input (`parse`); two equal specs have
/// one `key`.
#[derive(Debug)]
pub struct Filter {
    spec: FilterSpec,
    base: Option<Url>,
    select: Matchers,
    private: Option<Matchers>,
}

impl Filter {
    /// Validates and compiles `spec`: `None` when it selects nothing (every event passes). At
    /// most `MAX_MATCHERS` matchers in `MAX_FILTER_BYTES`, each a valid topic; a pattern or
    /// template that does not compile is 400.
    pub fn parse(spec: &FilterSpec) -> Result<Option<Filter>, Error> {
        if spec.is_empty() {
            return Ok(None);
        }
        let mut select = spec.all_matchers();
        if select.len() > MAX_MATCHERS {
            return Err(Error::bad_request(format!(
                "a subscription holds at most {MAX_MATCHERS} topic matchers (got {})",
                select.len()
            )));
        }
        let bytes: usize = select.iter().map(text_len).sum();
        if bytes > MAX_FILTER_BYTES {
            return Err(Error::bad_request(format!(
                "a subscription's topic matchers hold at most {MAX_FILTER_BYTES} bytes together \
                 (got {bytes})"
            )));
        }
        let base = match &spec.base {
            Some(text) => Some(
                Url::parse(text).map_err(|_| Error::bad_request("a filter's base is not a URL"))?,
            ),
            None => None,
        };
        let private = match &spec.private {
            Some(list) if list.len() > MAX_PRIVATE_MATCHERS => {
                return Err(Error::bad_request("too many private selectors"))
            }
            Some(list) => Some(Matchers::compile(list, base.as_ref())?),
            None => None,
        };
        let compiled = Matchers::compile(&select, base.as_ref())?;
        // The canonical spec: native matchers as protocol ones, sorted and without repeats.
        select.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
        select.dedup();
        let canonical = FilterSpec {
            topic: Vec::new(),
            topic_pattern: Vec::new(),
            matchers: select,
            base: spec.base.clone(),
            private: spec.private.clone(),
            mercure: spec.mercure,
        };
        Ok(Some(Filter {
            spec: canonical,
            base,
            select: compiled,
            private,
        }))
    }

    /// A filter that lets nothing through (for a socket whose filter cannot be read).
    pub fn nothing() -> Filter {
        Filter {
            spec: FilterSpec::default(),
            base: None,
            select: Matchers::default(),
            private: None,
        }
    }

    /// The exact topics when the filter selects by exact topics only and no private update can
    /// pass it (a store can then filter by itself).
    pub fn exact_only(&self) -> Option<&[String]> {
        let plain = !self.select.any && self.select.compiled.is_empty();
        (plain && self.private.is_none()).then_some(self.select.exact.as_slice())
    }

    /// The canonical spec.
    pub fn spec(&self) -> FilterSpec {
        self.spec.clone()
    }

    /// True when this filter frames events as Mercure updates.
    pub fn mercure(&self) -> bool {
        self.spec.mercure
    }

    /// A short name for this filter (hex of a digest of its canonical spec): equal filters have
    /// equal keys, so subscribers with the same filter share one compiled copy.
    pub fn key(&self) -> String {
        use sha2::{Digest, Sha256};
        let spec = serde_json::to_string(&self.spec).unwrap_or_default();
        let digest = Sha256::digest(spec.as_bytes());
        digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
    }

    /// True when the event passes: some topic matched by a matcher, and, for a private update,
    /// some topic matched by the private selectors too. An event without topics passes no
    /// filter.
    pub fn matches(&self, topics: &EventTopics<'_>) -> bool {
        let base = self.base.as_ref();
        if !self.select.matches(topics, base) {
            return false;
        }
        !topics.private
            || self
                .private
                .as_ref()
                .is_some_and(|allowed| allowed.matches(topics, base))
    }
}

fn text_len(spec: &MatcherSpec) -> usize {
    match spec {
        MatcherSpec::Any => 1,
        MatcherSpec::Exact(s) | MatcherSpec::UrlPattern(s) | MatcherSpec::UriTemplate(s) => s.len(),
    }
}

fn sort_key(spec: &MatcherSpec) -> (u8, &str) {
    match spec {
        MatcherSpec::Any => (0, ""),
        MatcherSpec::Exact(s) => (1, s),
        MatcherSpec::UrlPattern(s) => (2, s),
        MatcherSpec::UriTemplate(s) => (3, s),
    }
}

/// An event's topics as filters read them: each parsed as a URL at most once per base,
/// however many subscribers' patterns test it. A topic that is not a URL (absolute, or relative
/// to the filter's base) matches no pattern.
pub struct EventTopics<'a> {
    topics: Option<&'a Topics>,
    private: bool,
    urls: OnceCell<(Option<Url>, Vec<Option<Url>>)>,
}

impl<'a> EventTopics<'a> {
    pub fn new(topics: Option<&'a Topics>) -> Self {
        EventTopics {
            topics,
            private: false,
            urls: OnceCell::new(),
        }
    }

    /// The topics of a private update.
    pub fn private(self, private: bool) -> Self {
        EventTopics { private, ..self }
    }

    fn list(&self) -> &'a [String] {
        self.topics.map_or(&[], Topics::as_slice)
    }

    /// Runs `f` on the topics parsed as URLs against `base` (cached for the first base asked).
    fn with_urls<R>(&self, base: Option<&Url>, f: impl FnOnce(&[Option<Url>]) -> R) -> R {
        let parse = |base: Option<&Url>| -> Vec<Option<Url>> {
            let options = Url::options().base_url(base);
            self.list().iter().map(|t| options.parse(t).ok()).collect()
        };
        let (cached_base, urls) = self.urls.get_or_init(|| (base.cloned(), parse(base)));
        if cached_base.as_ref() == base {
            f(urls)
        } else {
            f(&parse(base))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(list: &[&str]) -> Topics {
        Topics::parse(list.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    fn native(exact: &[&str], patterns: &[&str]) -> FilterSpec {
        FilterSpec {
            topic: exact.iter().map(|s| s.to_string()).collect(),
            topic_pattern: patterns.iter().map(|s| s.to_string()).collect(),
            ..FilterSpec::default()
        }
    }

    fn filter(exact: &[&str], patterns: &[&str]) -> Filter {
        Filter::parse(&native(exact, patterns)).unwrap().unwrap()
    }

    fn passes(f: &Filter, list: &[&str]) -> bool {
        let t = topics(list);
        f.matches(&EventTopics::new(Some(&t)))
    }

    fn passes_private(f: &Filter, list: &[&str]) -> bool {
        let t = topics(list);
        f.matches(&EventTopics::new(Some(&t)).private(true))
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
        assert_eq!(f.exact_only().map(<[String]>::len), Some(2));
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
        assert_eq!(union.exact_only(), None);
    }

    #[test]
    fn bad_filters_are_400_and_equal_ones_share_a_key() {
        assert!(Filter::parse(&FilterSpec::default()).unwrap().is_none());
        for pattern in ["/relative/:id", "https://e.com/(a", "https://e.com/:"] {
            let err = Filter::parse(&native(&[], &[pattern])).err();
            assert_eq!(err.map(|e| e.status()), Some(400), "{pattern}");
        }
        let long = "x".repeat(1025);
        assert!(Filter::parse(&native(&[], &[long.as_str()])).is_err());
        let many: Vec<String> = (0..=MAX_MATCHERS).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(Filter::parse(&native(&many, &[])).is_err());
        assert!(Filter::parse(&native(&["a\r"], &[])).is_err());
        let a = filter(&["b", "a", "b"], &["https://e.com/:x"]);
        let b = filter(&["a", "b"], &["https://e.com/:x", "https://e.com/:x"]);
        assert_eq!((a.spec(), a.key()), (b.spec(), b.key()));
        assert_eq!(a.key().len(), 24);
        assert_ne!(a.key(), filter(&["a"], &[]).key());
        let mercure = FilterSpec {
            mercure: true,
            ..native(&["a"], &[])
        };
        let m = Filter::parse(&mercure).unwrap().unwrap();
        assert_ne!(
            m.key(),
            filter(&["a"], &[]).key(),
            "the framing is part of the key"
        );
        assert!(m.mercure());
    }

    #[test]
    fn specs_travel_whole() {
        let spec = FilterSpec {
            topic: vec!["https://e.com/a b?c=d&e".into(), "é".into()],
            topic_pattern: vec!["https://e.com/:id".into()],
            matchers: vec![
                MatcherSpec::Any,
                MatcherSpec::UriTemplate("https://e.com/{x}".into()),
            ],
            base: Some("https://hub.example/.well-known/mercure".into()),
            private: Some(vec![MatcherSpec::Exact("p".into())]),
            mercure: true,
        };
        let query = format!("transport=sse{}", spec.to_query());
        assert_eq!(FilterSpec::from_call(&query).unwrap(), Some(spec));
        assert_eq!(FilterSpec::from_call("transport=sse").unwrap(), None);
        assert!(FilterSpec::from_call("filter=%7B").is_err());
        let native =
            FilterSpec::from_query("topic=a&topic_pattern=https%3A%2F%2Fe.com%2F%3Aid").unwrap();
        assert_eq!((native.topic.len(), native.topic_pattern.len()), (1, 1));
        assert!(FilterSpec::from_query("topic=%zz").is_err());
        assert!(FilterSpec::from_query("channel=x").unwrap().is_empty());
    }

    #[test]
    fn a_pattern_holds_at_most_sixteen_groups() {
        let sixteen = format!("https://e.com/{}", vec![":a"; 16].join("/").replace(":a", "*"));
        assert!(Filter::parse(&native(&[], &[sixteen.as_str()])).is_ok());
        let named: Vec<String> = (0..17).map(|i| format!(":p{i}")).collect();
        let seventeen = format!("https://e.com/{}", named.join("/"));
        assert!(Filter::parse(&native(&[], &[seventeen.as_str()])).is_err());
        let https_port = "https://e.com:443/:id";
        assert!(Filter::parse(&native(&[], &[https_port])).is_ok(), "a port is not a group");
    }

    #[test]
    fn a_hostile_pattern_matches_in_linear_time() {
        // A backtracking engine takes exponential time on this; the regex crate does not.
        let f = filter(&[], &["https://e.com/(a+)+b"]);
        let topic = format!("https://e.com/{}c", "a".repeat(1000));
        assert!(!passes(&f, &[topic.as_str()]));
    }

    #[test]
    fn mercure_matchers_any_templates_and_a_base() {
        let spec = |matchers: Vec<MatcherSpec>| FilterSpec {
            matchers,
            base: Some("https://hub.example/.well-known/mercure".into()),
            mercure: true,
            ..FilterSpec::default()
        };
        let any = Filter::parse(&spec(vec![MatcherSpec::Any]))
            .unwrap()
            .unwrap();
        assert!(passes(&any, &["anything at all"]));
        assert!(!any.matches(&EventTopics::new(None)));
        let template = MatcherSpec::UriTemplate("https://example.com/books/{id}".into());
        let t = Filter::parse(&spec(vec![template])).unwrap().unwrap();
        assert!(passes(&t, &["https://example.com/books/7"]));
        assert!(!passes(&t, &["https://example.com/authors/7"]));
        let relative = MatcherSpec::UrlPattern("/books/:id".into());
        let r = Filter::parse(&spec(vec![relative])).unwrap().unwrap();
        assert!(passes(&r, &["https://hub.example/books/1"]));
        assert!(
            passes(&r, &["/books/2"]),
            "a relative topic resolves against the base"
        );
        assert!(!passes(&r, &["https://other.example/books/1"]));
    }

    #[test]
    fn private_updates_need_a_private_selector() {
        let public_only = filter(&["a", "b"], &[]);
        assert!(passes(&public_only, &["a"]));
        assert!(
            !passes_private(&public_only, &["a"]),
            "no selectors: no private updates"
        );
        let allowed = FilterSpec {
            private: Some(vec![MatcherSpec::Exact("b".into())]),
            ..native(&["a", "b"], &[])
        };
        let allowed = Filter::parse(&allowed).unwrap().unwrap();
        assert!(passes_private(&allowed, &["b"]));
        assert!(
            passes_private(&allowed, &["a", "b"]),
            "selected by a, allowed by b"
        );
        assert!(!passes_private(&allowed, &["a"]));
        assert_eq!(
            allowed.exact_only(),
            None,
            "D1 cannot tell private updates apart"
        );
        let everything = FilterSpec {
            private: Some(vec![MatcherSpec::Any]),
            ..native(&["a"], &[])
        };
        let everything = Filter::parse(&everything).unwrap().unwrap();
        assert!(passes_private(&everything, &["a"]));
        assert!(
            !passes_private(&everything, &["z"]),
            "still only what it selected"
        );
    }
}
