//! What a Mercure update keeps beside its event (`/.well-known/mercure`, docs/mercure.md): the
//! publisher's id (its SSE `id:`, and what a Mercure client resumes from), its SSE `event:` and
//! `retry:`, and whether it is private. Stored as one JSON object with the event in the
//! channel's log; the event's `data` is the update's data as a JSON string.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateMeta {
    /// The update's id: the publisher's, or one the hub made (`urn:uuid:…`).
    pub id: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

impl UpdateMeta {
    /// The stored JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    /// Reads stored text back; `None` for anything else.
    pub fn from_json(text: &str) -> Option<UpdateMeta> {
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_leaves_out_what_is_absent() {
        let meta = UpdateMeta {
            id: "urn:uuid:1".into(),
            event_type: None,
            retry: None,
            private: false,
        };
        assert_eq!(meta.to_json(), r#"{"id":"urn:uuid:1"}"#);
        let full = UpdateMeta {
            id: "a\"b".into(),
            event_type: Some("t".into()),
            retry: Some(3),
            private: true,
        };
        assert_eq!(UpdateMeta::from_json(&full.to_json()), Some(full));
        assert_eq!(UpdateMeta::from_json("[]"), None);
    }
}
