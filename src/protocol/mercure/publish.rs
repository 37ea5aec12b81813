//! A Mercure publish body (`application/x-www-form-urlencoded`, both versions) validated into
//! an `Update`, and the ids the hub makes for updates that come without one. The rules are the
//! 1.0 draft's, which only tighten 0.x: each one below says what it protects. The body's size
//! is bounded by the caller before it gets here.

use super::form::{self, Pair};
use super::{check_chars, EARLIEST, RESERVED_TYPE, TOPIC_PARAM, WILDCARD};
use crate::error::Error;
use crate::protocol::topics::{check_topic, MAX_TOPICS, MAX_TOPIC_BYTES};
use url::Url;

/// The longest update id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// The longest update type, in bytes: the same bound as a native event type's length.
pub const MAX_TYPE_BYTES: usize = 64;

const DATA_FIELD: &str = "data";
const ID_FIELD: &str = "id";
const PRIVATE_FIELD: &str = "private";
const TYPE_FIELD: &str = "type";
const RETRY_FIELD: &str = "retry";

/// A validated update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// 1 to `MAX_TOPICS` topics in the publisher's order: the first is the canonical topic, the
    /// others alternates. Repeats are kept.
    pub topics: Vec<String>,
    /// The first `data` field; empty when there is none.
    pub data: String,
    /// The first `id` field; `None` when absent or empty (then the hub makes one, see
    /// `generate_id`): an empty SSE id would reset the subscriber's cursor.
    pub id: Option<String>,
    /// A `private` field is present, whatever its value (even empty), as both versions say.
    pub private: bool,
    /// The first `type` field (the SSE `event`); `None` when absent or empty.
    pub event_type: Option<String>,
    /// The first `retry` field (the SSE reconnection delay, ms); `None` when absent or empty.
    pub retry: Option<u64>,
}

/// Parses and validates a publish body; `hub_url` locates the hub's reserved namespace.
/// Missing or bad fields: 400. Too many topics or a field over its length: 413 (1.0: "Requests
/// exceeding any such limit MUST be rejected with a 413"). Unknown fields are ignored, as both
/// versions require for future extensions.
pub fn parse_publish(body: &[u8], hub_url: &Url) -> Result<Update, Error> {
    let pairs = form::parse(body);
    let first = |name: &str| pairs.iter().find(|p| p.name == name);
    let topics: Vec<&Pair> = pairs.iter().filter(|p| p.name == TOPIC_PARAM).collect();
    check_topic_count(topics.len())?;
    let topics = topics
        .into_iter()
        .enumerate()
        .map(|(i, pair)| parse_topic(pair.value()?, i, hub_url))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Update {
        topics,
        data: first(DATA_FIELD)
            .map(Pair::value)
            .transpose()?
            .unwrap_or_default(),
        id: non_empty(first(ID_FIELD))?.map(parse_id).transpose()?,
        private: first(PRIVATE_FIELD).is_some(),
        event_type: non_empty(first(TYPE_FIELD))?.map(parse_type).transpose()?,
        retry: non_empty(first(RETRY_FIELD))?
            .map(|r| parse_retry(&r))
            .transpose()?,
    })
}

/// The value of a field that counts only when not empty.
fn non_empty(pair: Option<&Pair>) -> Result<Option<String>, Error> {
    pair.filter(|p| !p.is_empty()).map(Pair::value).transpose()
}

/// At least one topic (subscribers find updates by topic); at most `MAX_TOPICS`, since every
/// topic is matched against every subscriber and the count bounds the work of one publish.
fn check_topic_count(count: usize) -> Result<(), Error> {
    if count == 0 {
        return Err(Error::bad_request(
            "a Mercure update needs at least one topic field",
        ));
    }
    if count > MAX_TOPICS {
        return Err(Error::TooLarge(format!(
            "a Mercure update has at most {MAX_TOPICS} topics (got {count})"
        )));
    }
    Ok(())
}

/// One topic: at most `MAX_TOPIC_BYTES` (413; bounds matching and storage), not empty and no
/// control or format characters (topics travel in subscription events and logs: injection,
/// spoofing), not `*` (the wildcard: such a topic could not be subscribed to alone), and
/// outside the hub's namespace (where the hub's own subscription events live: forgery).
fn parse_topic(topic: String, index: usize, hub_url: &Url) -> Result<String, Error> {
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(Error::TooLarge(format!(
            "topic {index} is over {MAX_TOPIC_BYTES} bytes (got {})",
            topic.len()
        )));
    }
    let what = format!("topic {index}");
    check_topic(&topic, &what)?;
    check_chars(&topic, &what)?;
    if topic == WILDCARD {
        return Err(Error::bad_request(
            "a topic may not be exactly `*`, the wildcard that matches every topic",
        ));
    }
    if addresses_hub(&topic, hub_url) {
        return Err(Error::bad_request(format!(
            "{what} is in the hub's reserved namespace ({}), kept for the hub's own events",
            hub_url.path()
        )));
    }
    Ok(topic)
}

/// 1.0: a topic resolved against the hub's URL (WHATWG parser, which removes dot-segments),
/// with percent-encoded unreserved characters decoded, addresses the hub when its path is the
/// hub's path or below it, whatever its scheme or host. So `/.well-known/%6Dercure/x` and
/// `https://other/.well-known/mercure/../mercure/x` are caught too. A topic that cannot be
/// resolved names no hub path and passes.
fn addresses_hub(topic: &str, hub_url: &Url) -> bool {
    let Ok(resolved) = hub_url.join(topic) else {
        return false;
    };
    let path = decode_unreserved(resolved.path());
    let hub = decode_unreserved(hub_url.path());
    let hub = hub.trim_end_matches('/');
    path == hub
        || path
            .strip_prefix(hub)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Decodes the `%XX` escapes of unreserved characters (RFC 3986 6.2.2.2); keeps the others.
fn decode_unreserved(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if let (b'%', [high, low, after @ ..]) = (b, tail) {
            let octet = char::from(*high)
                .to_digit(16)
                .zip(char::from(*low).to_digit(16))
                .and_then(|(h, l)| char::from_u32(h * 16 + l));
            if let Some(c) = octet.filter(|c| c.is_ascii_alphanumeric() || "-._~".contains(*c)) {
                out.push(c);
                rest = after;
                continue;
            }
        }
        out.push(char::from(b));
        rest = tail;
    }
    out
}

/// The publisher's id: at most `MAX_ID_BYTES` (413); not starting with `#` (fragment ids are
/// the hub's own, so a publisher could collide with them); not `earliest` (the reserved
/// "everything" cursor, which could then never be resumed from); no control or format
/// characters (it travels in the SSE `id:` field and the `Last-Event-ID` header: injection).
fn parse_id(id: String) -> Result<String, Error> {
    if id.len() > MAX_ID_BYTES {
        return Err(Error::TooLarge(format!(
            "an update id is at most {MAX_ID_BYTES} bytes (got {})",
            id.len()
        )));
    }
    if id.starts_with('#') {
        return Err(Error::bad_request("an update id may not start with '#'"));
    }
    if id == EARLIEST {
        return Err(Error::bad_request(format!(
            "`{EARLIEST}` is reserved and may not be an update id"
        )));
    }
    check_chars(&id, "an update id")?;
    Ok(id)
}

/// The SSE event type: at most `MAX_TYPE_BYTES` (413); no control or format characters (SSE
/// `event:` field injection); not `mercure`, which the hub alone sets on its subscription
/// events (forgery of hub events).
fn parse_type(event_type: String) -> Result<String, Error> {
    if event_type.len() > MAX_TYPE_BYTES {
        return Err(Error::TooLarge(format!(
            "an update type is at most {MAX_TYPE_BYTES} bytes (got {})",
            event_type.len()
        )));
    }
    check_chars(&event_type, "an update type")?;
    if event_type == RESERVED_TYPE {
        return Err(Error::bad_request(format!(
            "the update type `{RESERVED_TYPE}` is reserved for the hub's own events"
        )));
    }
    Ok(event_type)
}

/// The SSE `retry:` delay: ASCII digits only (anything else could inject into the `retry:`
/// field, and browsers ignore it); beyond `u64` it is a field over its limit (413).
fn parse_retry(retry: &str) -> Result<u64, Error> {
    if !retry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::bad_request(
            "retry is ASCII digits only (milliseconds)",
        ));
    }
    retry
        .parse()
        .map_err(|_| Error::TooLarge(format!("retry is at most {} milliseconds", u64::MAX)))
}

/// `urn:uuid:` and an RFC 9562 version 4 UUID made of `random` (its version and variant bits
/// set): an id for an update that came without one. Random, not time-ordered, so a cursor
/// tells nothing about updates a subscriber may not see (1.0 "Reconnection").
pub fn generate_id(random: [u8; 16]) -> String {
    let mut out = String::with_capacity(45);
    out.push_str("urn:uuid:");
    for (i, b) in random.iter().enumerate() {
        let b = match i {
            6 => (b & 0x0f) | 0x40,
            8 => (b & 0x3f) | 0x80,
            _ => *b,
        };
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests;
