//! The Mercure wire, pure: subscribe queries and publish bodies of both protocol versions (the
//! deployed 0.x, "draft-dunglas-mercure-07", and the 1.0 draft, "-08") parsed and validated
//! into typed values, update ids, and SSE framing. Authorization (the `mercure` claim and
//! `authorization_details`) lives in `auth::mercure`; dispatch in `channel`. See
//! `docs/mercure.md`.

mod form;
mod framing;
mod publish;
mod subscribe;

pub use framing::sse_event;
pub use publish::{generate_id, parse_publish, Update, MAX_ID_BYTES, MAX_TYPE_BYTES};
pub use subscribe::{parse_subscribe, Subscription};

/// The hub's path, fixed by 0.x ("MUST be /.well-known/mercure") and the 1.0 default.
pub const HUB_PATH: &str = "/.well-known/mercure";
/// The reserved last event id: "send me everything you still have". Never an update's id.
pub const EARLIEST: &str = "earliest";
/// The SSE event type the 1.0 hub keeps for its own subscription events.
pub const RESERVED_TYPE: &str = "mercure";
/// The selector and matcher value that matches every topic, in both versions.
pub const WILDCARD: &str = "*";

/// Subscribe parameters: 0.x.
pub const TOPIC_PARAM: &str = "topic";
pub const LAST_EVENT_ID_PARAM_V0: &str = "lastEventID";
/// Subscribe parameters: 1.0. `match` and `match_exact` are both exact matchers.
pub const MATCH_PARAM: &str = "match";
pub const MATCH_EXACT_PARAM: &str = "match_exact";
pub const MATCH_URLPATTERN_PARAM: &str = "match_urlpattern";
pub const LAST_EVENT_ID_PARAM_V1: &str = "last_event_id";

/// The request header a reconnecting `EventSource` sends.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";

/// Which Mercure protocol a request speaks, told apart by its parameters (`topic=` or
/// `match…=`); one hub answers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 0.x: `topic=` selectors (exact, `*`, URI templates), `lastEventID`.
    V0,
    /// 1.0 draft: `match=`, `match_exact=`, `match_urlpattern=`, `last_event_id`.
    V1,
}

impl Version {
    /// The response header that names the event before the first one sent, which each version
    /// requires when the request carried a last event id.
    pub fn last_event_id_response_header(self) -> &'static str {
        match self {
            Version::V0 => "Last-Event-ID",
            Version::V1 => "Mercure-Last-Event-ID",
        }
    }
}

/// C0 (U+0000–U+001F), U+007F and C1 (U+0080–U+009F) controls.
fn is_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// Unicode general category `Cf` (format characters: bidirectional and zero-width controls,
/// tags), as of the Unicode version of the `regex` crate's tables; a test checks the two agree.
fn is_format(c: char) -> bool {
    const CF: &[(char, char)] = &[
        ('\u{ad}', '\u{ad}'),
        ('\u{600}', '\u{605}'),
        ('\u{61c}', '\u{61c}'),
        ('\u{6dd}', '\u{6dd}'),
        ('\u{70f}', '\u{70f}'),
        ('\u{890}', '\u{891}'),
        ('\u{8e2}', '\u{8e2}'),
        ('\u{180e}', '\u{180e}'),
        ('\u{200b}', '\u{200f}'),
        ('\u{202a}', '\u{202e}'),
        ('\u{2060}', '\u{2064}'),
        ('\u{2066}', '\u{206f}'),
        ('\u{feff}', '\u{feff}'),
        ('\u{fff9}', '\u{fffb}'),
        ('\u{110bd}', '\u{110bd}'),
        ('\u{110cd}', '\u{110cd}'),
        ('\u{13430}', '\u{1343f}'),
        ('\u{1bca0}', '\u{1bca3}'),
        ('\u{1d173}', '\u{1d17a}'),
        ('\u{e0001}', '\u{e0001}'),
        ('\u{e0020}', '\u{e007f}'),
    ];
    CF.iter().any(|&(low, high)| (low..=high).contains(&c))
}

/// The character rule shared by topics, matchers, ids and types (1.0 "Terminology"): no
/// controls, so a value cannot end an SSE field or a header line (field injection), and no
/// format characters, which are invisible and let one identifier pass for another (spoofing).
fn check_chars(value: &str, what: &str) -> Result<(), crate::error::Error> {
    if value.chars().any(|c| is_control(c) || is_format(c)) {
        return Err(crate::error::Error::bad_request(format!(
            "{what} may not hold control characters (U+0000-U+001F, U+007F-U+009F) or Unicode \
             format characters (category Cf)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_table_agrees_with_unicode_cf() {
        let cf = regex::Regex::new(r"\A\p{Cf}\z").unwrap();
        let mut buf = [0; 4];
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(is_format(c), cf.is_match(c.encode_utf8(&mut buf)), "{c:?}");
        }
    }

    #[test]
    fn values_refuse_controls_and_format_characters() {
        for bad in [
            "a\nb",
            "\r",
            "\0",
            "\u{7f}",
            "\u{85}",
            "\u{9f}",
            "a\u{200b}",
            "\u{202e}x",
            "\u{feff}",
        ] {
            assert_eq!(check_chars(bad, "x").unwrap_err().status(), 400, "{bad:?}");
        }
        for good in ["", "a b", "\u{a0}", "é", "🦀", "https://example.com/{id}"] {
            assert!(check_chars(good, "x").is_ok(), "{good:?}");
        }
    }

    #[test]
    fn each_version_names_its_last_event_id_response_header() {
        assert_eq!(Version::V0.last_event_id_response_header(), "Last-Event-ID");
        assert_eq!(
            Version::V1.last_event_id_response_header(),
            "Mercure-Last-Event-ID"
        );
    }
}
