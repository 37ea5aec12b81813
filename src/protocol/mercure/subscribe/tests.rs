//! One test per subscribe rule of the Mercure specs (0.x and the 1.0 draft), named after it.

use super::*;
use crate::protocol::mercure::EARLIEST;
use proptest::prelude::*;
use MatcherSpec::{Any, Exact, UriTemplate as Template, UrlPattern as Pattern};

fn hub() -> Url {
    Url::parse("https://hub.example/.well-known/mercure").unwrap()
}

fn parse(query: &str) -> Result<Subscription, Error> {
    parse_subscribe(query, None, &hub())
}

fn matchers(query: &str) -> Vec<MatcherSpec> {
    parse(query).unwrap().matchers
}

fn status(query: &str) -> u16 {
    parse(query).unwrap_err().status()
}

fn exact(s: &str) -> MatcherSpec {
    Exact(s.into())
}

#[test]
fn v0_topic_selectors_are_kept_in_query_order() {
    let sub = parse("topic=foo&topic=https%3A%2F%2Fexample.com%2Fbar&topic=foo").unwrap();
    assert_eq!(sub.version, Version::V0);
    assert_eq!(
        sub.matchers,
        [exact("foo"), exact("https://example.com/bar"), exact("foo")]
    );
    assert_eq!(sub.last_event_id, None);
}

#[test]
fn v0_wildcard_selector_matches_every_topic() {
    assert_eq!(matchers("topic=*"), [Any]);
    assert_eq!(matchers("topic=%2A"), [Any]);
    assert_eq!(matchers("topic=**"), [exact("**")]);
}

#[test]
fn v0_template_selector_matches_exactly_first_then_as_a_template() {
    let tpl = "https://example.com/books/{id}";
    assert_eq!(
        matchers("topic=https://example.com/books/%7Bid%7D"),
        [exact(tpl), Template(tpl.into())]
    );
}

#[test]
fn v0_selector_that_is_not_a_valid_template_is_a_plain_string() {
    assert_eq!(
        matchers("topic=https://e.com/%7B"),
        [exact("https://e.com/{")]
    );
    assert_eq!(matchers("topic=a%7Bb+c%7D"), [exact("a{b c}")]);
    assert_eq!(
        matchers("topic=will-not-match%7D"),
        [exact("will-not-match}")]
    );
}

#[test]
fn v0_template_past_the_compile_limits_is_400() {
    assert_eq!(status("topic=%7Ba:9999%7D"), 400);
}

#[test]
fn v1_match_and_match_exact_are_exact_matchers() {
    let sub = parse("match=foo&match_exact=https%3A%2F%2Fexample.com%2F%7Bid%7D").unwrap();
    assert_eq!(sub.version, Version::V1);
    assert_eq!(
        sub.matchers,
        [exact("foo"), exact("https://example.com/{id}")]
    );
}

#[test]
fn v1_wildcard_is_recognized_before_the_matcher_type() {
    assert_eq!(
        matchers("match=*&match_exact=*&match_urlpattern=*"),
        [Any, Any, Any]
    );
}

#[test]
fn v1_match_urlpattern_must_compile() {
    assert_eq!(
        matchers("match_urlpattern=https://example.com/books/:id"),
        [Pattern("https://example.com/books/:id".into())]
    );
    for bad in [
        "https://example.com/(",
        "https://example.com/:id(",
        "https://exa%20mple.com/{",
    ] {
        assert_eq!(status(&format!("match_urlpattern={bad}")), 400, "{bad}");
    }
}

#[test]
fn v1_relative_urlpattern_resolves_against_the_hub_url() {
    let relative = "/.well-known/mercure/subscriptions/exact/:topic/:subscriber";
    assert_eq!(
        matchers(&format!("match_urlpattern={relative}")),
        [Pattern(relative.into())]
    );
    let no_base = UrlPatternInit::parse_constructor_string::<regex::Regex>(relative, None);
    assert!(no_base.is_err(), "it needs the base");
}

#[test]
fn v1_reserved_match_namespace_rejects_unsupported_names() {
    for name in [
        "MATCH",
        "Match",
        "matchFoo",
        "match_uritemplate",
        "match_",
        "match_Exact",
        "MATCH_URLPATTERN",
        "matches",
        "%6Datch_x",
    ] {
        assert_eq!(status(&format!("match=a&{name}=b")), 400, "{name}");
        assert_eq!(status(&format!("{name}=b")), 400, "{name} alone");
    }
    assert_eq!(matchers("match=a&mat=b&xmatch=c&foo=d"), [exact("a")]);
}

#[test]
fn v1_values_must_be_utf8() {
    assert_eq!(status("match=%FF"), 400);
    assert_eq!(status("match_urlpattern=https://e.com/%C3"), 400);
}

#[test]
fn v1_values_refuse_controls_and_format_characters() {
    for bad in [
        "a%0Ab",
        "a%0D",
        "%00",
        "%7F",
        "%C2%85",
        "%C2%9F",
        "a%E2%80%8Bb",
        "%E2%80%AE",
        "%EF%BB%BF",
    ] {
        assert_eq!(status(&format!("match={bad}")), 400, "{bad}");
        assert_eq!(status(&format!("topic={bad}")), 400, "0.x too: {bad}");
    }
    assert_eq!(matchers("match=%C2%A0%F0%9F%A6%80"), [exact("\u{a0}🦀")]);
}

#[test]
fn topic_and_match_together_are_400() {
    assert_eq!(status("topic=a&match=b"), 400);
    assert_eq!(status("topic=a&matchFoo=b"), 400);
    let err = parse("match_urlpattern=https://e.com/:x&topic=a").unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
}

#[test]
fn no_matcher_is_400() {
    for query in [
        "",
        "foo=bar",
        "lastEventID=1",
        "last_event_id=1",
        "Topic=a",
        "&&",
    ] {
        assert_eq!(status(query), 400, "{query:?}");
    }
}

#[test]
fn an_empty_matcher_is_400() {
    for query in [
        "match=",
        "match",
        "match_urlpattern=",
        "topic=",
        "topic",
        "topic=a&topic=",
    ] {
        assert_eq!(status(query), 400, "{query}");
    }
}

#[test]
fn at_most_max_matchers() {
    let query = |name: &str, value: &str, n: usize| vec![format!("{name}={value}"); n].join("&");
    assert_eq!(
        matchers(&query("match", "a", MAX_MATCHERS)).len(),
        MAX_MATCHERS
    );
    assert_eq!(status(&query("match", "a", MAX_MATCHERS + 1)), 400);
    assert_eq!(status(&query("topic", "a", MAX_MATCHERS + 1)), 400);
    let template = "https://e.com/%7Bid%7D";
    let half = MAX_MATCHERS / 2;
    assert_eq!(
        matchers(&query("topic", template, half)).len(),
        MAX_MATCHERS
    );
    assert_eq!(
        status(&query("topic", template, half + 1)),
        400,
        "a template counts twice"
    );
}

#[test]
fn all_matchers_hold_at_most_max_filter_bytes() {
    let value = "a".repeat(MAX_FILTER_BYTES / 8);
    let fits = vec![format!("match={value}"); 8].join("&");
    assert_eq!(matchers(&fits).len(), 8);
    assert_eq!(status(&format!("{fits}&match=b")), 400);
    let template = format!("topic={}%7Bid%7D", "t".repeat(MAX_FILTER_BYTES / 8 - 4));
    assert_eq!(
        status(&vec![template; 5].join("&")),
        400,
        "a template counts twice"
    );
}

#[test]
fn each_matcher_is_at_most_max_topic_bytes() {
    let at = "a".repeat(MAX_TOPIC_BYTES);
    assert_eq!(matchers(&format!("match={at}")), [exact(&at)]);
    assert_eq!(status(&format!("match={at}a")), 400);
    assert_eq!(status(&format!("topic={at}a")), 400);
    assert_eq!(status(&format!("match_urlpattern=https://e.com/{at}")), 400);
}

#[test]
fn v0_last_event_id_query_parameter() {
    assert_eq!(
        parse("topic=a&lastEventID=urn:x")
            .unwrap()
            .last_event_id
            .as_deref(),
        Some("urn:x")
    );
    assert_eq!(
        parse("topic=a&last_event_id=x").unwrap().last_event_id,
        None,
        "1.0's name"
    );
    let first = parse("topic=a&lastEventID=1&lastEventID=2").unwrap();
    assert_eq!(first.last_event_id.as_deref(), Some("1"));
}

#[test]
fn v1_last_event_id_query_parameter() {
    assert_eq!(
        parse("match=a&last_event_id=%23f")
            .unwrap()
            .last_event_id
            .as_deref(),
        Some("#f")
    );
    assert_eq!(
        parse("match=a&lastEventID=x").unwrap().last_event_id,
        None,
        "0.x's name"
    );
    assert_eq!(status("match=a&last_event_id=%FF"), 400);
}

#[test]
fn last_event_id_header_takes_precedence_over_the_query() {
    for query in ["topic=a&lastEventID=q", "match=a&last_event_id=q"] {
        let sub = parse_subscribe(query, Some("h"), &hub()).unwrap();
        assert_eq!(sub.last_event_id.as_deref(), Some("h"));
        let empty = parse_subscribe(query, Some(""), &hub()).unwrap();
        assert_eq!(
            empty.last_event_id.as_deref(),
            Some(""),
            "an empty header still wins"
        );
    }
    let header_only = parse_subscribe("match=a", Some(EARLIEST), &hub()).unwrap();
    assert_eq!(header_only.last_event_id.as_deref(), Some(EARLIEST));
}

#[test]
fn an_empty_last_event_id_counts_as_present() {
    for query in [
        "topic=a&lastEventID=",
        "topic=a&lastEventID",
        "match=a&last_event_id",
    ] {
        assert_eq!(
            parse(query).unwrap().last_event_id.as_deref(),
            Some(""),
            "{query}"
        );
    }
}

#[test]
fn query_is_parsed_as_whatwg_urlencoded() {
    assert_eq!(matchers("match=a+b%2Bc"), [exact("a b+c")]);
    assert_eq!(matchers("match=50%"), [exact("50%")], "a stray % is kept");
    assert_eq!(
        matchers("%6D%61%74%63%68=x"),
        [exact("x")],
        "names are decoded"
    );
    assert_eq!(matchers("match=a;match=b"), [exact("a;match=b")]);
}

#[test]
fn other_parameters_are_ignored() {
    assert_eq!(matchers("authorization=t&topic=a&foo"), [exact("a")]);
    assert_eq!(matchers("token=t&match=a&x=%FF"), [exact("a")]);
}

/// The conformance suite's subscriptions, as `URLSearchParams` encodes them.
#[test]
fn conformance_suite_subscriptions() {
    let r = "3f9a1b2c3d4e5f60718293a4b5c6d7e8f9012345";
    assert_eq!(
        matchers(&format!("topic=foo&topic={r}")),
        [exact("foo"), exact(r)]
    );
    let uri = format!("https://example.net/foo/{r}");
    assert_eq!(
        matchers(&format!("topic=https%3A%2F%2Fexample.net%2Ffoo%2F{r}")),
        [exact(&uri)]
    );
    let tpl = "https://example.net/foo/{random}";
    assert_eq!(
        matchers("topic=https%3A%2F%2Fexample.net%2Ffoo%2F%7Brandom%7D"),
        [exact(tpl), Template(tpl.into())]
    );
    let pattern = "https://example.net/foo/:random";
    assert_eq!(
        matchers("match_urlpattern=https%3A%2F%2Fexample.net%2Ffoo%2F%3Arandom"),
        [Pattern(pattern.into())]
    );
    assert_eq!(matchers("match=another-name"), [exact("another-name")]);
}

proptest! {
    #[test]
    fn never_panics(query in "[a-zA-Z_%0-9=&+*:/{}.\\-]{0,80}", header in proptest::option::of("\\PC{0,8}")) {
        if let Ok(sub) = parse_subscribe(&query, header.as_deref(), &hub()) {
            prop_assert!(!sub.matchers.is_empty() && sub.matchers.len() <= MAX_MATCHERS);
        }
    }
}
