//! The event envelope, the same on every transport:
//! `{"id":42,"channel":"orders","type":"message","data":<JSON>,"time":"2026-11-23T20:00:00.123Z"}`,
//! with `"topics":[…]` after `type` when the event has topics.
//! Encoded by hand from parts that are already valid (names follow their grammar, `data` is
//! compact JSON), so an event is serialised once and its bytes reused.

use super::names::ChannelName;
use super::topics::Topics;
use time::{macros::format_description, OffsetDateTime};

/// RFC 3339 in UTC with milliseconds; `None` only for a time outside the calendar's range.
pub fn format_time(unix_ms: i64) -> Option<String> {
    let nanos = i128::from(unix_ms) * 1_000_000;
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    at.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .ok()
}

/// The envelope's JSON text. `event_type` and `channel` follow grammars without quotes or
/// backslashes, but go through the JSON string encoder anyway so no input can break the frame.
pub fn encode_envelope(
    id: u64,
    channel: &ChannelName,
    event_type: &str,
    topics: Option<&Topics>,
    data: &str,
    time_ms: i64,
) -> String {
    let time = format_time(time_ms).unwrap_or_default();
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string());
    let topics = topics.map_or_else(String::new, |t| format!(",\"topics\":{}", t.to_json()));
    format!(
        "{{\"id\":{id},\"channel\":{},\"type\":{}{topics},\"data\":{data},\"time\":{}}}",
        quote(channel.as_str()),
        quote(event_type),
        quote(&time)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_has_milliseconds_and_z() {
        assert_eq!(format_time(0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            format_time(1_795_464_000_123).as_deref(),
            Some("2026-11-23T20:00:00.123Z")
        );
    }

    #[test]
    fn envelope_bytes() {
        let c = ChannelName::parse("orders").unwrap();
        assert_eq!(
            encode_envelope(42, &c, "message", None, r#"{"a":1}"#, 0),
            r#"{"id":42,"channel":"orders","type":"message","data":{"a":1},"time":"1970-01-01T00:00:00.000Z"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&encode_envelope(1, &c, "t", None, "null", 5)).unwrap();
        assert_eq!(v["data"], serde_json::Value::Null);
        let topics = Topics::parse(vec!["https://x/a".into(), "b \"q\"".into()]).unwrap();
        assert_eq!(
            encode_envelope(7, &c, "t", Some(&topics), "1", 0),
            r#"{"id":7,"channel":"orders","type":"t","topics":["https://x/a","b \"q\""],"data":1,"time":"1970-01-01T00:00:00.000Z"}"#
        );
    }
}
