//! The channel object's live subscribers: hibernatable WebSockets, tagged by transport (`ws` for
//! clients, `sse` for the Worker's SSE bridges), each carrying a small typed attachment that
//! survives hibernation. Accepting replays from the log in the same synchronous step, so no
//! publish can fall between replay and live delivery.

use crate::channel::fanout::{deliver, Frames, Sink, Transport};
use crate::channel::poll::StoredEvent;
use crate::channel::{plan_replay, Replay, Window};
use crate::error::Error;
use crate::protocol::ws::{ready_frame, CloseCode};
use crate::protocol::ChannelName;
use serde::{Deserialize, Serialize};
use worker::{State, WebSocket, WebSocketPair};

/// Events read from the log per step of a replay.
const REPLAY_PAGE: u64 = 500;
/// Version of `Attachment`; a socket whose attachment has another version is treated as
/// anonymous and read-only until it reconnects.
const ATTACHMENT_VERSION: u8 = 1;

/// What a socket may do, kept across hibernation. Small: the runtime caps attachments at 2 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub v: u8,
    pub transport: Transport,
    pub publish: bool,
    /// Token expiry, unix seconds.
    pub exp: Option<i64>,
}

impl Attachment {
    pub fn new(transport: Transport, publish: bool, exp: Option<i64>) -> Self {
        Attachment {
            v: ATTACHMENT_VERSION,
            transport,
            publish,
            exp,
        }
    }

    pub fn read(ws: &WebSocket) -> Option<Attachment> {
        ws.deserialize_attachment::<Attachment>()
            .ok()
            .flatten()
            .filter(|a| a.v == ATTACHMENT_VERSION)
    }

    pub fn expired(&self, now_s: i64) -> bool {
        self.exp.is_some_and(|exp| now_s >= exp)
    }
}

/// A subscriber's socket in the `Sink` role.
pub struct SocketSink(pub WebSocket);

impl Sink for SocketSink {
    fn send_text(&self, text: &str) -> bool {
        self.0.send_with_str(text).is_ok()
    }
}

/// The sockets of one transport. Reads the runtime's list without the crate's `unwrap`.
pub fn sockets(state: &State, transport: Transport) -> Vec<WebSocket> {
    state
        .as_raw()
        .get_websockets_with_tag(transport.tag())
        .map(|list| list.into_iter().map(WebSocket::from).collect())
        .unwrap_or_default()
}

pub fn all_sockets(state: &State) -> Vec<WebSocket> {
    state
        .as_raw()
        .get_websockets()
        .map(|list| list.into_iter().map(WebSocket::from).collect())
        .unwrap_or_default()
}

/// Accepts a new subscriber and sends it `ready` (WebSocket clients), then its replay, all
/// before any other event can run. `read_after(after, limit)` reads the log.
pub fn accept(
    state: &State,
    channel: &ChannelName,
    attachment: Attachment,
    cursor: Option<u64>,
    window: Window,
    read_after: impl Fn(u64, u64) -> worker::Result<Vec<StoredEvent>>,
) -> Result<WebSocket, Error> {
    let internal = |what: &str| {
        let what = what.to_string();
        move |e: worker::Error| Error::Internal(format!("{what}: {e}"))
    };
    let pair = WebSocketPair::new().map_err(internal("creating a socket pair"))?;
    let server = pair.server;
    let tags = vec![worker::wasm_bindgen::JsValue::from_str(
        attachment.transport.tag(),
    )];
    state
        .as_raw()
        .accept_websocket_with_tags(server.as_ref(), tags)
        .map_err(|e| Error::Unavailable(format!("accepting a socket: {e:?}")))?;
    server
        .serialize_attachment(attachment)
        .map_err(internal("attaching rights"))?;
    let sink = [SocketSink(server.clone())];
    if attachment.transport == Transport::Ws {
        deliver(&sink, &[ready_frame(window.head)]);
    }
    let plan = plan_replay(cursor, window, false);
    let mut after = match plan {
        Replay::Live => return Ok(pair.client),
        Replay::After(n) => n,
        Replay::Gap { earliest, .. } => earliest.saturating_sub(1),
    };
    let mut first = true;
    loop {
        let events = read_after(after, REPLAY_PAGE).map_err(internal("reading the replay"))?;
        let frames = if first {
            Frames::replay(channel, plan, &events)
        } else {
            Frames::encode(channel, &events)
        };
        first = false;
        deliver(&sink, frames.for_transport(attachment.transport));
        match events.last() {
            Some(last) if events.len() as u64 == REPLAY_PAGE => after = last.id,
            _ => return Ok(pair.client),
        }
    }
}

/// Sends a batch to every live subscriber, once encoded; sockets that fail are closed so their
/// clients reconnect from their cursor.
pub fn fan_out(state: &State, channel: &ChannelName, events: &[StoredEvent]) {
    if events.is_empty() {
        return;
    }
    let frames = Frames::encode(channel, events);
    for transport in [Transport::Ws, Transport::Sse] {
        let sinks: Vec<SocketSink> = sockets(state, transport)
            .into_iter()
            .map(SocketSink)
            .collect();
        for failed in deliver(&sinks, frames.for_transport(transport)) {
            if let Some(sink) = sinks.get(failed) {
                close(&sink.0, CloseCode::Reconnect);
            }
        }
    }
}

pub fn close(ws: &WebSocket, code: CloseCode) {
    // Closing an already closed socket throws; there is nothing left to do then.
    let _ = ws.close(Some(code.code()), Some(code.reason()));
}

/// Closes every socket whose token has expired; returns the earliest expiry still ahead.
pub fn close_expired(state: &State, now_s: i64) -> Option<i64> {
    let mut next: Option<i64> = None;
    for ws in all_sockets(state) {
        let Some(attachment) = Attachment::read(&ws) else {
            continue;
        };
        match attachment.exp {
            Some(_) if attachment.expired(now_s) => close(&ws, CloseCode::TokenExpired),
            Some(exp) => next = Some(next.map_or(exp, |n| n.min(exp))),
            None => {}
        }
    }
    next
}
