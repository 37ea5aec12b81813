//! The Worker's side of a many-channel connection (`docs/API.md#streams`): one hibernatable
//! WebSocket per channel to its object (a *lane*, subscribed as a v1 WebSocket client), merged
//! into one client stream, an SSE response or a WebSocket the Worker holds. Every decision is
//! `channel::merge`'s; this file reads the sockets and the clock and carries its steps out.
//! When the client goes away, every lane is closed, so each object forgets it. Lanes that
//! carry no presence, filter or publishing right share their channel's upstream in this
//! isolate (`shared`).

use super::access::{Access, Permits};
use super::http::internal;
use super::sse::{self, heartbeat_period_ms, now_ms, BridgeLimits, Chunk, Feed};
use crate::auth::Action;
use crate::channel::merge::{Face, LaneId, Merge, Out, Step};
use crate::config::Config;
use crate::error::Error;
use crate::protocol::many::{channel_error, parse_many_client, ManyClientFrame};
use crate::protocol::stream::{ChannelSet, StreamSince};
use crate::protocol::ws::{CloseCode, Refusal, PING, PONG};
use crate::protocol::ChannelName;
use futures::future::join_all;
use futures::StreamExt;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use worker::{Delay, Env, Response, WebSocket, WebSocketPair, WebsocketEvent};

mod lanes;
mod seat;
mod shared;

use lanes::{attach_all, drop_lane, open_later, subscribe, Got, How};
use seat::Seat;

/// What a connection needs to open lanes and hold its client.
pub struct Opening {
    pub face: Face,
    pub set: ChannelSet,
    pub since: Option<StreamSince>,
    /// Each channel's access, in the set's order (already checked).
    pub accesses: Vec<Access>,
    /// For a WebSocket's later `subscribe` frames.
    pub permits: Permits,
    pub env: Env,
    pub config: Rc<Config>,
}

/// What the client is.
enum Client {
    /// An SSE stream, and what was offered to it and not yet taken: each text's length and
    /// what its taking tells its lane's object.
    Sse(Feed, RefCell<VecDeque<Taken>>),
    Ws(WebSocket),
}

type Taken = (usize, Option<(LaneId, u64, usize)>);

/// How a lane reaches its object.
enum Link {
    /// Its own socket.
    Own(WebSocket),
    /// A seat on its channel's shared upstream (which its own socket may carry).
    Seat(Rc<Seat>),
}

/// One connection: its merge, its lanes' links and its client.
struct Conn {
    merge: RefCell<Merge>,
    lanes: RefCell<Vec<(LaneId, Link)>>,
    client: Client,
    permits: Permits,
    env: Env,
    config: Rc<Config>,
    /// When a WebSocket client last sent a frame (`ping` included), unix milliseconds: a
    /// presence connection silent for `HEARTBEAT_SECONDS` is taken for gone, as the objects
    /// take their own presence WebSockets.
    heard: Cell<i64>,
    /// When its pacer last ran (unix ms): a connection whose pacer stopped belongs to a
    /// request the runtime has ended, and its seats are let go (`shared`).
    ticked: Cell<i64>,
}

/// Opens every lane of the set, then answers the client: an SSE stream or a 101. A lane whose
/// object does not answer with a socket answers the request instead (after the others are
/// closed).
pub async fn open(opening: Opening) -> Result<Response, Error> {
    let Opening {
        face,
        set,
        since,
        accesses,
        permits,
        env,
        config,
    } = opening;
    let (merge, opens) = Merge::new(
        face,
        &set,
        since.as_ref(),
        config.slow_consumer_bytes,
        config.heartbeat_seconds,
        config.max_stream_channels,
        now_ms(),
    );
    let calls = opens
        .iter()
        .zip(&accesses)
        .filter_map(|(step, access)| match step {
            Step::Open {
                lane,
                channel,
                since,
            } => Some(subscribe(
                &env,
                *lane,
                channel.clone(),
                *since,
                How::of(face, *access, &permits),
            )),
            _ => None,
        });
    let mut lanes = Vec::new();
    let mut refused = None;
    for answer in join_all(calls).await {
        match answer {
            Ok(Ok(lane)) => lanes.push(lane),
            Ok(Err(response)) => refused = refused.or(Some(Ok(response))),
            Err(e) => refused = refused.or(Some(Err(e))),
        }
    }
    if let Some(refused) = refused {
        for opened in &lanes {
            if let Got::Socket(socket, _) = &opened.got {
                drop_lane(socket, "stream refused");
            }
        }
        return refused;
    }
    let deadline = permits.expires();
    match face {
        Face::Sse => {
            // The client's stream is a `Feed`, as an SSE bridge's: its heartbeats, its end at
            // the lifetime or the token's expiry, and its cancel the moment the client goes.
            let limits = BridgeLimits {
                heartbeat_s: config.heartbeat_seconds,
                lifetime_s: config.sse_max_seconds,
                max_backlog: config.slow_consumer_bytes,
            };
            let (feed, response) = sse::open(&limits, deadline, Rc::new(RefCell::new(None)), None)?;
            let conn = Rc::new(Conn {
                merge: RefCell::new(merge),
                lanes: RefCell::new(Vec::new()),
                client: Client::Sse(feed.clone(), RefCell::new(VecDeque::new())),
                permits,
                env,
                config: config.clone(),
                heard: Cell::new(now_ms()),
                ticked: Cell::new(now_ms()),
            });
            let gone = Rc::downgrade(&conn);
            feed.on_drop(Box::new(move || {
                if let Some(conn) = gone.upgrade() {
                    conn.merge.borrow_mut().close();
                    conn.close_lanes("sse client gone");
                }
            }));
            let taking = Rc::downgrade(&conn);
            feed.on_drained(Box::new(move || {
                if let Some(conn) = taking.upgrade() {
                    conn.took_all();
                }
            }));
            attach_all(&conn, lanes)?;
            let lifetime_ms =
                i64::try_from(config.sse_max_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
            let deadline = deadline
                .map(|exp| exp.saturating_mul(1000))
                .unwrap_or(i64::MAX)
                .min(now_ms().saturating_add(lifetime_ms));
            let period = heartbeat_period_ms(config.heartbeat_seconds);
            worker::wasm_bindgen_futures::spawn_local(pace(conn, true, period, deadline));
            Ok(response)
        }
        Face::Ws => {
            let pair = WebSocketPair::new().map_err(internal("creating a socket pair"))?;
            pair.server
                .accept()
                .map_err(internal("accepting the client socket"))?;
            let conn = Rc::new(Conn {
                merge: RefCell::new(merge),
                lanes: RefCell::new(Vec::new()),
                client: Client::Ws(pair.server.clone()),
                permits,
                env,
                config: config.clone(),
                heard: Cell::new(now_ms()),
                ticked: Cell::new(now_ms()),
            });
            attach_all(&conn, lanes)?;
            worker::wasm_bindgen_futures::spawn_local(read_client(conn.clone(), pair.server));
            let deadline = deadline.map_or(i64::MAX, |exp| exp.saturating_mul(1000));
            let period = heartbeat_period_ms(config.heartbeat_seconds);
            worker::wasm_bindgen_futures::spawn_local(pace(conn, false, period, deadline));
            Response::from_websocket(pair.client).map_err(internal("answering"))
        }
    }
}

/// Reads a multi-channel WebSocket client's frames until it closes; then every lane closes.
async fn read_client(conn: Rc<Conn>, socket: WebSocket) {
    if let Ok(mut events) = socket.events() {
        while let Some(event) = events.next().await {
            let text = match event {
                Ok(WebsocketEvent::Message(message)) => message.text(),
                Ok(WebsocketEvent::Close(_)) | Err(_) => break,
            };
            conn.heard.set(now_ms());
            let Some(text) = text else {
                let err = Error::bad_request("binary frames are not accepted; send JSON text");
                let _ = socket.send_with_str(Refusal::from(err).frame());
                continue;
            };
            if text == PING {
                let _ = socket.send_with_str(PONG);
                continue;
            }
            conn.client_frame(&socket, &text);
            if conn.merge.borrow().ended() {
                break;
            }
        }
    }
    // The client is gone: its lanes' closes are not a reason to end anything more.
    conn.merge.borrow_mut().close();
    conn.close_lanes("client gone");
}

impl Conn {
    fn client_frame(self: &Rc<Self>, socket: &WebSocket, text: &str) {
        let limits = crate::protocol::publish::PublishLimits {
            max_batch: 1,
            ..self.config.publish_limits()
        };
        let frame = match parse_many_client(text, limits) {
            Ok(frame) => frame,
            Err((refusal, channel)) => {
                let frame = match channel {
                    Some(c) => channel_error(&refusal, &c),
                    None => refusal.frame(),
                };
                let _ = socket.send_with_str(frame);
                return;
            }
        };
        let now = now_ms();
        let steps = match &frame {
            ManyClientFrame::Subscribe { channel, .. } => {
                match self.permits.check(&self.config, Action::Subscribe, channel) {
                    Ok(_) => self.merge.borrow_mut().client(frame, now),
                    Err(e) => {
                        let channel = channel.clone();
                        self.merge.borrow_mut().refuse(e, &channel, now)
                    }
                }
            }
            // A seat has no socket of its own to publish on, and its token may not publish
            // there: refused as its object would refuse it.
            ManyClientFrame::Publish {
                channel, reference, ..
            } if self.seated(channel) => {
                let error = Error::Forbidden("this socket's token may not publish here".into());
                let refusal = Refusal::answering(error, reference.clone());
                self.merge.borrow_mut().answer(&refusal, channel, now)
            }
            _ => self.merge.borrow_mut().client(frame, now),
        };
        self.run(steps);
    }

    /// True when `channel`'s lane sits on a shared upstream.
    fn seated(&self, channel: &ChannelName) -> bool {
        let lane = self.merge.borrow().lane_of(channel);
        lane.is_some_and(|lane| {
            self.lanes
                .borrow()
                .iter()
                .any(|(l, link)| *l == lane && matches!(link, Link::Seat(_)))
        })
    }

    /// True when `lane` is on its own socket.
    fn owns(&self, lane: LaneId) -> bool {
        self.lanes
            .borrow()
            .iter()
            .any(|(l, link)| *l == lane && matches!(link, Link::Own(_)))
    }

    /// `lane` reaches its object by `link` from now on.
    fn relink(&self, lane: LaneId, link: Link) {
        let mut lanes = self.lanes.borrow_mut();
        if let Some(at) = lanes.iter().position(|(l, _)| *l == lane) {
            if let Some(slot) = lanes.get_mut(at) {
                slot.1 = link;
            }
        }
    }

    /// The seats among its lanes.
    fn seats(&self) -> Vec<Rc<Seat>> {
        self.lanes
            .borrow()
            .iter()
            .filter_map(|(_, link)| match link {
                Link::Seat(seat) => Some(seat.clone()),
                Link::Own(_) => None,
            })
            .collect()
    }

    /// Carries the merge's steps out.
    fn run(self: &Rc<Self>, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Client(out) => self.to_client(out),
                // A seat's reports go nowhere: its upstream confirms for every seat.
                Step::Upstream(lane, text) => {
                    if let Some(socket) = self.socket(lane) {
                        let _ = socket.send_with_str(&text);
                    }
                }
                Step::Open {
                    lane,
                    channel,
                    since,
                } => {
                    worker::wasm_bindgen_futures::spawn_local(open_later(
                        self.clone(),
                        lane,
                        channel,
                        since,
                    ));
                }
                Step::Close(lane) => {
                    let link = {
                        let mut lanes = self.lanes.borrow_mut();
                        let at = lanes.iter().position(|(l, _)| *l == lane);
                        at.map(|at| lanes.remove(at).1)
                    };
                    if let Some(link) = link {
                        close_link(link, "unsubscribed");
                    }
                }
                Step::End(code) => self.end(code),
            }
        }
    }

    /// The lane's own socket (none for a seat).
    fn socket(&self, lane: LaneId) -> Option<WebSocket> {
        self.lanes.borrow().iter().find_map(|(l, link)| match link {
            Link::Own(socket) if *l == lane => Some(socket.clone()),
            _ => None,
        })
    }

    fn to_client(&self, out: Out) {
        match &self.client {
            Client::Sse(feed, offered) => {
                offered
                    .borrow_mut()
                    .push_back((out.text.len(), out.confirms));
                if !feed.offer(&Chunk::new(&out.text), now_ms()) {
                    self.end(CloseCode::TooSlow);
                }
            }
            Client::Ws(socket) => {
                if socket.send_with_str(&out.text).is_err() {
                    self.end(CloseCode::Reconnect);
                }
            }
        }
    }

    /// Ends the connection: the client with `code`, then every lane; nothing more is done.
    fn end(&self, code: CloseCode) {
        self.merge.borrow_mut().close();
        match &self.client {
            Client::Sse(feed, _) => feed.end(),
            Client::Ws(socket) => {
                let _ = socket.close(Some(code.code()), Some(code.reason()));
            }
        }
        self.close_lanes(code.reason());
    }

    /// SSE: the client has taken everything offered: the merge hears it, text by text (and
    /// tells the lanes' objects).
    fn took_all(self: &Rc<Self>) {
        let Client::Sse(_, offered) = &self.client else {
            return;
        };
        let taken: Vec<Taken> = offered.borrow_mut().drain(..).collect();
        let now = now_ms();
        for (bytes, confirms) in taken {
            let steps = self.merge.borrow_mut().took(bytes, confirms, now);
            self.run(steps);
        }
    }

    fn close_lanes(&self, reason: &str) {
        let lanes = std::mem::take(&mut *self.lanes.borrow_mut());
        for (_, link) in lanes {
            close_link(link, reason);
        }
    }
}

/// Closes a lane's socket, or gives up its seat.
fn close_link(link: Link, reason: &str) {
    match link {
        Link::Own(socket) => {
            let _ = socket.close(Some(1000), Some(reason));
        }
        Link::Seat(seat) => shared::leave(&seat, reason),
    }
}

/// The end at `deadline_ms` (token expiry, SSE lifetime; an SSE stream's own pacer sends its
/// heartbeats and ends it then too), and the stall rule when nothing comes.
/// A presence connection also pings its lanes every period, so that their objects know it is
/// there, and a presence WebSocket client silent for two `HEARTBEAT_SECONDS` ends it (4002).
async fn pace(conn: Rc<Conn>, sse: bool, period_ms: i64, deadline_ms: i64) {
    let presence = conn.permits.member.is_some();
    // As the objects judge their own presence WebSockets (`runtime::presence`): two heartbeats.
    let silent_ms =
        i64::try_from(conn.config.heartbeat_seconds.saturating_mul(2000)).unwrap_or(i64::MAX);
    let mut pinged = now_ms();
    loop {
        if conn.merge.borrow().ended() {
            return;
        }
        let now = now_ms();
        conn.ticked.set(now);
        for seat in conn.seats() {
            shared::tick(&seat);
        }
        if presence {
            if !sse && now.saturating_sub(conn.heard.get()) > silent_ms {
                conn.end(CloseCode::Silent);
                return;
            }
            if now.saturating_sub(pinged) >= period_ms {
                pinged = now;
                for (_, link) in conn.lanes.borrow().iter() {
                    if let Link::Own(lane) = link {
                        let _ = lane.send_with_str(PING);
                    }
                }
            }
        }
        let left_ms = deadline_ms.saturating_sub(now);
        if left_ms <= 0 {
            let code = match sse {
                true => CloseCode::Reconnect,
                false => CloseCode::TokenExpired,
            };
            conn.end(code);
            return;
        }
        if conn.merge.borrow_mut().stalled(now) {
            conn.end(CloseCode::TooSlow);
            return;
        }
        Delay::from(Duration::from_millis(period_ms.min(left_ms).max(1) as u64)).await;
    }
}
