//! Publish bodies: one event `{"type"?, "data"}` or a JSON array of them. Parsed and checked
//! whole before anything is stored, so a batch with one bad item is refused entirely. What is
//! stored must be readable by every common JSON reader (`json`): bounded depth, Unicode strings,
//! finite numbers.

use super::json;
use super::names::EventType;
use super::topics::Topics;
use crate::error::Error;
use serde::Deserialize;
use serde_json::value::RawValue;

/// An event the hub has accepted but not yet numbered. `data` is compact JSON text, made once
/// here and then stored, mirrored and sent as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_type: EventType,
    pub data: String,
    pub topics: Option<Topics>,
}

/// The limits a publish body is held to (see `Config`).
#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    pub max_data_bytes: usize,
    pub max_batch: usize,
    /// Levels of objects and arrays allowed inside `data`.
    pub max_depth: usize,
}

impl PublishLimits {
    /// Refuses `data` (compact JSON text) over the size limit. Its depth, strings and numbers
    /// were checked with the body or frame around it (`check_text`).
    pub fn check_data(&self, data: &str) -> Result<(), Error> {
        if data.len() > self.max_data_bytes {
            return Err(Error::TooLarge(format!(
                "an event's data may be at most {} bytes serialised (got {})",
                self.max_data_bytes,
                data.len()
            )));
        }
        Ok(())
    }

    /// Checks a whole body or frame before it is parsed, in one pass: `wrapping` levels of it
    /// hold the data (an event object: 1; a batch array and its objects: 2), so data deeper
    /// than its limit is refused here, nothing deeper is ever parsed, and no string or number
    /// in it is unreadable.
    pub fn check_text(&self, text: &str, wrapping: usize) -> Result<(), Error> {
        json::check(text, self.max_depth.saturating_add(wrapping))
            .map_err(|fault| fault.into_error(|| self.too_deep()))
    }

    fn too_deep(&self) -> String {
        format!(
            "data may nest objects and arrays at most {} levels deep (MAX_DATA_DEPTH)",
            self.max_depth
        )
    }
}

/// Unknown fields are refused: a typo such as `"date"` must not silently publish `data: null`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    #[serde(rename = "type", default, deserialize_with = "present")]
    event_type: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, deserialize_with = "present_list")]
    topics: Option<Vec<String>>,
}

/// For optional list members: absent is `None`, an explicit `null` is refused.
pub fn present_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    Vec::<String>::deserialize(d).map(Some)
}

/// For optional string members: absent is `None`, but an explicit `null` is refused like any
/// other non-string, rather than read as absent.
pub fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// Parses and validates a whole publish body.
pub fn parse_publish(body: &[u8], limits: PublishLimits) -> Result<Vec<NewEvent>, Error> {
    let text =
        std::str::from_utf8(body).map_err(|_| Error::InvalidJson("body is not UTF-8".into()))?;
    // One event object holds its data one level down; a batch array two.
    let wrapping = if text.trim_start().starts_with('[') {
        2
    } else {
        1
    };
    limits.check_text(text, wrapping)?;
    let raw: &RawValue = serde_json::from_str(text)?;
    let items: Vec<&RawValue> = match raw.get().as_bytes().first() {
        Some(b'[') => serde_json::from_str(raw.get())?,
        Some(b'{') => vec![raw],
        _ => {
            return Err(Error::bad_request(
                "the body must be one event object or an array of them",
            ))
        }
    };
    if items.is_empty() {
        return Err(Error::bad_request("an empty batch publishes nothing"));
    }
    if items.len() > limits.max_batch {
        return Err(Error::TooLarge(format!(
            "a batch holds at most {} events (got {})",
            limits.max_batch,
            items.len()
        )));
    }
    let batch = items.len() > 1 || raw.get().starts_with('[');
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = |msg: String| {
                if batch {
                    format!("events[{i}]: {msg}")
                } else {
                    msg
                }
            };
            parse_item(item, limits).map_err(|e| match e {
                Error::BadRequest(m) => Error::BadRequest(at(m)),
                Error::TooLarge(m) => Error::TooLarge(at(m)),
                Error::TooDeep(m) => Error::TooDeep(at(m)),
                Error::InvalidJson(m) => Error::InvalidJson(at(m)),
                other => other,
            })
        })
        .collect()
}

fn parse_item(item: &RawValue, limits: PublishLimits) -> Result<NewEvent, Error> {
    let parsed: Item<'_> = serde_json::from_str(item.get()).map_err(|e| {
        Error::bad_request(format!(
            "an event is {{\"type\"?: string, \"data\": any JSON, \"topics\"?: [string]}}: {e}"
        ))
    })?;
    let event_type = match parsed.event_type {
        Some(t) => EventType::parse(&t)?,
        None => EventType::default(),
    };
    let data = compact(parsed.data.get());
    limits.check_data(&data)?;
    let topics = parsed.topics.map(Topics::parse).transpose()?;
    Ok(NewEvent {
        event_type,
        data,
        topics,
    })
}

/// The longest `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;

/// An `Idempotency-Key`: 1-255 visible ASCII characters, so it is safe as a storage key and in
/// logs.
pub fn parse_idempotency_key(s: &str) -> Result<String, Error> {
    let ok = !s.is_empty()
        && s.len() <= IDEMPOTENCY_KEY_MAX_LEN
        && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(s.to_string())
    } else {
        Err(Error::bad_request(
            "an idempotency key is 1-255 visible ASCII characters",
        ))
    }
}

/// A digest of a batch's types, data and topics, to tell a retry (same body) from a reuse of
/// the key with another body. Each part is length-prefixed, so no two batches share an input;
/// topics are marked by a length no part can have, so an event without them hashes as it did
/// before topics existed.
pub fn fingerprint<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a Topics>)>,
) -> String {
    use sha2::{Digest, Sha256};
    fn part(hash: &mut Sha256, len: u64, text: &str) {
        hash.update(len.to_be_bytes());
        hash.update(text.as_bytes());
    }
    let mut hash = Sha256::new();
    for (event_type, data, topics) in items {
        part(&mut hash, event_type.len() as u64, event_type);
        part(&mut hash, data.len() as u64, data);
        if let Some(topics) = topics {
            part(&mut hash, u64::MAX, "");
            let json = topics.to_json();
            part(&mut hash, json.len() as u64, &json);
        }
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Drops the whitespace between JSON tokens of already-valid JSON, keeping every string and
/// number exactly as sent (re-serialising through `Value` would round large numbers). The result
/// is one line, which SSE framing relies on: JSON strings cannot hold a raw newline.
pub fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: PublishLimits = PublishLimits {
        max_data_bytes: 64,
        max_batch: 3,
        max_depth: 4,
    };

    fn parse(s: &str) -> Result<Vec<NewEvent>, Error> {
        parse_publish(s.as_bytes(), LIMITS)
    }

    #[test]
    fn one_event_and_a_batch() {
        let one = parse(r#"{"data": {"a": [1, 2]}}"#).unwrap_or_default();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].data, r#"{"a":[1,2]}"#);
        assert!(one[0].event_type.is_default());
        let batch = parse(r#"[{"type":"x.y","data":1},{"data":"s p a c e"}]"#).unwrap_or_default();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].event_type.as_str(), "x.y");
        assert_eq!(batch[1].data, r#""s p a c e""#);
    }

    #[test]
    fn bad_bodies_table() {
        for (body, status) in [
            ("", 400),
            ("not json", 400),
            ("{\"data\":1", 400),
            ("42", 400),
            ("\"x\"", 400),
            ("[]", 400),
            ("{}", 400),
            (r#"{"type":"x"}"#, 400),
            (r#"{"data":1,"extra":2}"#, 400),
            (r#"{"data":1,"type":"bad type"}"#, 400),
            (r#"{"data":1,"type":7}"#, 400),
            (r#"{"data":1,"type":null}"#, 400),
            (r#"[{"data":1}, 5]"#, 400),
            (r#"[{"data":1},{"data":1,"type":"\n"}]"#, 400),
            (r#"[{"data":1},{"data":1},{"data":1},{"data":1}]"#, 413),
        ] {
            let got = parse(body).map_err(|e| e.status());
            assert_eq!(got.err(), Some(status), "{body:?}");
        }
        let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(63));
        assert_eq!(parse(&big).map_err(|e| e.status()).err(), Some(413));
        let fits = format!(r#"{{"data":"{}"}}"#, "x".repeat(62));
        assert!(parse(&fits).is_ok());
    }

    #[test]
    fn unreadable_data_is_refused_whole_batches_too() {
        let at_limit = r#"{"data":[[{"a":[1]}]]}"#;
        assert!(parse(at_limit).is_ok(), "4 levels inside data");
        for (body, code) in [
            (r#"{"data":[[{"a":[[1]]}]]}"#, "too_deep"),
            (r#"[{"data":1},{"data":[[[[[1]]]]]}]"#, "too_deep"),
            (r#"[{"data":[[[[[[[[[[1]]]]]]]]]]}]"#, "too_deep"),
            (r#"{"data":"\ud800"}"#, "invalid_json"),
            (r#"[{"data":1},{"data":{"k":"\udfff"}}]"#, "invalid_json"),
            (r#"{"data":1e400}"#, "invalid_json"),
            (r#"[{"data":[1,-2e308]}]"#, "invalid_json"),
            (r#"{"type":"\ud800","data":1}"#, "invalid_json"),
        ] {
            let err = parse(body).err();
            assert_eq!(
                err.as_ref().map(|e| (e.status(), e.code())),
                Some((400, code)),
                "{body}"
            );
        }
        let deep = parse(r#"{"data":[[[[[1]]]]]}"#).err();
        assert!(
            matches!(&deep, Some(Error::TooDeep(m)) if m.contains(" 4 levels")),
            "{deep:?}"
        );
        // Depth in a string is text, and a surrogate pair is one character.
        assert!(parse(r#"{"data":"[[[[[[[[[[ \ud83d\ude00"}"#).is_ok());
        assert!(parse(r#"{"data":1e308}"#).is_ok());
    }

    #[test]
    fn batch_errors_name_the_item() {
        let err = parse(r#"[{"data":1},{"data":1,"type":"no good"}]"#).err();
        assert!(matches!(err, Some(Error::BadRequest(m)) if m.starts_with("events[1]")));
    }

    #[test]
    fn idempotency_keys_and_fingerprints() {
        assert!(parse_idempotency_key("order-7/retry:1").is_ok());
        for bad in ["", "has space", "tab\t", "é", &"k".repeat(256)] {
            assert!(parse_idempotency_key(bad).is_err(), "{bad:?}");
        }
        let a = fingerprint([("message", "1", None)]);
        assert_eq!(a, fingerprint([("message", "1", None)]));
        assert_ne!(a, fingerprint([("message", "2", None)]));
        assert_ne!(
            fingerprint([("ab", "c", None)]),
            fingerprint([("a", "bc", None)])
        );
        assert_ne!(
            fingerprint([("a", "1", None), ("a", "2", None)]),
            fingerprint([("a", "2", None), ("a", "1", None)])
        );
        // Without topics, the digest is what it was before topics existed.
        assert_eq!(
            a, "ce6b6b28587e3484e61b0bfc66e461cdf7d73b6cf817e5cd5b8a5c276573610c",
            "without topics, the digest stored keys were made with"
        );
        let t = Topics::parse(vec!["a".into()]).unwrap();
        let u = Topics::parse(vec!["b".into()]).unwrap();
        assert_ne!(a, fingerprint([("message", "1", Some(&t))]));
        assert_ne!(
            fingerprint([("message", "1", Some(&t))]),
            fingerprint([("message", "1", Some(&u))])
        );
    }

    #[test]
    fn compact_keeps_strings_and_numbers() {
        assert_eq!(
            compact("{ \"a b\" : [ 1 ,\n 2e400 , \"q\\\" x\" ] }"),
            r#"{"a b":[1,2e400,"q\" x"]}"#
        );
        assert_eq!(
            compact("12345678901234567890123"),
            "12345678901234567890123"
        );
    }

    proptest! {
        #[test]
        fn compact_is_one_line_and_equal_as_json(v in any_json()) {
            let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
            let c = compact(&pretty);
            prop_assert!(!c.contains('\n') && !c.contains('\r'));
            let back: serde_json::Value = serde_json::from_str(&c).unwrap_or_default();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
        }
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
