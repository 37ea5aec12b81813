//! The Worker's side of a many-channel connection (`docs/API.md#streams`): one hibernatable
//! WebSocket per channel to its object (a *lane*, subscribed as a v1 WebSocket client), merged
//! into one client stream, an SSE response or a WebSocket the Worker holds. Every decision is
//! `channel::merge`'s; this file reads the sockets and the clock and carries its steps out.
//! When the client goes away, every lane is closed, so each object forgets it. Lanes that
//! carry no presence, filter or publishing right share their channel's upstream in this
//! isolate (`shared`).

use super::access::{Access, Permits};
use super::http::internal;
use super::sse::{heartbeat_period_ms, now_ms, stream_response};
use crate::auth::Action;
use crate::channel::merge::{Face, LaneId, Merge, Out, Step};
use crate::config::Config;
use crate::error::Error;
use crate::protocol::many::{channel_error, parse_many_client, ManyClientFrame};
use crate::protocol::sse;
use crate::protocol::stream::{ChannelSet, StreamSince};
use crate::protocol::ws::{CloseCode, Refusal, PING, PONG};
use crate::protocol::ChannelName;
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::future::join_all;
use futures::{stream, StreamExt};
use std::cell::{Cell, RefCell};
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
    Sse(UnboundedSender<Item>),
    Ws(WebSocket),
}

/// What the SSE body gets next.
enum Item {
    Out(Out),
    Heartbeat,
    End,
}

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
            let (tx, rx) = unbounded();
            let conn = Rc::new(Conn {
                merge: RefCell::new(merge),
                lanes: RefCell::new(Vec::new()),
                client: Client::Sse(tx.clone()),
                permits,
                env,
                config: config.clone(),
                heard: Cell::new(now_ms()),
                ticked: Cell::new(now_ms()),
            });
            attach_all(&conn, lanes)?;
            let lifetime_ms =
                i64::try_from(config.sse_max_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
            let deadline = deadline
                .map(|exp| exp.saturating_mul(1000))
                .unwrap_or(i64::MAX)
                .min(now_ms().saturating_add(lifetime_ms));
            let period = heartbeat_period_ms(config.heartbeat_seconds);
            worker::wasm_bindgen_futures::spawn_local(pace(
                conn.clone(),
                Some(tx),
                period,
                deadline,
            ));
            sse_response(conn, rx)
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
            worker::wasm_bindgen_futures::spawn_local(pace(conn, None, period, deadline));
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
            Client::Sse(tx) => {
                let _ = tx.unbounded_send(Item::Out(out));
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
            Client::Sse(tx) => {
                let _ = tx.unbounded_send(Item::End);
            }
            Client::Ws(socket) => {
                let _ = socket.close(Some(code.code()), Some(code.reason()));
            }
        }
        self.close_lanes(code.reason());
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

/// SSE: heartbeats when the client has been sent nothing for `period_ms`; both faces: the
/// end at `deadline_ms` (token expiry, SSE lifetime), and the stall rule when nothing comes.
/// A presence connection also pings its lanes every period, so that their objects know it is
/// there, and a presence WebSocket client silent for two `HEARTBEAT_SECONDS` ends it (4002).
async fn pace(
    conn: Rc<Conn>,
    heartbeats: Option<UnboundedSender<Item>>,
    period_ms: i64,
    deadline_ms: i64,
) {
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
            if heartbeats.is_none() && now.saturating_sub(conn.heard.get()) > silent_ms {
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
            let code = match heartbeats {
                Some(_) => CloseCode::Reconnect,
                None => CloseCode::TokenExpired,
            };
            conn.end(code);
            return;
        }
        if conn.merge.borrow_mut().stalled(now) {
            conn.end(CloseCode::TooSlow);
            return;
        }
        let mut wait = period_ms;
        if let Some(tx) = &heartbeats {
            let due = conn.merge.borrow().heartbeat_in(period_ms, now);
            match due {
                Some(w) => wait = w,
                None => {
                    if tx.unbounded_send(Item::Heartbeat).is_err() {
                        return;
                    }
                    conn.merge.borrow_mut().heartbeat(now);
                }
            }
        }
        Delay::from(Duration::from_millis(wait.min(left_ms).max(1) as u64)).await;
    }
}

/// Closes every lane when the client's stream is dropped, whatever the reason.
struct CloseOnDrop(Rc<Conn>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.merge.borrow_mut().close();
        self.0.close_lanes("sse client gone");
    }
}

struct Body {
    items: UnboundedReceiver<Item>,
    conn: CloseOnDrop,
}

fn sse_response(conn: Rc<Conn>, rx: UnboundedReceiver<Item>) -> Result<Response, Error> {
    let body = Body {
        items: rx,
        conn: CloseOnDrop(conn),
    };
    stream_response(stream::unfold(body, next_chunk))
}

/// The client's stream takes its next chunk: the merge hears what it took (and tells the
/// lanes' objects).
async fn next_chunk(mut body: Body) -> Option<(Result<Vec<u8>, worker::Error>, Body)> {
    match body.items.next().await? {
        Item::Out(out) => {
            let conn = &body.conn.0;
            let steps = conn
                .merge
                .borrow_mut()
                .took(out.text.len(), out.confirms, now_ms());
            conn.run(steps);
            Some((Ok(out.text.into_bytes()), body))
        }
        Item::Heartbeat => Some((Ok(sse::heartbeat().as_bytes().to_vec()), body)),
        Item::End => None,
    }
}
