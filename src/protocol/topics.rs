//! Topics within a channel: what an event may carry (`Topics`), the rules every topic and
//! matcher follows, and the matcher kinds protocols name (`MatcherSpec`); `filter` compiles
//! them. See `docs/API.md#topics`.

use super::query::percent_decode;
use crate::error::Error;
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

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
        let t = Topics::parse(vec!["https://x/a".into(), "b\"c".into()]).unwrap();
        assert_eq!(t.to_json(), r#"["https://x/a","b\"c"]"#);
        assert_eq!(Topics::from_json(&t.to_json()), Some(t));
        assert_eq!(Topics::from_json("[]"), None);
        let parsed: Result<Topics, _> = serde_json::from_str(r#"["a\u0001"]"#);
        assert!(parsed.is_err(), "deserialising validates too");
    }
}
