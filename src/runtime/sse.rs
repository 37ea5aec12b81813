//! The Worker's SSE bridge: answers the client with `text/event-stream` at once, subscribes to
//! the channel's object over a hibernatable WebSocket (its own, or its isolate's shared one:
//! `runtime::tap`), and pipes the SSE text the object sends (already framed, once per publish)
//! into the stream, adding heartbeats. The stream ends after
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
use crate::protocol::bridge::Upstream;
use crate::protocol::sse;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use worker::js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::ReadableStream;
use worker::{Date, Delay, Headers, Response, ResponseBody, WebSocket};

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

/// A stream that has taken nothing for this many heartbeats while something waited is ended
/// (`Backlog::abandoned`): the runtime may stop reading the stream of a client that left
/// without ever cancelling it (seen under `wrangler dev` for a connection whose request
/// carries a shared upstream), and that client would stay subscribed until its lifetime.
const UNREAD_HEARTBEATS: u64 = 3;

/// How often a stream's pacer looks: a heartbeat's share of `heartbeat_s`, in milliseconds.
pub fn heartbeat_period_ms(heartbeat_s: u64) -> i64 {
    let ms = heartbeat_s.saturating_mul(1000) / WRITES_PER_HEARTBEAT;
    i64::try_from(ms).unwrap_or(i64::MAX).max(1)
}

/// The answer of an event stream fed by a `Feed`: its headers and `body`.
fn body_response(body: ReadableStream) -> Result<Response, Error> {
    let answer = Response::from_body(ResponseBody::Stream(body)).map_err(internal("answering"))?;
    Ok(answer.with_headers(stream_headers()?))
}

fn stream_headers() -> Result<Headers, Error> {
    let headers = Headers::new();
    let set = |k: &str, v: &str| headers.set(k, v).map_err(internal("answering"));
    set("content-type", sse::CONTENT_TYPE)?;
    set("cache-control", sse::CACHE_CONTROL)?;
    set("x-accel-buffering", "no")?;
    Ok(headers)
}

/// SSE bytes for a client, made a JS `Uint8Array` once: every member of a tap that gets a
/// whole chunk is given the same array (nothing writes to it). The text is kept too, for a
/// client whose stream still holds something: it is added to what that client has pending.
#[derive(Clone)]
pub struct Chunk {
    bytes: JsValue,
    text: Rc<str>,
    len: usize,
}

impl Chunk {
    pub fn new(text: &str) -> Chunk {
        Chunk {
            bytes: Uint8Array::from(text.as_bytes()).into(),
            text: Rc::from(text),
            len: text.len(),
        }
    }
}

/// The socket a bridge's request owns, if any (its own, or the tap's upstream it opened): only
/// that request may use it, and it is closed when the bridge goes.
pub type Owned = Rc<RefCell<Option<WebSocket>>>;

pub fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

thread_local! {
    static DESIRED_SIZE: JsValue = JsValue::from_str("desiredSize");
}

/// A callback of a client's JS stream.
type Callback = Closure<dyn FnMut(JsValue) -> JsValue>;

/// One client's stream: a JS `ReadableStream` that its feeders enqueue into at once. Feeding
/// runs no task of the client's request, so an isolate's shared upstream, running in another
/// request, can feed it; the stream's own callbacks (`pull`, `cancel`) and its pacer's timer
/// run in its request.
///
/// The stream's queue counts bytes and its high-water mark is 0: what waits in it is
/// `-desiredSize`, and the runtime calls `pull` when its reader waits on an empty queue, i.e.
/// when the client has taken everything.
#[derive(Clone)]
pub struct Feed(Rc<FeedState>);

struct FeedState {
    controller: RefCell<Option<JsValue>>,
    enqueue: RefCell<Option<Function>>,
    backlog: Cell<Backlog>,
    /// What waited for the client after our last offer (in the queue and pending).
    queued: Cell<usize>,
    /// Bytes that came while the stream's queue still held something: they go out as one chunk
    /// when the client has taken the queue (`pull`), so a client that falls behind costs the
    /// runtime one stream write per catch-up, not one per event.
    pending: RefCell<Vec<u8>>,
    max_backlog: usize,
    closed: Cell<bool>,
    /// A paced replay waits for the client to take everything before this id.
    held: Cell<Option<u64>>,
    socket: Owned,
    on_drop: RefCell<Option<Box<dyn FnOnce()>>>,
    /// When the stream's pacer last ran (unix ms), and how often it runs at least: a stream
    /// whose pacer stopped belongs to a request the runtime has ended (a client that left
    /// without its stream being cancelled).
    ticked_ms: Cell<i64>,
    period_ms: i64,
    /// Called at every tick of the stream's pacer, in its own request (`runtime::tap`).
    on_tick: RefCell<Option<Box<dyn Fn()>>>,
    /// Called once the client has taken everything offered so far (at `pull`, in the
    /// stream's own request): a many-channel connection's merge hears what was taken.
    on_drained: RefCell<Option<Box<dyn Fn()>>>,
    /// The stream's callbacks, alive as long as the stream.
    callbacks: RefCell<Vec<Callback>>,
}

impl Feed {
    /// What waits in the stream's queue now.
    fn in_queue(&self) -> usize {
        let controller = self.0.controller.borrow();
        let desired = controller
            .as_ref()
            .and_then(|c| DESIRED_SIZE.with(|key| Reflect::get(c, key).ok()))
            .and_then(|d| d.as_f64())
            .unwrap_or(0.0);
        if desired < 0.0 {
            (-desired) as usize
        } else {
            0
        }
    }

    /// What waits for the client now: in the stream's queue, and pending.
    fn waiting(&self) -> usize {
        self.in_queue()
            .saturating_add(self.0.pending.borrow().len())
    }

    /// Queues `bytes` (or `text`, when something is pending or still in the queue: then it
    /// waits for `pull`); false when the stream is gone.
    fn send(&self, bytes: &JsValue, text: &str) -> bool {
        let mut pending = self.0.pending.borrow_mut();
        if !pending.is_empty() || self.in_queue() > 0 {
            pending.extend_from_slice(text.as_bytes());
            return true;
        }
        drop(pending);
        self.put(bytes)
    }

    /// Puts what is pending in the stream's queue, as one chunk; its length.
    fn flush(&self) -> usize {
        let pending = std::mem::take(&mut *self.0.pending.borrow_mut());
        if pending.is_empty() {
            return 0;
        }
        if !self.put(&Uint8Array::from(pending.as_slice()).into()) {
            self.gone();
        }
        pending.len()
    }

    /// Queues a chunk; false when the client is gone, or over its backlog and stalled: then
    /// the caller ends it (`end`: its stream ends after what it holds, and it resumes from
    /// `Last-Event-ID`), once it holds no borrow that leaving needs.
    pub fn offer(&self, chunk: &Chunk, now: i64) -> bool {
        if self.0.closed.get() {
            return false;
        }
        let waiting = self.waiting();
        let mut backlog = self.0.backlog.get();
        let taken = self.0.queued.get().saturating_sub(waiting);
        if taken > 0 {
            backlog.took(taken, now);
        }
        backlog.queued(chunk.len, now);
        backlog.heartbeat(now);
        let stalled = backlog.stalled(self.0.max_backlog, now);
        self.0.backlog.set(backlog);
        if stalled {
            return false;
        }
        self.0.queued.set(waiting.saturating_add(chunk.len));
        self.send(&chunk.bytes, &chunk.text)
    }

    fn put(&self, bytes: &JsValue) -> bool {
        let controller = self.0.controller.borrow();
        let enqueue = self.0.enqueue.borrow();
        match (controller.as_ref(), enqueue.as_ref()) {
            (Some(c), Some(f)) => f.call1(c, bytes).is_ok(),
            _ => false,
        }
    }

    /// A paced replay waits: report the cursor once the client has taken what came before.
    pub fn held(&self, sent: u64) {
        self.0.held.set(Some(sent));
        if self.waiting() == 0 {
            self.drained();
        }
    }

    /// The client has taken everything in the stream's queue (the stream's `pull`, in its own
    /// request): what is pending goes out now; once nothing is, a paced replay moves on.
    fn drained(&self) {
        let now = now_ms();
        let pending = self.0.pending.borrow().len();
        let mut backlog = self.0.backlog.get();
        backlog.took(self.0.queued.replace(pending).saturating_sub(pending), now);
        self.0.backlog.set(backlog);
        if self.flush() > 0 {
            return;
        }
        if let Some(drained) = self.0.on_drained.borrow().as_ref() {
            drained();
        }
        if let Some(sent) = self.0.held.take() {
            if let Some(socket) = self.0.socket.borrow().as_ref() {
                // A failed send shows as the socket's close, which ends the stream.
                let _ = socket.send_with_str(Upstream::Cursor(sent).encode());
            }
        }
    }

    /// Ends the stream (after what it holds) and lets go of what feeds it.
    pub fn end(&self) {
        if self.0.closed.get() {
            return;
        }
        // What is pending goes out before the end, as the queue does.
        self.flush();
        if self.0.closed.replace(true) {
            return;
        }
        if let Some(controller) = self.0.controller.borrow().as_ref() {
            let close = Reflect::get(controller, &JsValue::from_str("close"))
                .and_then(|f| f.dyn_into::<Function>());
            if let Ok(close) = close {
                let _ = close.call0(controller);
            }
        }
        self.gone();
    }

    /// The stream is over: leave (`runtime::tap`), then close the socket this request owns.
    fn gone(&self) {
        self.0.closed.set(true);
        let leave = self.0.on_drop.borrow_mut().take();
        if let Some(leave) = leave {
            leave();
        }
        if let Some(socket) = self.0.socket.borrow_mut().take() {
            let _ = socket.close(Some(1000), Some("sse client gone"));
        }
    }

    /// Runs `tick` at every tick of the stream's pacer, in the stream's own request.
    pub fn on_tick(&self, tick: Box<dyn Fn()>) {
        self.0.on_tick.replace(Some(tick));
    }

    /// Runs `drained` whenever the client has taken everything offered so far.
    pub fn on_drained(&self, drained: Box<dyn Fn()>) {
        self.0.on_drained.replace(Some(drained));
    }

    /// Runs `leave` when the stream goes (instead of what `open` was given).
    pub fn on_drop(&self, leave: Box<dyn FnOnce()>) {
        self.0.on_drop.replace(Some(leave));
    }

    /// Open, and its pacer ran within one heartbeat (three periods) and a second.
    pub fn alive(&self, now: i64) -> bool {
        let silence = now.saturating_sub(self.0.ticked_ms.get());
        !self.0.closed.get() && silence <= self.0.period_ms.saturating_mul(3) + 1000
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.get()
    }

    /// A heartbeat when the client has been sent nothing for `period_ms`; returns how long
    /// until the next is due (`None`: the stream was ended, its client no longer reads it).
    fn pace(&self, period_ms: i64) -> Option<i64> {
        let now = now_ms();
        let mut backlog = self.0.backlog.get();
        let unread_ms =
            period_ms.saturating_mul(UNREAD_HEARTBEATS as i64 * WRITES_PER_HEARTBEAT as i64);
        if backlog.abandoned(self.waiting(), now, unread_ms) {
            self.0.backlog.set(backlog);
            self.end();
            return None;
        }
        let due = backlog.heartbeat_in(period_ms, now);
        if due.is_none() {
            backlog.heartbeat(now);
        }
        self.0.backlog.set(backlog);
        match due {
            Some(wait) => Some(wait),
            None => {
                let beat = sse::heartbeat();
                if !self.send(&Uint8Array::from(beat.as_bytes()).into(), beat) {
                    self.gone();
                }
                Some(period_ms)
            }
        }
    }
}

/// Opens a client's stream: the answer, and the `Feed` that fills it. A pacer sends
/// heartbeats and ends the stream at its lifetime or at `token_exp`; `on_drop` runs when the
/// stream goes (the client left, or it ended), before `socket` is closed.
pub fn open(
    limits: &BridgeLimits,
    token_exp: Option<i64>,
    socket: Owned,
    on_drop: Option<Box<dyn FnOnce()>>,
) -> Result<(Feed, Response), Error> {
    let feed = Feed(Rc::new(FeedState {
        controller: RefCell::new(None),
        enqueue: RefCell::new(None),
        backlog: Cell::new(Backlog::opened(now_ms())),
        queued: Cell::new(0),
        pending: RefCell::new(Vec::new()),
        max_backlog: limits.max_backlog,
        closed: Cell::new(false),
        held: Cell::new(None),
        socket,
        on_drop: RefCell::new(on_drop),
        on_tick: RefCell::new(None),
        on_drained: RefCell::new(None),
        ticked_ms: Cell::new(now_ms()),
        period_ms: heartbeat_period_ms(limits.heartbeat_s),
        callbacks: RefCell::new(Vec::new()),
    }));
    let body = readable(&feed)?;
    let lifetime_ms = i64::try_from(limits.lifetime_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut deadline_ms = now_ms().saturating_add(lifetime_ms);
    if let Some(exp) = token_exp {
        deadline_ms = deadline_ms.min(exp.saturating_mul(1000));
    }
    let period_ms = heartbeat_period_ms(limits.heartbeat_s);
    worker::wasm_bindgen_futures::spawn_local(pace(feed.clone(), period_ms, deadline_ms));
    Ok((feed, body_response(body)?))
}

/// The stream itself: `start` keeps its controller and queues the preamble, `pull` reports
/// that the client took everything, `cancel` (the client left) lets go of its feeders. The
/// callbacks hold the feed weakly; the feed holds them.
fn readable(feed: &Feed) -> Result<ReadableStream, Error> {
    let weak = Rc::downgrade(&feed.0);
    let start = Closure::new(move |controller: JsValue| {
        if let Some(state) = weak.upgrade() {
            let enqueue = Reflect::get(&controller, &JsValue::from_str("enqueue"))
                .and_then(|f| f.dyn_into::<Function>())
                .ok();
            state.enqueue.replace(enqueue);
            state.controller.replace(Some(controller));
            Feed(state).put(&Uint8Array::from(sse::preamble().as_bytes()).into());
        }
        JsValue::UNDEFINED
    });
    let weak = Rc::downgrade(&feed.0);
    let pull = Closure::new(move |_: JsValue| {
        if let Some(state) = weak.upgrade() {
            Feed(state).drained();
        }
        JsValue::UNDEFINED
    });
    let weak = Rc::downgrade(&feed.0);
    let cancel = Closure::new(move |_: JsValue| {
        if let Some(state) = weak.upgrade() {
            Feed(state).gone();
        }
        JsValue::UNDEFINED
    });
    let size = Closure::new(|chunk: JsValue| {
        let len = Reflect::get(&chunk, &JsValue::from_str("byteLength")).unwrap_or(JsValue::NULL);
        JsValue::from_f64(len.as_f64().unwrap_or(0.0))
    });
    let failed = |e: JsValue| Error::Internal(format!("making a stream: {e:?}"));
    let source = Object::new();
    let strategy = Object::new();
    let set = |o: &Object, k: &str, v: &JsValue| Reflect::set(o, &JsValue::from_str(k), v);
    set(&source, "start", start.as_ref()).map_err(failed)?;
    set(&source, "pull", pull.as_ref()).map_err(failed)?;
    set(&source, "cancel", cancel.as_ref()).map_err(failed)?;
    set(&strategy, "highWaterMark", &JsValue::from_f64(0.0)).map_err(failed)?;
    set(&strategy, "size", size.as_ref()).map_err(failed)?;
    feed.0
        .callbacks
        .borrow_mut()
        .extend([start, pull, cancel, size]);
    let class: Function = Reflect::get(
        &worker::js_sys::global(),
        &JsValue::from_str("ReadableStream"),
    )
    .map_err(failed)?
    .dyn_into()
    .map_err(failed)?;
    let stream = Reflect::construct(&class, &Array::of2(&source, &strategy)).map_err(failed)?;
    Ok(stream.unchecked_into())
}

/// Sends heartbeats whenever the client has been sent nothing for `period_ms`, and ends the
/// stream at `deadline_ms`; stops when the stream is gone. Its timer is the request's own, so
/// the runtime never takes a stream fed only from another request for hung.
async fn pace(feed: Feed, period_ms: i64, deadline_ms: i64) {
    loop {
        if feed.is_closed() {
            return;
        }
        let left_ms = deadline_ms.saturating_sub(now_ms());
        if left_ms <= 0 {
            feed.end();
            return;
        }
        feed.0.ticked_ms.set(now_ms());
        if let Some(tick) = feed.0.on_tick.borrow().as_ref() {
            tick();
        }
        let Some(wait_ms) = feed.pace(period_ms) else {
            return;
        };
        Delay::from(Duration::from_millis(wait_ms.min(left_ms).max(1) as u64)).await;
    }
}

/// Turns the object's answer to a subscribe (a 101 with a WebSocket) into the client's stream,
/// on its own socket: a subscriber that shares nothing (a filter, presence, Mercure).
pub fn bridge(
    upstream: Response,
    limits: BridgeLimits,
    token_exp: Option<i64>,
) -> Result<Response, Error> {
    let socket = accept(upstream)?;
    let owned: Owned = Rc::new(RefCell::new(Some(socket.clone())));
    let (feed, response) = open(&limits, token_exp, owned.clone(), None)?;
    worker::wasm_bindgen_futures::spawn_local(super::tap::alone(socket, feed, owned));
    Ok(response)
}

/// The socket of a shared upstream's answer (`Hub::start_shared`), accepted; `what` names it
/// in the error when the object answered without one.
pub async fn accept_started(answer: Promise, what: &str) -> Result<WebSocket, Error> {
    JsFuture::from(answer)
        .await
        .ok()
        .and_then(|r| r.dyn_into::<worker::web_sys::Response>().ok())
        .map(Response::from)
        .filter(|r| r.status_code() == 101)
        .ok_or_else(|| Error::Unavailable(format!("the channel object refused the {what}")))
        .and_then(accept)
}

/// The socket of the object's 101, accepted.
pub fn accept(upstream: Response) -> Result<WebSocket, Error> {
    let socket = upstream
        .websocket()
        .ok_or_else(|| Error::Unavailable("the channel object did not open a socket".into()))?;
    socket
        .accept()
        .map_err(internal("accepting the hub socket"))?;
    Ok(socket)
}
