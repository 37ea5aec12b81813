//! WebSocket messages: JSON text frames, server → client (`event`, `ready`, `gap`, `ack`,
//! `error`) and client → server (`publish`, `cursor`), and the close codes. The text `ping` is answered
//! `pong` by the runtime's auto-response without waking the channel's object.
//! See `docs/API.md#websocket` and `docs/API.md#close-codes`.

use super::names::EventType;
use super::publish::{
    compact, parse_idempotency_key, present, present_list, NewEvent, PublishLimits,
};
use super::topics::Topics;
use crate::error::Error;
use serde::Deserialize;
use serde_json::value::RawValue;

pub const PING: &str = "ping";
pub const PONG: &str = "pong";
pub const OP_EVENT: &str = "event";
pub const OP_READY: &str = "ready";
pub const OP_GAP: &str = "gap";
pub const OP_ACK: &str = "ack";
pub const OP_ERROR: &str = "error";
pub const OP_PUBLISH: &str = "publish";
pub const OP_CURSOR: &str = "cursor";

/// What a client text frame may hold beyond its data: `op`, `type`, `ref`, `idempotency_key`
/// and whitespace. A larger frame is refused before it is parsed.
pub const FRAME_MARGIN_BYTES: usize = 4096;
/// The longest `ref`, as compact JSON: it is echoed in the answer, so it must stay small.
pub const REF_MAX_BYTES: usize = 128;

/// Close codes. 1000 and 4000-4099 mean "reconnect (with your cursor)"; 4100 and above mean
/// "do not reconnect as you are": fix the request or get a fresh token first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: a normal close.
    Normal,
    /// 4000: the server ends the stream (lifetime reached, object restarting): reconnect.
    Reconnect,
    /// 4001: the subscriber fell too far behind (more than its window unconfirmed, see
    /// `channel::flow`) and was dropped: reconnect with its cursor.
    TooSlow,
    /// 4002: a presence WebSocket sent nothing, not even `ping`, for two `HEARTBEAT_SECONDS`: it is
    /// taken for gone and its member leaves; reconnect (and ping more often).
    Silent,
    /// 4101: the token expired: get a fresh one, then reconnect.
    TokenExpired,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Reconnect => 4000,
            CloseCode::TooSlow => 4001,
            CloseCode::Silent => 4002,
            CloseCode::TokenExpired => 4101,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "closed",
            CloseCode::Reconnect => "stream ended, reconnect with your cursor",
            CloseCode::TooSlow => "too far behind, reconnect with your cursor",
            CloseCode::Silent => "no ping within the heartbeat, reconnect",
            CloseCode::TokenExpired => "token expired",
        }
    }

    /// True when a client should reconnect as it is.
    pub fn reconnect(self) -> bool {
        self.code() < 4100
    }
}

/// `{"op":"event", …envelope}` from the envelope's JSON text (which starts with `{`).
pub fn event_frame(envelope: &str) -> String {
    match envelope.strip_prefix('{') {
        Some(rest) => format!("{{\"op\":\"{OP_EVENT}\",{rest}"),
        None => format!("{{\"op\":\"{OP_EVENT}\"}}"),
    }
}

/// `window`: how many bytes of event frames may go unconfirmed by a `cursor` report before the
/// socket is dropped as too slow. `heartbeat`: `HEARTBEAT_SECONDS`, so that a client knows how
/// often a presence socket must ping (at least every half of it) and when silence means a stall.
pub fn ready_frame(head: u64, window: u64, heartbeat: u64) -> String {
    format!(
        "{{\"op\":\"{OP_READY}\",\"head\":{head},\"window\":{window},\"heartbeat\":{heartbeat}}}"
    )
}

/// The client's report that it has every event through `id` (what the SSE bridge sends for
/// its client).
pub fn cursor_frame(id: u64) -> String {
    format!("{{\"op\":\"cursor\",\"id\":{id}}}")
}

pub fn gap_frame(requested: u64, earliest: u64) -> String {
    format!("{{\"op\":\"{OP_GAP}\",\"requested\":{requested},\"earliest\":{earliest}}}")
}

/// The answer to a publish: `ref` is echoed exactly as the client sent it (any JSON).
pub fn ack_frame(reference: Option<&str>, id: u64) -> String {
    match reference {
        Some(r) => format!("{{\"op\":\"{OP_ACK}\",\"ref\":{r},\"id\":{id}}}"),
        None => format!("{{\"op\":\"{OP_ACK}\",\"id\":{id}}}"),
    }
}

pub fn error_frame(err: &Error, reference: Option<&str>) -> String {
    let detail = serde_json::to_string(&err.problem().detail).unwrap_or_else(|_| "\"\"".into());
    let reference = reference.map_or_else(String::new, |r| format!(",\"ref\":{r}"));
    format!(
        "{{\"op\":\"{OP_ERROR}\",\"status\":{},\"code\":\"{}\",\"detail\":{detail}{reference}}}",
        err.status(),
        err.code()
    )
}

/// A client frame refused: the error its `error` frame carries, and the frame's `ref` when one
/// could be read and is small enough to echo, so the client can tell which request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: Error,
    pub reference: Option<String>,
}

impl Refusal {
    pub fn answering(error: Error, reference: Option<String>) -> Refusal {
        Refusal { error, reference }
    }

    /// The `{"op":"error",…}` frame for it.
    pub fn frame(&self) -> String {
        error_frame(&self.error, self.reference.as_deref())
    }
}

/// A refusal that names no request.
impl From<Error> for Refusal {
    fn from(error: Error) -> Refusal {
        Refusal::answering(error, None)
    }
}

/// A client's publish, validated like an HTTP publish of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPublish {
    pub event: NewEvent,
    /// The client's `ref`, compact JSON, echoed in the ack or error.
    pub reference: Option<String>,
    /// As the `Idempotency-Key` header of an HTTP publish: a retry gets the first `ack`.
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFrame<'a> {
    /// Already checked through `AnyFrame`; declared so `deny_unknown_fields` accepts it.
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    #[serde(rename = "type", default, deserialize_with = "present")]
    event_type: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
    /// Read through `AnyFrame`; declared so `deny_unknown_fields` accepts it.
    #[serde(rename = "ref")]
    _reference: Option<serde::de::IgnoredAny>,
    #[serde(default, deserialize_with = "present")]
    idempotency_key: Option<String>,
    #[serde(default, deserialize_with = "present_list")]
    topics: Option<Vec<String>>,
}

/// What a client may send (besides the text `ping`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Publish(ClientPublish),
    /// `{"op":"cursor","id":N}`: the client has every event through `N`.
    Cursor(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorFrame {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    id: u64,
}

#[derive(Deserialize)]
struct AnyFrame<'a> {
    op: Option<String>,
    #[serde(borrow, rename = "ref")]
    reference: Option<&'a RawValue>,
}

/// Parses a client text frame. On failure, also returns the frame's `ref` when one could be
/// read, so the error can name the request it answers. A frame over the data limit plus
/// `FRAME_MARGIN_BYTES` is refused unread; one whose data could not be read back (too deep,
/// not Unicode, a number out of range) before it is parsed; a `ref` over `REF_MAX_BYTES` is
/// refused and not echoed.
pub fn parse_client(text: &str, limits: PublishLimits) -> Result<ClientFrame, Refusal> {
    let max_frame = limits.max_data_bytes.saturating_add(FRAME_MARGIN_BYTES);
    if text.len() > max_frame {
        let err = Error::TooLarge(format!(
            "a text frame may be at most {max_frame} bytes (the data limit plus \
             {FRAME_MARGIN_BYTES}); got {}",
            text.len()
        ));
        return Err(err.into());
    }
    // The frame object holds the data one level down.
    limits.check_text(text, 1)?;
    let head: AnyFrame<'_> = serde_json::from_str(text)
        .map_err(|e| Error::InvalidJson(format!("a frame is one JSON object: {e}")))?;
    let reference = head.reference.map(|r| compact(r.get()));
    if reference.as_ref().is_some_and(|r| r.len() > REF_MAX_BYTES) {
        let err = Error::bad_request(format!(
            "ref may be at most {REF_MAX_BYTES} bytes of JSON; it is echoed in the answer"
        ));
        return Err(err.into());
    }
    match head.op.as_deref() {
        Some(OP_PUBLISH) => parse_publish(text, limits, reference).map(ClientFrame::Publish),
        Some(OP_CURSOR) => {
            let frame: CursorFrame = serde_json::from_str(text).map_err(|e| {
                let err = Error::bad_request(format!(
                    "cursor is {{\"op\":\"cursor\",\"id\":N}} with N a whole number: {e}"
                ));
                Refusal::answering(err, reference.clone())
            })?;
            Ok(ClientFrame::Cursor(frame.id))
        }
        _ => Err(Refusal::answering(
            Error::bad_request(
                "unknown op: client ops are \"publish\" and \"cursor\" (and the text ping)",
            ),
            reference,
        )),
    }
}

fn parse_publish(
    text: &str,
    limits: PublishLimits,
    reference: Option<String>,
) -> Result<ClientPublish, Refusal> {
    let refused = |err: Error| Refusal::answering(err, reference.clone());
    let frame: PublishFrame<'_> = serde_json::from_str(text).map_err(|e| {
        refused(Error::bad_request(format!(
            "publish is {{\"op\",\"type\"?,\"data\",\"topics\"?,\"ref\"?}}: {e}"
        )))
    })?;
    let event_type = match frame.event_type {
        Some(t) => EventType::parse(&t).map_err(refused)?,
        None => EventType::default(),
    };
    let data = compact(frame.data.get());
    limits.check_data(&data).map_err(refused)?;
    let idempotency_key = frame
        .idempotency_key
        .map(|k| parse_idempotency_key(&k))
        .transpose()
        .map_err(refused)?;
    let topics = frame
        .topics
        .map(Topics::parse)
        .transpose()
        .map_err(refused)?;
    Ok(ClientPublish {
        event: NewEvent {
            event_type,
            data,
            topics,
        },
        reference,
        idempotency_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PublishLimits = PublishLimits {
        max_data_bytes: 16,
        max_batch: 1,
        max_depth: 3,
    };

    #[test]
    fn server_frames() {
        assert_eq!(
            event_frame(r#"{"id":1,"data":2}"#),
            r#"{"op":"event","id":1,"data":2}"#
        );
        assert_eq!(
            ready_frame(5, 1024, 15),
            r#"{"op":"ready","head":5,"window":1024,"heartbeat":15}"#
        );
        assert_eq!(
            gap_frame(2, 9),
            r#"{"op":"gap","requested":2,"earliest":9}"#
        );
        assert_eq!(
            ack_frame(Some("\"a\""), 3),
            r#"{"op":"ack","ref":"a","id":3}"#
        );
        assert_eq!(ack_frame(None, 3), r#"{"op":"ack","id":3}"#);
        let e: serde_json::Value =
            serde_json::from_str(&error_frame(&Error::Forbidden("no".into()), Some("7"))).unwrap();
        assert_eq!(
            (e["op"].as_str(), e["status"].as_u64(), e["ref"].as_u64()),
            (Some("error"), Some(403), Some(7))
        );
    }

    #[test]
    fn client_frames() {
        let publish = |text: &str| match parse_client(text, LIMITS).unwrap() {
            ClientFrame::Publish(p) => p,
            other => panic!("{text}: {other:?}"),
        };
        let ok = publish(r#"{"op":"publish","type":"t","data":{"x": 1},"ref":"r1"}"#);
        assert_eq!(ok.event.data, r#"{"x":1}"#);
        assert_eq!(ok.event.event_type.as_str(), "t");
        assert_eq!(ok.reference.as_deref(), Some("\"r1\""));
        let keyed = publish(r#"{"op":"publish","data":1,"idempotency_key":"k-1"}"#);
        assert_eq!(keyed.idempotency_key.as_deref(), Some("k-1"));
        let cases = [
            ("nope", 400, None),
            ("[1]", 400, None),
            (r#"{"op":"subscribe","ref":1}"#, 400, Some("1")),
            (r#"{"op":"cursor"}"#, 400, None),
            (r#"{"op":"cursor","id":-1}"#, 400, None),
            (r#"{"op":"cursor","id":1.5}"#, 400, None),
            (r#"{"op":"cursor","id":"7"}"#, 400, None),
            (r#"{"op":"cursor","id":7,"ref":5}"#, 400, Some("5")),
            (r#"{"op":"publish","ref":2}"#, 400, Some("2")),
            (
                r#"{"op":"publish","data":1,"type":"bad type","ref":3}"#,
                400,
                Some("3"),
            ),
            (r#"{"op":"publish","data":"0123456789abcdef"}"#, 413, None),
            (r#"{"op":"publish","data":1,"extra":1}"#, 400, None),
            (r#"{"op":"publish","data":1,"type":null}"#, 400, None),
            (
                r#"{"op":"publish","data":1,"idempotency_key":"a b","ref":4}"#,
                400,
                Some("4"),
            ),
        ];
        for (text, status, reference) in cases {
            let refused = parse_client(text, LIMITS).unwrap_err();
            assert_eq!(
                (refused.error.status(), refused.reference.as_deref()),
                (status, reference),
                "{text}"
            );
        }
    }

    #[test]
    fn hostile_frames_are_refused_before_they_are_parsed_or_echoed() {
        let refused = |text: &str| {
            let r = parse_client(text, LIMITS).unwrap_err();
            (r.error, r.reference)
        };
        // Over the data limit plus the margin: refused unread, so its ref is not echoed.
        let big = format!(
            r#"{{"op":"publish","data":1,"ref":"{}"}}"#,
            "r".repeat(FRAME_MARGIN_BYTES)
        );
        let (err, r) = refused(&big);
        assert_eq!((err.status(), r), (413, None));
        // A long ref: refused and not echoed.
        let long_ref = format!(r#"{{"op":"nope","ref":"{}"}}"#, "r".repeat(REF_MAX_BYTES));
        let (err, r) = refused(&long_ref);
        assert_eq!((err.status(), err.code(), r), (400, "bad_request", None));
        let fits = format!(r#"{{"op":"publish","data":1,"ref":"{}"}}"#, "r".repeat(126));
        assert!(parse_client(&fits, LIMITS).is_ok());
        // Depth: data at the limit is taken, one level more is refused before parsing.
        assert!(parse_client(r#"{"op":"publish","data":[[[1]]]}"#, LIMITS).is_ok());
        let (err, r) = refused(r#"{"op":"publish","data":[[[[1]]]],"ref":9}"#);
        assert_eq!((err.code(), r), ("too_deep", None));
        for text in [
            r#"{"op":"publish","data":"\ud800"}"#,
            r#"{"op":"publish","data":1e999}"#,
            r#"{"op":"publish","data":1,"ref":"\udc00"}"#,
        ] {
            assert_eq!(refused(text).0.code(), "invalid_json", "{text}");
        }
    }

    #[test]
    fn cursor_reports() {
        assert_eq!(
            parse_client(r#"{"op":"cursor","id":42}"#, LIMITS).unwrap(),
            ClientFrame::Cursor(42)
        );
        assert_eq!(
            parse_client(r#"{ "id": 0, "op": "cursor" }"#, LIMITS).unwrap(),
            ClientFrame::Cursor(0)
        );
        assert_eq!(
            parse_client(&cursor_frame(9_007_199_254_740_991), LIMITS).unwrap(),
            ClientFrame::Cursor(9_007_199_254_740_991)
        );
    }

    #[test]
    fn close_code_table() {
        assert!(CloseCode::Reconnect.reconnect() && CloseCode::TooSlow.reconnect());
        assert!(!CloseCode::TokenExpired.reconnect());
        assert_eq!(CloseCode::TokenExpired.code(), 4101);
    }
}
