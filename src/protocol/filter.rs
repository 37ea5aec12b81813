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
mod tests;
