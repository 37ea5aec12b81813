//! The frames between a channel's object and the Worker's SSE bridge, over the bridge's
//! hibernatable WebSocket, defined once (`docs/architecture.md#sse-bridge`):
//!
//! - object → bridge (`Downstream`): SSE text, framed once per publish by the object and passed
//!   on to the client as it is (events, gap notices); or a `held` notice: a paced replay stopped
//!   after id N and waits until the client has taken everything before the notice. The notice
//!   is an SSE comment, so a bridge that does not know it passes it on harmlessly.
//! - bridge → object (`Upstream`): the bridge's report that its client has taken everything
//!   through id N, the same `{"op":"cursor","id":N}` frame a WebSocket client sends.

use super::ws::cursor_frame;

const HELD_PREFIX: &str = ": held ";

/// What the object sends a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream<'a> {
    /// SSE text for the client, passed on as it is.
    Sse(&'a str),
    /// A paced replay stopped after this id.
    Held(u64),
}

impl Downstream<'_> {
    pub fn encode(&self) -> String {
        match self {
            Downstream::Sse(text) => text.to_string(),
            Downstream::Held(sent) => format!("{HELD_PREFIX}{sent}\n\n"),
        }
    }

    /// Reads a frame from the object: a `held` notice if it is exactly one, else SSE text.
    pub fn decode(text: &str) -> Downstream<'_> {
        let held = text
            .strip_prefix(HELD_PREFIX)
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok());
        match held {
            Some(sent) => Downstream::Held(sent),
            None => Downstream::Sse(text),
        }
    }
}

/// What a bridge sends the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The bridge's client has taken everything through this id.
    Cursor(u64),
}

impl Upstream {
    pub fn encode(&self) -> String {
        match self {
            Upstream::Cursor(id) => cursor_frame(*id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sse::{event, gap, heartbeat, preamble};
    use crate::protocol::ws::{parse_client, ClientFrame};
    use crate::protocol::EventType;

    #[test]
    fn held_round_trips_and_nothing_else_reads_as_held() {
        for sent in [0, 42, 9_007_199_254_740_991] {
            let text = Downstream::Held(sent).encode();
            assert_eq!(Downstream::decode(&text), Downstream::Held(sent));
        }
        assert_eq!(Downstream::Held(42).encode(), ": held 42\n\n");
        for other in [
            heartbeat().to_string(),
            preamble(),
            gap(1, 5),
            event(7, &EventType::default(), "{}"),
            ": held \n\n".to_string(),
            ": held +3\n\n".to_string(),
            ": held 3\n".to_string(),
            ": held 99999999999999999999999\n\n".to_string(),
        ] {
            assert_eq!(
                Downstream::decode(&other),
                Downstream::Sse(&other),
                "{other:?}"
            );
            assert_eq!(Downstream::Sse(&other).encode(), other);
        }
    }

    #[test]
    fn the_bridge_report_is_a_client_cursor_frame() {
        let limits = crate::protocol::publish::PublishLimits {
            max_data_bytes: 64,
            max_batch: 1,
            max_depth: 4,
        };
        for id in [0, 7, 9_007_199_254_740_991] {
            let text = Upstream::Cursor(id).encode();
            assert_eq!(parse_client(&text, limits), Ok(ClientFrame::Cursor(id)));
        }
    }
}
