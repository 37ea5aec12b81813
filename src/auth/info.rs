//! A presence member's `info`: the token's `edgehub.info` claim. The backend that mints a
//! user's token sets it (`POST /tokens` takes `info`), so nobody can show another's name or
//! avatar. A JSON object of at most `MAX_INFO_BYTES` as compact JSON, nested at most
//! `MAX_INFO_DEPTH` deep, readable by every common JSON reader; kept as that compact text. A
//! token whose `info` breaks these rules does not verify. See `docs/API.md#minting`.

use crate::error::Error;
use crate::protocol::json;
use crate::protocol::publish::compact;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// The largest `info`, as compact JSON: it goes out in every presence event of its member.
pub const MAX_INFO_BYTES: usize = 1024;
/// The deepest `info` (the object itself is level 1).
pub const MAX_INFO_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info(String);

impl Info {
    /// Checks and compacts `raw` (one JSON value): 400 unless it is an object within the limits.
    pub fn parse(raw: &str) -> Result<Info, Error> {
        json::check(raw, MAX_INFO_DEPTH).map_err(|fault| {
            fault.into_error(|| format!("info nests at most {MAX_INFO_DEPTH} levels deep"))
        })?;
        let value: &RawValue = serde_json::from_str(raw)
            .map_err(|e| Error::InvalidJson(format!("info is one JSON object: {e}")))?;
        let text = compact(value.get());
        if !text.starts_with('{') {
            return Err(Error::bad_request("info is a JSON object"));
        }
        if text.len() > MAX_INFO_BYTES {
            return Err(Error::bad_request(format!(
                "info may be at most {MAX_INFO_BYTES} bytes as compact JSON; got {}",
                text.len()
            )));
        }
        Ok(Info(text))
    }

    /// The compact JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl Serialize for Info {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.0.clone()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Info {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Info::parse(raw.get()).map_err(|e| serde::de::Error::custom(e.problem().detail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_within_the_limits() {
        let info = Info::parse(r#"{ "name": "Ada", "avatar": "a.png", "tags": [1, 2] }"#).unwrap();
        assert_eq!(
            info.as_json(),
            r#"{"name":"Ada","avatar":"a.png","tags":[1,2]}"#
        );
        let at_limit = format!(r#"{{"n":"{}"}}"#, "x".repeat(MAX_INFO_BYTES - 8));
        assert_eq!(
            Info::parse(&at_limit).unwrap().as_json().len(),
            MAX_INFO_BYTES
        );
        let deep = format!("{}1{}", "{\"a\":".repeat(8), "}".repeat(8));
        assert!(Info::parse(&deep).is_ok());
        for (bad, code) in [
            ("[]", "bad_request"),
            ("\"Ada\"", "bad_request"),
            ("null", "bad_request"),
            ("{", "invalid_json"),
            (r#"{"a":"\ud800"}"#, "invalid_json"),
            (r#"{"a":1e999}"#, "invalid_json"),
        ] {
            assert_eq!(
                Info::parse(bad).map_err(|e| e.code()).err(),
                Some(code),
                "{bad}"
            );
        }
        let over = format!(r#"{{"n":"{}"}}"#, "x".repeat(MAX_INFO_BYTES - 7));
        assert_eq!(Info::parse(&over).map_err(|e| e.status()).err(), Some(400));
        let too_deep = format!("{}1{}", "{\"a\":".repeat(9), "}".repeat(9));
        assert_eq!(
            Info::parse(&too_deep).map_err(|e| e.code()).err(),
            Some("too_deep")
        );
    }

    #[test]
    fn it_round_trips_in_claims() {
        let info = Info::parse(r#"{"name":"Ada"}"#).unwrap();
        let text = serde_json::to_string(&info).unwrap();
        assert_eq!(text, r#"{"name":"Ada"}"#);
        assert_eq!(serde_json::from_str::<Info>(&text).unwrap(), info);
        assert!(serde_json::from_str::<Info>("[1]").is_err());
    }
}
