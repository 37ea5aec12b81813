//! Delivery to live subscribers: events are encoded once per publish, per transport (a WebSocket
//! frame per event; SSE text in chunks), and the same strings go to every subscriber of that
//! transport through the `Sink` role. Replay for a new subscriber uses the same encoding.

use super::poll::StoredEvent;
use super::Replay;
use crate::protocol::names::DEFAULT_EVENT_TYPE;
use crate::protocol::topics::Topics;
use crate::protocol::{mercure, sse, ws, ChannelName, EventType};

/// The largest SSE text sent to a bridge in one WebSocket message (the runtime caps messages
/// at 1 MiB; one event's data is at most 64 KiB by default).
pub const SSE_CHUNK_BYTES: usize = 256 * 1024;

/// How a subscriber reads: its own WebSocket, or an SSE stream bridged by the Worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Sse,
    Ws,
}

impl Transport {
    /// The hibernation tag a subscriber's socket carries.
    pub fn tag(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "sse" => Some(Transport::Sse),
            "ws" => Some(Transport::Ws),
            _ => None,
        }
    }
}

/// Something a frame can be sent to; `false` when it can take no more (closed, failed). `F` is
/// the frame's form: text here, or whatever the runtime sends fastest.
pub trait Sink<F> {
    fn send(&self, frame: &F) -> bool;
}

/// A batch of events encoded for both transports: `ws` holds one frame per event, `sse` the
/// events' text in chunks. For subscribers that filter by topic, each event's own SSE text and
/// its topics are kept too (`select`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frames {
    pub ws: Vec<String>,
    pub sse: Vec<String>,
    sse_each: Vec<String>,
    /// Each event as a Mercure update's SSE text (`mercure_text`).
    mercure_each: Vec<String>,
    pub topics: Vec<Option<Topics>>,
    /// Which events are private Mercure updates.
    pub private: Vec<bool>,
}

impl Frames {
    /// Encodes `events` (ascending) once for each transport.
    pub fn encode(channel: &ChannelName, events: &[StoredEvent]) -> Frames {
        let mut frames = Frames::default();
        let mut sse_chunk = String::new();
        for e in events {
            let envelope = e.envelope(channel);
            frames.ws.push(ws::event_frame(&envelope));
            let event_type = EventType::parse(&e.event_type).unwrap_or_default();
            let text = sse::event(e.id, &event_type, &e.data);
            push_sse(&mut frames.sse, &mut sse_chunk, &text);
            frames.sse_each.push(text);
            frames.mercure_each.push(mercure_text(e));
            frames.topics.push(e.topics.clone());
            frames.private.push(e.is_private());
        }
        if !sse_chunk.is_empty() {
            frames.sse.push(sse_chunk);
        }
        frames
    }

    /// The frames of the events `keep` lets through (one flag per event, in order), for one
    /// transport, or as Mercure updates (`mercure`, SSE only): the same strings `encode` made,
    /// SSE text chunked again.
    pub fn select(&self, transport: Transport, keep: &[bool], mercure: bool) -> Vec<String> {
        let kept = |list: &[String]| -> Vec<String> {
            list.iter()
                .zip(keep)
                .filter(|(_, k)| **k)
                .map(|(f, _)| f.clone())
                .collect()
        };
        match (transport, mercure) {
            (Transport::Ws, _) => kept(&self.ws),
            (Transport::Sse, false) => chunked(kept(&self.sse_each)),
            (Transport::Sse, true) => chunked(kept(&self.mercure_each)),
        }
    }

    /// What a new subscriber with this replay plan gets before live events: the gap notice if
    /// any, then `events` (read from the log after the plan's starting point).
    pub fn replay(channel: &ChannelName, plan: Replay, events: &[StoredEvent]) -> Frames {
        let mut frames = Frames::encode(channel, events);
        if let Replay::Gap {
            requested,
            earliest,
        } = plan
        {
            frames.ws.insert(0, ws::gap_frame(requested, earliest));
            frames.sse.insert(0, sse::gap(requested, earliest));
        }
        frames
    }

    pub fn for_transport(&self, transport: Transport) -> &[String] {
        match transport {
            Transport::Sse => &self.sse,
            Transport::Ws => &self.ws,
        }
    }
}

/// An event as a Mercure update (`protocol::mercure`): its publisher's id, type and retry, and
/// its data sent raw; an event published natively into a Mercure channel gets its own id and
/// its data's JSON text.
fn mercure_text(e: &StoredEvent) -> String {
    match &e.update {
        Some(u) => {
            let data: Option<String> = serde_json::from_str(&e.data).ok();
            let data = data.unwrap_or_else(|| e.data.clone());
            mercure::sse_event(&u.id, u.event_type.as_deref(), u.retry, &data)
        }
        None => {
            let event_type = (e.event_type != DEFAULT_EVENT_TYPE).then_some(e.event_type.as_str());
            mercure::sse_event(&e.id.to_string(), event_type, None, &e.data)
        }
    }
}

/// SSE texts joined into chunks of at most `SSE_CHUNK_BYTES` (or one text, when larger).
fn chunked(texts: Vec<String>) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut chunk = String::new();
    for text in texts {
        push_sse(&mut chunks, &mut chunk, &text);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

fn push_sse(chunks: &mut Vec<String>, chunk: &mut String, text: &str) {
    if !chunk.is_empty() && chunk.len() + text.len() > SSE_CHUNK_BYTES {
        chunks.push(std::mem::take(chunk));
    }
    chunk.push_str(text);
}

/// Sends `frames` in order to each sink; returns the indices of sinks that failed, so the
/// caller can close them (their subscribers reconnect with their cursor).
pub fn deliver<F, S: Sink<F>>(sinks: &[S], frames: &[F]) -> Vec<usize> {
    if frames.is_empty() {
        return Vec::new();
    }
    sinks
        .iter()
        .enumerate()
        .filter(|(_, sink)| !frames.iter().all(|f| sink.send(f)))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A subscriber that records what it got, or refuses everything.
    struct FakeSink {
        got: RefCell<Vec<String>>,
        broken: bool,
    }

    impl Sink<String> for FakeSink {
        fn send(&self, text: &String) -> bool {
            if !self.broken {
                self.got.borrow_mut().push(text.clone());
            }
            !self.broken
        }
    }

    fn sink(broken: bool) -> FakeSink {
        FakeSink {
            got: RefCell::new(Vec::new()),
            broken,
        }
    }

    fn ev(id: u64, t: &str, data: &str) -> StoredEvent {
        StoredEvent {
            id,
            event_type: t.into(),
            data: data.into(),
            time_ms: 0,
            topics: None,
            update: None,
        }
    }

    #[test]
    fn one_encoding_reaches_every_sink_in_order() {
        let c = ChannelName::parse("c").unwrap();
        let frames = Frames::encode(&c, &[ev(1, "message", "1"), ev(2, "x", "{}")]);
        assert_eq!(frames.ws.len(), 2);
        assert!(frames.ws[0].starts_with(r#"{"op":"event","id":1,"#));
        assert_eq!(
            frames.sse,
            vec!["id: 1\ndata: 1\n\nid: 2\nevent: x\ndata: {}\n\n".to_string()]
        );
        let sinks = [sink(false), sink(true), sink(false)];
        assert_eq!(
            deliver(&sinks, frames.for_transport(Transport::Ws)),
            vec![1]
        );
        assert_eq!(*sinks[0].got.borrow(), frames.ws);
        assert_eq!(*sinks[2].got.borrow(), frames.ws);
    }

    #[test]
    fn replay_puts_the_gap_first() {
        let c = ChannelName::parse("c").unwrap();
        let plan = Replay::Gap {
            requested: 1,
            earliest: 5,
        };
        let frames = Frames::replay(&c, plan, &[ev(5, "message", "5")]);
        assert_eq!(frames.ws[0], r#"{"op":"gap","requested":1,"earliest":5}"#);
        assert!(frames.sse[0].starts_with("event: gap\n"));
        assert!(frames.sse[1].starts_with("id: 5\n"));
        assert_eq!(Frames::replay(&c, Replay::Live, &[]), Frames::default());
    }

    #[test]
    fn sse_text_is_chunked_between_events() {
        let c = ChannelName::parse("c").unwrap();
        let big = format!("\"{}\"", "x".repeat(60 * 1024));
        let events: Vec<StoredEvent> = (1..=10).map(|i| ev(i, "message", &big)).collect();
        let frames = Frames::encode(&c, &events);
        assert!(frames.sse.len() > 1);
        assert!(frames
            .sse
            .iter()
            .all(|s| s.len() <= SSE_CHUNK_BYTES && s.starts_with("id: ")));
        assert_eq!(frames.sse.concat().matches("\n\n").count(), 10);
    }

    #[test]
    fn a_selection_keeps_the_chosen_events_frames() {
        let c = ChannelName::parse("c").unwrap();
        let events: Vec<StoredEvent> = (1..=3).map(|i| ev(i, "message", "1")).collect();
        let frames = Frames::encode(&c, &events);
        let keep = [true, false, true];
        let ws = frames.select(Transport::Ws, &keep, false);
        assert_eq!(ws, vec![frames.ws[0].clone(), frames.ws[2].clone()]);
        assert_eq!(
            frames.select(Transport::Sse, &keep, false),
            vec!["id: 1\ndata: 1\n\nid: 3\ndata: 1\n\n".to_string()]
        );
        assert!(frames.select(Transport::Sse, &[false; 3], false).is_empty());
        assert_eq!(
            frames.select(Transport::Sse, &[true; 3], false),
            frames.sse,
            "all of it is what every unfiltered subscriber gets"
        );
    }

    #[test]
    fn nothing_to_send_fails_nobody() {
        assert!(deliver::<String, _>(&[sink(true)], &[]).is_empty());
    }
}
