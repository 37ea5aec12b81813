//! The frames between a channel's object and the Worker's SSE bridge, over the bridge's
//! hibernatable WebSocket, defined once (`docs/architecture.md#sse-bridge`):
//!
//! - object → bridge (`Downstream`): SSE text, framed once per publish by the object and passed
//!   on to the client as it is (events, gap notices); or a `held` notice: a paced replay stopped
//!   after id N and waits until the client has taken everything before the notice. The notice
//!   is an SSE comment, so a bridge that does not know it passes it on harmlessly. And first of
//!   all, a `start` notice: where the socket's delivery starts (after id A) and the channel's
//!   head when it was accepted (H), so a bridge knows when its replay has caught up and where
//!   it stands before any event (`runtime::tap`).
//! - bridge → object (`Upstream`): the bridge's report that its client has taken everything
//!   through id N, the same `{"op":"cursor","id":N}` frame a WebSocket client sends; and how
//!   many SSE clients the socket carries (`members N`), when it is an isolate's shared upstream,
//!   so the channel's subscriber count stays the count of clients.

use super::ws::cursor_frame;

const HELD_PREFIX: &str = ": held ";
const START_PREFIX: &str = ": start ";
const MEMBERS_PREFIX: &str = "members ";

/// Reads a run of ASCII digits as a number, nothing else.
fn number(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What the object sends a bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream<'a> {
    /// SSE text for the client, passed on as it is.
    Sse(&'a str),
    /// A paced replay stopped after this id.
    Held(u64),
    /// The socket's first frame: delivery starts after `after`; the head was `head`.
    Start { after: u64, head: u64 },
}

impl Downstream<'_> {
    pub fn encode(&self) -> String {
        match self {
            Downstream::Sse(text) => text.to_string(),
            Downstream::Held(sent) => format!("{HELD_PREFIX}{sent}\n\n"),
            Downstream::Start { after, head } => format!("{START_PREFIX}{after} {head}\n\n"),
        }
    }

    /// Reads a frame from the object: a `held` or `start` notice if it is exactly one, else
    /// SSE text.
    pub fn decode(text: &str) -> Downstream<'_> {
        let notice = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix("\n\n"))
        };
        if let Some(sent) = notice(HELD_PREFIX).and_then(number) {
            return Downstream::Held(sent);
        }
        let start = notice(START_PREFIX)
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(a, h)| Some((number(a)?, number(h)?)));
        match start {
            Some((after, head)) => Downstream::Start { after, head },
            None => Downstream::Sse(text),
        }
    }
}

/// What a bridge sends the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The bridge's client has taken everything through this id.
    Cursor(u64),
    /// The socket is an isolate's shared upstream carrying this many SSE clients.
    Members(u64),
}

impl Upstream {
    pub fn encode(&self) -> String {
        match self {
            Upstream::Cursor(id) => cursor_frame(*id),
            Upstream::Members(n) => format!("{MEMBERS_PREFIX}{n}"),
        }
    }

    /// Reads a `members` report (a cursor is a client frame, read by `ws::parse_client`).
    pub fn decode_members(text: &str) -> Option<u64> {
        text.strip_prefix(MEMBERS_PREFIX).and_then(number)
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
    fn start_round_trips_and_is_an_sse_comment() {
        for (after, head) in [
            (0, 0),
            (3, 10),
            (9_007_199_254_740_991, 9_007_199_254_740_991),
        ] {
            let text = Downstream::Start { after, head }.encode();
            assert_eq!(Downstream::decode(&text), Downstream::Start { after, head });
            assert!(text.starts_with(": ") && text.ends_with("\n\n"), "{text:?}");
        }
        assert_eq!(
            Downstream::Start { after: 3, head: 10 }.encode(),
            ": start 3 10\n\n"
        );
        for other in [
            ": start 3\n\n",
            ": start 3 \n\n",
            ": start 3 1 0\n\n",
            ": start a 1\n\n",
        ] {
            assert_eq!(
                Downstream::decode(other),
                Downstream::Sse(other),
                "{other:?}"
            );
        }
    }

    #[test]
    fn members_reports_round_trip_and_are_not_client_frames() {
        for n in [0, 1, 10_000] {
            let text = Upstream::Members(n).encode();
            assert_eq!(Upstream::decode_members(&text), Some(n));
        }
        for other in [
            "members",
            "members ",
            "members -1",
            "members 1 2",
            "{\"op\":\"cursor\",\"id\":1}",
        ] {
            assert_eq!(Upstream::decode_members(other), None, "{other:?}");
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
