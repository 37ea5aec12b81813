//! A Mercure subscribe request's query: which version it speaks, its matchers as
//! `MatcherSpec`s (validated and compiled once here, kept as text), and the last event id it
//! resumes from. Who may see private updates is decided elsewhere (`auth::mercure`).

use super::form::{self, Pair};
use super::{
    check_chars, Version, LAST_EVENT_ID_PARAM_V0, LAST_EVENT_ID_PARAM_V1, MATCH_EXACT_PARAM,
    MATCH_PARAM, MATCH_URLPATTERN_PARAM, TOPIC_PARAM, WILDCARD,
};
use crate::error::Error;
use crate::protocol::topics::{MatcherSpec, MAX_FILTER_BYTES, MAX_MATCHERS, MAX_TOPIC_BYTES};
use crate::protocol::uritemplate::UriTemplate;
use url::Url;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternOptions};

/// What a subscriber asked for. `matchers` holds 1 to `MAX_MATCHERS` entries in query order,
/// `MAX_FILTER_BYTES` at most, each 1 to `MAX_TOPIC_BYTES`.
/// A 0.x selector that is a valid URI template is two entries, `Exact` then `UriTemplate`,
/// since 0.x matches a topic equal to the template itself before trying its expansions.
/// A 1.0 `UrlPattern` may be relative: it is matched with the hub's URL as its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub version: Version,
    pub matchers: Vec<MatcherSpec>,
    /// From the `Last-Event-ID` header, else the version's query parameter; `Some("")` when
    /// given empty, which the hub must still answer (with its last-event-id response header).
    pub last_event_id: Option<String>,
}

/// Parses the query of a subscribe request (without the `?`). The query is
/// `application/x-www-form-urlencoded` as WHATWG parses it (1.0 requires that algorithm). Both
/// versions' matchers together, no matcher at all, an unknown `match…` parameter, a bad value or
/// too many matchers or bytes: 400. Relative URL patterns are resolved against `hub_url`.
pub fn parse_subscribe(
    query: &str,
    last_event_id_header: Option<&str>,
    hub_url: &Url,
) -> Result<Subscription, Error> {
    let pairs = form::parse(query.as_bytes());
    let version = version(&pairs)?;
    let params: Vec<&Pair> = match version {
        Version::V0 => pairs.iter().filter(|p| p.name == TOPIC_PARAM).collect(),
        Version::V1 => match_params(&pairs)?,
    };
    check_count(params.len())?;
    let mut matchers = Vec::with_capacity(params.len());
    for pair in params {
        let value = pair.value()?;
        check_value(&value, &pair.name)?;
        match version {
            Version::V0 => push_selector(value, &mut matchers)?,
            Version::V1 => matchers.push(matcher(&pair.name, value, hub_url)?),
        }
    }
    check_count(matchers.len())?;
    check_total_bytes(&matchers)?;
    let last_event_id = last_event_id(&pairs, version, last_event_id_header)?;
    Ok(Subscription {
        version,
        matchers,
        last_event_id,
    })
}

/// 1.0 reserves every parameter name that starts with `match`, in any case.
fn in_match_namespace(name: &str) -> bool {
    name.get(..MATCH_PARAM.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(MATCH_PARAM))
}

/// 0.x speaks `topic=`, 1.0 `match…=`. A request mixing them is refused rather than half read,
/// so a client never gets a subscription narrower or wider than it asked for.
fn version(pairs: &[Pair]) -> Result<Version, Error> {
    let topic = pairs.iter().any(|p| p.name == TOPIC_PARAM);
    let matcher = pairs.iter().any(|p| in_match_namespace(&p.name));
    match (topic, matcher) {
        (true, false) => Ok(Version::V0),
        (false, true) => Ok(Version::V1),
        (true, true) => Err(Error::bad_request(
            "a Mercure subscription uses either topic= (protocol 0.x) or match= and \
             match_urlpattern= (1.0), not both",
        )),
        (false, false) => Err(Error::bad_request(
            "a Mercure subscription needs at least one topic= (protocol 0.x) or match= / \
             match_urlpattern= (1.0) parameter",
        )),
    }
}

/// The 1.0 matcher parameters. Names are case-sensitive; any other name in the `match`
/// namespace (`MATCH`, `matchFoo`, `match_uritemplate`) is a 400, so a misspelt or unsupported
/// matcher fails loudly instead of silently subscribing to less.
fn match_params(pairs: &[Pair]) -> Result<Vec<&Pair>, Error> {
    let known = [MATCH_PARAM, MATCH_EXACT_PARAM, MATCH_URLPATTERN_PARAM];
    let params: Vec<&Pair> = pairs
        .iter()
        .filter(|p| in_match_namespace(&p.name))
        .collect();
    if let Some(unknown) = params.iter().find(|p| !known.contains(&p.name.as_str())) {
        let shown: String = unknown.name.chars().take(64).collect();
        return Err(Error::bad_request(format!(
            "unknown topic matcher parameter {shown:?}: this hub supports match, match_exact and \
             match_urlpattern"
        )));
    }
    Ok(params)
}

/// At most `MAX_MATCHERS`: each matcher is tried on every update, so the count bounds the work
/// one subscriber causes per publish. Over it is a 400, as 1.0 requires of subscribe limits.
fn check_count(count: usize) -> Result<(), Error> {
    if count > MAX_MATCHERS {
        return Err(Error::bad_request(format!(
            "a Mercure subscription holds at most {MAX_MATCHERS} matchers (a 0.x URI template \
             selector counts as two); got {count}"
        )));
    }
    Ok(())
}

/// At most `MAX_FILTER_BYTES` of matcher text in all (a 0.x template counted twice, `*` as
/// one byte), as every filter: a subscription travels to the channel's object in a URL.
fn check_total_bytes(matchers: &[MatcherSpec]) -> Result<(), Error> {
    let bytes: usize = matchers
        .iter()
        .map(|m| match m {
            MatcherSpec::Any => 1,
            MatcherSpec::Exact(s) | MatcherSpec::UrlPattern(s) | MatcherSpec::UriTemplate(s) => {
                s.len()
            }
        })
        .sum();
    if bytes > MAX_FILTER_BYTES {
        return Err(Error::bad_request(format!(
            "a Mercure subscription's matchers hold at most {MAX_FILTER_BYTES} bytes together \
             (got {bytes})"
        )));
    }
    Ok(())
}

/// Each value: 1 to `MAX_TOPIC_BYTES`, which bounds compiling and matching it (an empty one
/// could match no topic, as no topic is empty), and no control or format characters (1.0;
/// also applied to 0.x selectors, which could never equal a topic holding them, and which
/// travel into logs and subscription events).
fn check_value(value: &str, name: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::bad_request(format!(
            "a {name} value may not be empty: it would match no topic"
        )));
    }
    if value.len() > MAX_TOPIC_BYTES {
        return Err(Error::bad_request(format!(
            "a {name} value is at most {MAX_TOPIC_BYTES} bytes (got {})",
            value.len()
        )));
    }
    check_chars(value, &format!("a {name} value"))
}

/// A 0.x selector (spec "Topic Selectors"): `*` matches every topic; otherwise a topic equal to
/// the selector matches; then, if the selector is a valid URI template, any expansion of it.
/// Like the reference hub, only selectors holding `{` are tried as templates, and one that is
/// not a valid template is a plain string; a valid one we refuse to compile is a 400.
fn push_selector(selector: String, matchers: &mut Vec<MatcherSpec>) -> Result<(), Error> {
    if selector == WILDCARD {
        matchers.push(MatcherSpec::Any);
        return Ok(());
    }
    if selector.contains('{') {
        match UriTemplate::parse(&selector) {
            Ok(_) => {
                matchers.push(MatcherSpec::Exact(selector.clone()));
                matchers.push(MatcherSpec::UriTemplate(selector));
                return Ok(());
            }
            Err(Error::TooLarge(detail)) => return Err(Error::bad_request(detail)),
            Err(_) => {}
        }
    }
    matchers.push(MatcherSpec::Exact(selector));
    Ok(())
}

/// A 1.0 matcher. `*` is the wildcard whatever the parameter; `match` and `match_exact`
/// compare bytes; a `match_urlpattern` value must compile (a malformed pattern is a 400).
fn matcher(name: &str, value: String, hub_url: &Url) -> Result<MatcherSpec, Error> {
    if value == WILDCARD {
        return Ok(MatcherSpec::Any);
    }
    if name == MATCH_URLPATTERN_PARAM {
        compile_pattern(&value, hub_url)?;
        return Ok(MatcherSpec::UrlPattern(value));
    }
    Ok(MatcherSpec::Exact(value))
}

/// Compiles a URL pattern into the `regex` crate's linear-time automata (1.0 requires a
/// linear-time engine), with the hub's URL as base for a relative pattern and `ignoreCase`
/// off, as 1.0 requires.
fn compile_pattern(source: &str, hub_url: &Url) -> Result<UrlPattern, Error> {
    let bad = |e: urlpattern::Error| {
        Error::bad_request(format!(
            "a match_urlpattern value is not a URL pattern: {e}"
        ))
    };
    let init =
        UrlPatternInit::parse_constructor_string::<regex::Regex>(source, Some(hub_url.clone()))
            .map_err(bad)?;
    <UrlPattern>::parse(init, UrlPatternOptions::default()).map_err(bad)
}

/// The header wins over the query parameter (both versions: "MUST take precedence"); each
/// version reads only its own parameter name, and the first occurrence of it.
fn last_event_id(
    pairs: &[Pair],
    version: Version,
    header: Option<&str>,
) -> Result<Option<String>, Error> {
    if let Some(header) = header {
        return Ok(Some(header.to_string()));
    }
    let name = match version {
        Version::V0 => LAST_EVENT_ID_PARAM_V0,
        Version::V1 => LAST_EVENT_ID_PARAM_V1,
    };
    pairs
        .iter()
        .find(|p| p.name == name)
        .map(Pair::value)
        .transpose()
}

#[cfg(test)]
mod tests;
