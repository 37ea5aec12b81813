//! Topics within a channel: what an event may carry (`Topics`) and what a subscriber may ask
//! for (`Filter`: exact topics and WHATWG URL Patterns, any of which lets an event through).
//! Patterns are compiled by the `urlpattern` crate into the `regex` crate's automata, which
//! match in time linear in the topic: no pattern a client sends can make matching backtrack.
//! See `docs/API.md#topics`.

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// The most topics one event carries.
pub const MAX_TOPICS: usize = 16;
/// The longest topic, and the longest pattern, in bytes of UTF-8.
pub const MAX_TOPIC_BYTES: usize = 1024;
/// The most matchers (`topic=` and `topic_pattern=` together) one subscription holds.
pub const MAX_MATCHERS: usize = 32;
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
