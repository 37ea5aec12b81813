//! Validated names: channels and event types. Both grammars are deliberately narrow: no `/`, so a
//! name can never address another route; no spaces, control characters or newlines, so a name can
//! never inject an SSE field or a log line; a bounded length, so names fit any key or header.

use crate::error::Error;
use std::fmt;

/// The longest channel name (`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`).
pub const CHANNEL_MAX_LEN: usize = 128;
/// The longest event type (`^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`).
pub const EVENT_TYPE_MAX_LEN: usize = 64;
/// The default channel of the Mercure face.
const DEFAULT_MERCURE_CHANNEL: &str = "mercure";
/// The type an event gets when the publisher names none; left out of SSE frames.
pub const DEFAULT_EVENT_TYPE: &str = "message";

/// First character alphanumeric (no leading `.`, so no `..` path tricks); the rest from a small
/// punctuation set that is safe in URLs, SQL keys, SSE fields and tag lists.
fn follows_grammar(s: &str, max: usize) -> bool {
    let bytes = s.as_bytes();
    match bytes.first() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

impl ChannelName {
    pub fn parse(s: &str) -> Result<Self, Error> {
        if follows_grammar(s, CHANNEL_MAX_LEN) {
            Ok(ChannelName(s.to_string()))
        } else {
            Err(Error::bad_request(
                "channel names are 1-128 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `mercure`: the Mercure face's channel unless `MERCURE_CHANNEL` names another.
    pub fn mercure() -> ChannelName {
        ChannelName(DEFAULT_MERCURE_CHANNEL.to_string())
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType(String);

impl EventType {
    pub fn parse(s: &str) -> Result<Self, Error> {
        if follows_grammar(s, EVENT_TYPE_MAX_LEN) {
            Ok(EventType(s.to_string()))
        } else {
            Err(Error::bad_request(
                "event types are 1-64 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_EVENT_TYPE
    }
}

impl Default for EventType {
    fn default() -> Self {
        EventType(DEFAULT_EVENT_TYPE.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn channel_grammar_table() {
        let long = "a".repeat(CHANNEL_MAX_LEN);
        let too_long = "a".repeat(CHANNEL_MAX_LEN + 1);
        for (name, ok) in [
            ("orders", true),
            ("orders:eu-1.v2_x", true),
            ("0", true),
            (long.as_str(), true),
            (too_long.as_str(), false),
            ("", false),
            (".hidden", false),
            ("-x", false),
            ("a/b", false),
            ("a b", false),
            ("a\nb", false),
            ("é", false),
            ("a*", false),
        ] {
            assert_eq!(ChannelName::parse(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn the_mercure_channel_follows_the_grammar() {
        assert_eq!(
            ChannelName::parse(DEFAULT_MERCURE_CHANNEL),
            Ok(ChannelName::mercure())
        );
    }

    #[test]
    fn event_type_grammar_table() {
        assert!(EventType::parse("message").is_ok_and(|t| t.is_default()));
        assert!(EventType::parse("order.created").is_ok());
        assert!(EventType::parse(&"t".repeat(64)).is_ok());
        assert!(EventType::parse(&"t".repeat(65)).is_err());
        assert!(EventType::parse("a\r\ndata: x").is_err());
        assert!(EventType::parse("").is_err());
    }

    proptest! {
        #[test]
        fn accepted_names_carry_no_separator_or_control(s in "\\PC{0,140}") {
            if let Ok(name) = ChannelName::parse(&s) {
                prop_assert!(name.as_str().len() <= CHANNEL_MAX_LEN);
                prop_assert!(!name.as_str().contains(['/', '\n', '\r', ' ', '%', '?', '#']));
            }
        }

        #[test]
        fn grammar_strings_are_accepted(s in "[A-Za-z0-9][A-Za-z0-9._:-]{0,127}") {
            prop_assert!(ChannelName::parse(&s).is_ok());
        }
    }
}
