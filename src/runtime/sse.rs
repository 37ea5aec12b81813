//! The Worker's SSE bridge: answers the client with `text/event-stream` at once, subscribes to
//! the channel's object over a hibernatable WebSocket, and pipes the SSE text the object sends
//! (already framed, once per publish) into the stream, adding heartbeats. The stream ends after
//! `SSE_MAX_SECONDS`, when the token expires, or when the object closes the socket; when the
//! client goes away, dropping the stream closes the socket, so the object forgets it. A client
//! that stops reading is dropped once `SLOW_CONSUMER_BYTES` wait for it and it has taken nothing
//! for `STALL_MS`: its memory stays bounded, a big replay to a client that reads is not mistaken
//! for a stall, and `EventSource` resumes from `Last-Event-ID` when it reads again. A replay
//! comes paced: after each step the object sends a `held` notice, and once the client has taken
//! everything before it the bridge reports the cursor, which brings the next step.

use super::http::internal;
use crate::channel::backlog::Backlog;
use crate::error::Error;
use crate::protocol::bridge::{Downstream, Upstream};
use crate::protocol::sse;
use crate::protocol::ws::CloseCode;
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::{stream, StreamExt};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use worker::{Date, Delay, Headers, Response, WebSocket, WebsocketEvent};

/// The bridge's settings, from `Config`.
pub struct BridgeLimits {
    pub heartbeat_s: u64,
    pub lifetime_s: u64,
    /// Unread bytes after which a client is dropped as too slow.
    pub max_backlog: usize,
}

/// A write to a client that has gone away only fails once the buffers on the way are spent:
/// measured under `wrangler dev`, at the third write after the client left. So the heartbeat
/// comment goes out this many times per `HEARTBEAT_SECONDS`, and a gone client is noticed within
/// one heartbeat period.
const WRITES_PER_HEARTBEAT: u64 = 3;

/// How often a stream's pacer looks: a heartbeat's share of `heartbeat_s`, in milliseconds.
pub fn heartbeat_period_ms(heartbeat_s: u64) -> i64 {
    let ms = heartbeat_s.saturating_mul(1000) / WRITES_PER_HEARTBEAT;
    i64::try_from(ms).unwrap_or(i64::MAX).max(1)
}

/// The answer of an event stream: its headers, the preamble at once, then `chunks`.
pub fn stream_response<S>(chunks: S) -> Result<Response, Error>
where
    S: futures::Stream<Item = Result<Vec<u8>, worker::Error>> + 'static,
{
    let preamble =
        stream::once(async { Ok::<Vec<u8>, worker::Error>(sse::preamble().into_bytes()) });
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(internal("answering"));
    set("content-type", sse::CONTENT_TYPE)?;
    set("cache-control", sse::CACHE_CONTROL)?;
    set("x-accel-buffering", "no")?;
    Ok(Response::from_stream(preamble.chain(chunks))
        .map_err(internal("answering"))?
        .with_headers(headers))
}

/// Closes the object's socket when the client's stream is dropped, whatever the reason.
struct CloseOnDrop(WebSocket);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.close(Some(1000), Some("sse client gone"));
    }
}

/// The client's backlog (`channel::backlog`), shared by the tasks that feed the stream, and
/// whether it overflowed (the stream then ends).
#[derive(Clone)]
struct Shared {
    backlog: Rc<Cell<Backlog>>,
    overflowed: Rc<Cell<bool>>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            backlog: Rc::new(Cell::new(Backlog::opened(now_ms()))),
            overflowed: Rc::new(Cell::new(false)),
        }
    }

    /// Applies `change` to the backlog at the current time.
    fn update<T>(&self, change: impl FnOnce(&mut Backlog, i64) -> T) -> T {
        let mut backlog = self.backlog.get();
        let out = change(&mut backlog, now_ms());
        self.backlog.set(backlog);
        out
    }
}

pub fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

struct Bridge {
    items: UnboundedReceiver<Item>,
    shared: Shared,
    socket: CloseOnDrop,
}

/// What the client's stream gets next: a frame from the object, a heartbeat, or its end; or
/// the object's notice that a paced replay waits until the client has taken everything before
/// it (not sent to the client: the bridge reports the cursor then).
enum Item {
    Frame(String),
    Heartbeat,
    Held(u64),
    End,
}

/// Turns the object's answer to a subscribe (a 101 with a WebSocket) into the client's stream.
/// Two tasks feed it: `forward` (the object's frames) and `pace` (heartbeats and the end of the
/// stream's lifetime), so a frame costs no timer of its own.
pub fn bridge(
    upstream: Response,
    limits: BridgeLimits,
    token_exp: Option<i64>,
) -> Result<Response, Error> {
    let socket = upstream
        .websocket()
        .ok_or_else(|| Error::Unavailable("the channel object did not open a socket".into()))?;
    socket
        .accept()
        .map_err(internal("accepting the hub socket"))?;
    let (tx, rx) = unbounded();
    let shared = Shared::new();
    let forwarding = forward(
        socket.clone(),
        tx.clone(),
        shared.clone(),
        limits.max_backlog,
    );
    worker::wasm_bindgen_futures::spawn_local(forwarding);

    let lifetime_ms = i64::try_from(limits.lifetime_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut deadline_ms = now_ms().saturating_add(lifetime_ms);
    if let Some(exp) = token_exp {
        deadline_ms = deadline_ms.min(exp.saturating_mul(1000));
    }
    let period_ms = heartbeat_period_ms(limits.heartbeat_s);
    worker::wasm_bindgen_futures::spawn_local(pace(tx, shared.clone(), period_ms, deadline_ms));
    let bridge = Bridge {
        items: rx,
        shared,
        socket: CloseOnDrop(socket),
    };
    stream_response(stream::unfold(bridge, next_chunk))
}

async fn next_chunk(mut bridge: Bridge) -> Option<(Result<Vec<u8>, worker::Error>, Bridge)> {
    loop {
        if bridge.shared.overflowed.get() {
            return None;
        }
        match bridge.items.next().await? {
            Item::Frame(text) => {
                bridge.shared.update(|b, now| b.took(text.len(), now));
                return Some((Ok(text.into_bytes()), bridge));
            }
            Item::Heartbeat => return Some((Ok(sse::heartbeat().as_bytes().to_vec()), bridge)),
            Item::Held(sent) => {
                // The client has taken all the replay sent so far: ask for the next step. A
                // failed send shows as the socket's close, which ends the stream.
                let _ = bridge
                    .socket
                    .0
                    .send_with_str(Upstream::Cursor(sent).encode());
            }
            Item::End => return None,
        }
    }
}

/// Sends a heartbeat whenever the client has been sent nothing for `period_ms`, and the end
/// at `deadline_ms`; stops when the stream is gone.
async fn pace(tx: UnboundedSender<Item>, shared: Shared, period_ms: i64, deadline_ms: i64) {
    loop {
        let left_ms = deadline_ms.saturating_sub(now_ms());
        if left_ms <= 0 {
            let _ = tx.unbounded_send(Item::End);
            return;
        }
        let due = shared.update(|b, now| b.heartbeat_in(period_ms, now));
        let wait_ms = match due {
            Some(wait) => wait,
            None => {
                if tx.unbounded_send(Item::Heartbeat).is_err() {
                    return;
                }
                shared.update(|b, now| b.heartbeat(now));
                period_ms
            }
        };
        Delay::from(Duration::from_millis(wait_ms.min(left_ms).max(1) as u64)).await;
        if tx.is_closed() {
            return;
        }
    }
}

/// Moves the object's text frames into the stream until either side closes, or until the
/// client has left more than `max_backlog` bytes unread and stalled: then the object's socket
/// is closed as too slow and the stream ends.
async fn forward(socket: WebSocket, tx: UnboundedSender<Item>, shared: Shared, max_backlog: usize) {
    if let Ok(events) = socket.events() {
        forward_events(&socket, events, &tx, &shared, max_backlog).await;
    }
    let _ = tx.unbounded_send(Item::End);
}

async fn forward_events(
    socket: &WebSocket,
    mut events: worker::EventStream<'_>,
    tx: &UnboundedSender<Item>,
    shared: &Shared,
    max_backlog: usize,
) {
    while let Some(event) = events.next().await {
        let text = match event {
            Ok(WebsocketEvent::Message(message)) => message.text(),
            Ok(WebsocketEvent::Close(_)) | Err(_) => break,
        };
        let Some(text) = text else { continue };
        if let Downstream::Held(sent) = Downstream::decode(&text) {
            if tx.unbounded_send(Item::Held(sent)).is_err() {
                break;
            }
            continue;
        }
        let stalled = shared.update(|b, now| {
            b.queued(text.len(), now);
            b.stalled(max_backlog, now)
        });
        if stalled {
            shared.overflowed.set(true);
            let code = CloseCode::TooSlow;
            let _ = socket.close(Some(code.code()), Some(code.reason()));
            break;
        }
        if tx.unbounded_send(Item::Frame(text)).is_err() {
            break;
        }
    }
}
