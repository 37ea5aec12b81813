//! The frames of a many-channel connection (`docs/API.md#stream-sse`, `#stream-ws`), and the
//! Worker's reading of the v1 frames each channel's object sends it. The Worker subscribes to
//! every channel as a v1 WebSocket client would, and relabels: a multi-channel SSE event is the
//! envelope with the whole stream cursor as its `id:`; a multi-channel WebSocket gets the
//! object's event frames as they are (the envelope names its channel) and every other frame
//! with its `channel` added.

use super::names::ChannelName;
use super::publish::compact;
use super::publish::PublishLimits;
use super::query::parse_cursor;
use super::sse;
use super::ws::{Refusal, FRAME_MARGIN_BYTES, OP_CURSOR, OP_PUBLISH, REF_MAX_BYTES};
use crate::error::Error;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

pub const OP_SUBSCRIBE: &str = "subscribe";
pub const OP_SUBSCRIBED: &str = "subscribed";
pub const OP_UNSUBSCRIBE: &str = "unsubscribe";
pub const OP_UNSUBSCRIBED: &str = "unsubscribed";

/// A frame from a channel's object, as the Worker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpFrame<'a> {
    /// `ready`: the channel's head when the subscription was accepted, and its window.
    Ready {
        head: u64,
        window: u64,
    },
    /// `event`: its id and type, and the envelope's JSON text (the frame without `op`).
    Event {
        id: u64,
        event_type: String,
        envelope: String,
        text: &'a str,
    },
    Gap {
        requested: u64,
        earliest: u64,
    },
    /// `presence`: already names its channel; `object` is the presence object (the frame
    /// without `op`), for an SSE client.
    Presence {
        object: String,
        text: &'a str,
    },
    /// Anything else (`ack`, `error`): passed on with its channel added.
    Other(&'a str),
}

#[derive(Deserialize)]
struct UpHead {
    op: String,
    id: Option<u64>,
    head: Option<u64>,
    window: Option<u64>,
    requested: Option<u64>,
    earliest: Option<u64>,
    #[serde(rename = "type")]
    event_type: Option<String>,
}

const EVENT_PREFIX: &str = "{\"op\":\"event\",";
const PRESENCE_PREFIX: &str = "{\"op\":\"presence\",";

impl UpFrame<'_> {
    /// Reads an object's frame; one the Worker cannot read is passed on as `Other`.
    pub fn read(text: &str) -> UpFrame<'_> {
        let Ok(head) = serde_json::from_str::<UpHead>(text) else {
            return UpFrame::Other(text);
        };
        let op = head.op.clone();
        match (op.as_str(), head) {
            (
                "ready",
                UpHead {
                    head: Some(h),
                    window: Some(w),
                    ..
                },
            ) => UpFrame::Ready { head: h, window: w },
            (
                "event",
                UpHead {
                    id: Some(id),
                    event_type: Some(event_type),
                    ..
                },
            ) if text.starts_with(EVENT_PREFIX) => UpFrame::Event {
                id,
                event_type,
                envelope: format!("{{{}", &text[EVENT_PREFIX.len()..]),
                text,
            },
            (
                "gap",
                UpHead {
                    requested: Some(requested),
                    earliest: Some(earliest),
                    ..
                },
            ) => UpFrame::Gap {
                requested,
                earliest,
            },
            ("presence", _) if text.starts_with(PRESENCE_PREFIX) => UpFrame::Presence {
                object: format!("{{{}", &text[PRESENCE_PREFIX.len()..]),
                text,
            },
            _ => UpFrame::Other(text),
        }
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// `frame` (a JSON object starting with its `op`) with `"channel"` added right after the `op`.
pub fn with_channel(frame: &str, channel: &ChannelName) -> String {
    let name = quote(channel.as_str());
    let op_end = frame
        .strip_prefix("{\"op\":\"")
        .and_then(|rest| rest.find('"'))
        .map(|i| i + "{\"op\":\"".len() + 1);
    match op_end {
        Some(at) if frame.len() > at => {
            let (head, rest) = frame.split_at(at);
            match rest.strip_prefix('}') {
                Some(_) => format!("{head},\"channel\":{name}}}"),
                None => format!("{head},\"channel\":{name}{rest}"),
            }
        }
        _ => frame.to_string(),
    }
}

/// `{"op":"ready","heads":{"a":12,…},"window":W,"heartbeat":H}`.
pub fn ready_frame(heads: &[(&ChannelName, u64)], window: u64, heartbeat: u64) -> String {
    let heads: Vec<String> = heads
        .iter()
        .map(|(c, h)| format!("{}:{h}", quote(c.as_str())))
        .collect();
    format!(
        "{{\"op\":\"ready\",\"heads\":{{{}}},\"window\":{window},\"heartbeat\":{heartbeat}}}",
        heads.join(",")
    )
}

pub fn subscribed_frame(channel: &ChannelName, head: u64) -> String {
    format!(
        "{{\"op\":\"{OP_SUBSCRIBED}\",\"channel\":{},\"head\":{head}}}",
        quote(channel.as_str())
    )
}

pub fn unsubscribed_frame(channel: &ChannelName) -> String {
    format!(
        "{{\"op\":\"{OP_UNSUBSCRIBED}\",\"channel\":{}}}",
        quote(channel.as_str())
    )
}

/// An `error` frame naming the channel a refused frame named.
pub fn channel_error(refusal: &Refusal, channel: &ChannelName) -> String {
    with_channel(&refusal.frame(), channel)
}

/// The block that sets `EventSource`'s last event id to the stream's cursor without firing an
/// event (WHATWG: a block with an `id:` and no `data:` dispatches nothing but keeps the id).
pub fn sse_start(cursor: &str) -> String {
    format!("id: {cursor}\n\n")
}

/// One multi-channel SSE event: the stream cursor after it, its type, the whole envelope.
pub fn sse_event(cursor: &str, event_type: &str, envelope: &str) -> String {
    let typed = match event_type {
        "message" => String::new(),
        t => format!("event: {t}\n"),
    };
    format!("id: {cursor}\n{typed}data: {envelope}\n\n")
}

/// A gap naming its channel, without an `id:`.
pub fn sse_gap(channel: &ChannelName, requested: u64, earliest: u64) -> String {
    format!(
        "event: {}\ndata: {{\"channel\":{},\"requested\":{requested},\"earliest\":{earliest}}}\n\n",
        sse::GAP_EVENT,
        quote(channel.as_str())
    )
}

/// What a multi-channel WebSocket client may send (besides the text `ping`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManyClientFrame {
    Subscribe {
        channel: ChannelName,
        since: Option<u64>,
    },
    Unsubscribe(ChannelName),
    /// A v1 `publish` frame for `channel` (the frame without its `channel` member), and its
    /// `ref`, compact, for a refusal to echo.
    Publish {
        channel: ChannelName,
        frame: String,
        reference: Option<String>,
    },
    Cursor {
        channel: ChannelName,
        id: u64,
    },
}

#[derive(Deserialize)]
struct ManyHead<'a> {
    op: Option<String>,
    channel: Option<String>,
    #[serde(borrow, rename = "ref")]
    reference: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFrame {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    #[serde(rename = "channel")]
    _channel: serde::de::IgnoredAny,
    since: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelOnly {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    #[serde(rename = "channel")]
    _channel: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorFrame {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    #[serde(rename = "channel")]
    _channel: serde::de::IgnoredAny,
    id: u64,
}

/// A refusal, and the channel the frame named when it could be read.
pub type ManyRefusal = (Refusal, Option<ChannelName>);

/// Parses a multi-channel client frame. Refused as a v1 frame is (size first, unread; then
/// readable JSON), and every frame must name a valid `channel`.
pub fn parse_many_client(
    text: &str,
    limits: PublishLimits,
) -> Result<ManyClientFrame, ManyRefusal> {
    let max_frame = limits.max_data_bytes.saturating_add(FRAME_MARGIN_BYTES);
    if text.len() > max_frame {
        let err = Error::TooLarge(format!(
            "a text frame may be at most {max_frame} bytes (the data limit plus \
             {FRAME_MARGIN_BYTES}); got {}",
            text.len()
        ));
        return Err((err.into(), None));
    }
    // The frame object holds the data one level down.
    limits
        .check_text(text, 1)
        .map_err(|e| (Refusal::from(e), None))?;
    let head: ManyHead<'_> = serde_json::from_str(text).map_err(|e| {
        let err = Error::InvalidJson(format!("a frame is one JSON object: {e}"));
        (Refusal::from(err), None)
    })?;
    let reference = head.reference.map(|r| compact(r.get()));
    if reference.as_ref().is_some_and(|r| r.len() > REF_MAX_BYTES) {
        let err = Error::bad_request(format!(
            "ref may be at most {REF_MAX_BYTES} bytes of JSON; it is echoed in the answer"
        ));
        return Err((err.into(), None));
    }
    let channel = match head.channel.as_deref().map(ChannelName::parse) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err((Refusal::answering(e, reference), None)),
        None => {
            let err = Error::bad_request("a frame on a multi-channel socket names its channel");
            return Err((Refusal::answering(err, reference), None));
        }
    };
    let refused = |e: Error| {
        (
            Refusal::answering(e, reference.clone()),
            Some(channel.clone()),
        )
    };
    let shape = |what: &'static str| {
        move |e: serde_json::Error| refused(Error::bad_request(format!("{what}: {e}")))
    };
    match head.op.as_deref() {
        Some(OP_SUBSCRIBE) => {
            let f: SubscribeFrame = serde_json::from_str(text)
                .map_err(shape("subscribe is {\"op\",\"channel\",\"since\"?}"))?;
            let since = f
                .since
                .map(|s| parse_cursor(&s.to_string()))
                .transpose()
                .map_err(refused)?;
            Ok(ManyClientFrame::Subscribe { channel, since })
        }
        Some(OP_UNSUBSCRIBE) => {
            let _: ChannelOnly =
                serde_json::from_str(text).map_err(shape("unsubscribe is {\"op\",\"channel\"}"))?;
            Ok(ManyClientFrame::Unsubscribe(channel))
        }
        Some(OP_CURSOR) => {
            let f: CursorFrame = serde_json::from_str(text)
                .map_err(shape("cursor is {\"op\",\"channel\",\"id\"}"))?;
            Ok(ManyClientFrame::Cursor { channel, id: f.id })
        }
        Some(OP_PUBLISH) => {
            let mut members: BTreeMap<String, &RawValue> =
                serde_json::from_str(text).map_err(shape("publish is one JSON object"))?;
            members.remove("channel");
            let frame = serde_json::to_string(&members)
                .map_err(|e| refused(Error::Internal(format!("re-encoding a publish: {e}"))))?;
            Ok(ManyClientFrame::Publish {
                channel,
                frame,
                reference,
            })
        }
        _ => {
            let err = Error::bad_request(
                "unknown op: ops are \"subscribe\", \"unsubscribe\", \"publish\" and \"cursor\" \
                 (and the text ping)",
            );
            Err((Refusal::answering(err, reference), Some(channel)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ws::{ack_frame, event_frame, gap_frame, ready_frame as v1_ready};

    const LIMITS: PublishLimits = PublishLimits {
        max_data_bytes: 64,
        max_batch: 1,
        max_depth: 3,
    };

    fn name(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn the_objects_frames_are_read() {
        assert_eq!(
            UpFrame::read(&v1_ready(5, 1024, 15)),
            UpFrame::Ready {
                head: 5,
                window: 1024
            }
        );
        assert_eq!(
            UpFrame::read(&gap_frame(2, 9)),
            UpFrame::Gap {
                requested: 2,
                earliest: 9
            }
        );
        let envelope = r#"{"id":7,"channel":"a","type":"t.x","data":{"type":"no"},"time":"x"}"#;
        let frame = event_frame(envelope);
        match UpFrame::read(&frame) {
            UpFrame::Event {
                id,
                event_type,
                envelope: e,
                text,
            } => {
                assert_eq!((id, event_type.as_str(), e.as_str()), (7, "t.x", envelope));
                assert_eq!(text, frame);
            }
            other => panic!("{other:?}"),
        }
        let ack = ack_frame(Some("1"), 3);
        assert_eq!(UpFrame::read(&ack), UpFrame::Other(&ack));
        assert_eq!(UpFrame::read("pong"), UpFrame::Other("pong"));
    }

    #[test]
    fn frames_name_their_channel() {
        let c = name("user:42");
        assert_eq!(
            with_channel(&ack_frame(Some("\"r\""), 3), &c),
            r#"{"op":"ack","channel":"user:42","ref":"r","id":3}"#
        );
        assert_eq!(
            with_channel(&gap_frame(1, 5), &c),
            r#"{"op":"gap","channel":"user:42","requested":1,"earliest":5}"#
        );
        assert_eq!(
            with_channel(r#"{"op":"x"}"#, &c),
            r#"{"op":"x","channel":"user:42"}"#
        );
        assert_eq!(with_channel("pong", &c), "pong");
        let heads = [(&name("a"), 3), (&c, 0)];
        assert_eq!(
            ready_frame(&heads, 99, 15),
            r#"{"op":"ready","heads":{"a":3,"user:42":0},"window":99,"heartbeat":15}"#
        );
        assert_eq!(
            subscribed_frame(&c, 4),
            r#"{"op":"subscribed","channel":"user:42","head":4}"#
        );
        assert_eq!(
            unsubscribed_frame(&c),
            r#"{"op":"unsubscribed","channel":"user:42"}"#
        );
    }

    #[test]
    fn sse_blocks() {
        assert_eq!(sse_start("a=1,b=2"), "id: a=1,b=2\n\n");
        assert_eq!(
            sse_event("a=2,b=2", "message", "{\"id\":2}"),
            "id: a=2,b=2\ndata: {\"id\":2}\n\n"
        );
        assert_eq!(
            sse_event("a=2", "t.x", "{}"),
            "id: a=2\nevent: t.x\ndata: {}\n\n"
        );
        assert_eq!(
            sse_gap(&name("b"), 1, 6),
            "event: gap\ndata: {\"channel\":\"b\",\"requested\":1,\"earliest\":6}\n\n"
        );
    }

    #[test]
    fn client_frames() {
        let ok = |t: &str| parse_many_client(t, LIMITS).unwrap();
        assert_eq!(
            ok(r#"{"op":"subscribe","channel":"a","since":4}"#),
            ManyClientFrame::Subscribe {
                channel: name("a"),
                since: Some(4)
            }
        );
        assert_eq!(
            ok(r#"{"op":"subscribe","channel":"a"}"#),
            ManyClientFrame::Subscribe {
                channel: name("a"),
                since: None
            }
        );
        assert_eq!(
            ok(r#"{"op":"unsubscribe","channel":"a"}"#),
            ManyClientFrame::Unsubscribe(name("a"))
        );
        assert_eq!(
            ok(r#"{"op":"cursor","channel":"a","id":9}"#),
            ManyClientFrame::Cursor {
                channel: name("a"),
                id: 9
            }
        );
        match ok(r#"{"op":"publish","channel":"a","data":{"x":[1]},"ref":"r"}"#) {
            ManyClientFrame::Publish {
                channel,
                frame,
                reference,
            } => {
                assert_eq!(channel, name("a"));
                assert_eq!(reference.as_deref(), Some("\"r\""));
                let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
                assert_eq!(
                    v,
                    serde_json::json!({"op":"publish","data":{"x":[1]},"ref":"r"})
                );
            }
            other => panic!("{other:?}"),
        }
        let refused = |t: &str| parse_many_client(t, LIMITS).unwrap_err();
        for (text, status, channel) in [
            ("nope", 400, None),
            (r#"{"op":"subscribe"}"#, 400, None),
            (r#"{"op":"subscribe","channel":"bad name"}"#, 400, None),
            (
                r#"{"op":"subscribe","channel":"a","since":-1}"#,
                400,
                Some("a"),
            ),
            (
                r#"{"op":"subscribe","channel":"a","since":9007199254740992}"#,
                400,
                Some("a"),
            ),
            (
                r#"{"op":"subscribe","channel":"a","extra":1}"#,
                400,
                Some("a"),
            ),
            (
                r#"{"op":"unsubscribe","channel":"a","since":1}"#,
                400,
                Some("a"),
            ),
            (r#"{"op":"cursor","channel":"a"}"#, 400, Some("a")),
            (r#"{"op":"what","channel":"a"}"#, 400, Some("a")),
            (
                r#"{"op":"publish","channel":"a","data":[[[[1]]]]}"#,
                400,
                None,
            ),
        ] {
            let (r, c) = refused(text);
            assert_eq!(
                (r.error.status(), c.as_ref().map(ChannelName::as_str)),
                (status, channel),
                "{text}"
            );
        }
        let long_ref = format!(
            r#"{{"op":"publish","channel":"a","data":1,"ref":"{}"}}"#,
            "r".repeat(REF_MAX_BYTES)
        );
        let (r, c) = refused(&long_ref);
        assert_eq!((r.error.status(), r.reference, c), (400, None, None));
        let (r, _) = refused(r#"{"op":"nope","channel":"a","ref": [1, 2]}"#);
        assert_eq!(
            r.reference.as_deref(),
            Some("[1,2]"),
            "a parsed ref is echoed, compact"
        );
        let big = format!(
            r#"{{"op":"publish","channel":"a","data":"{}"}}"#,
            "x".repeat(5000)
        );
        assert_eq!(refused(&big).0.error.status(), 413);
    }
}
