//! Many-channel lanes that share an upstream (`docs/architecture.md#tap`): the lanes of one
//! channel in one Worker isolate that carry no presence, no topic filter and no publishing
//! right share one hibernatable WebSocket to its object, a `Trunk` (`runtime::trunk`, which
//! holds the rules about requests and the hand-over), as plain SSE bridges share theirs.
//!
//! - A lane with nothing to replay takes a *seat* at once. Any other opens its own socket and,
//!   once caught up, takes a seat (the upstream is no further than it) or makes its socket the
//!   upstream (there is none). `channel::tap` decides; this file carries it out.
//! - The upstream's request puts each frame in every seat's inbox and rings the seat's bell,
//!   whose reaction runs in the seat's own connection's request: that one gives the frames to
//!   its merge and writes to its client. Flow control stays the connection's (its window).
//! - When the upstream's lane leaves, another seat's request opens a new upstream from where
//!   the shared stream stood (`Trunk::take_over`).

use super::seat::Seat;
use super::{Conn, Link};
use crate::channel::fanout::Transport;
use crate::channel::merge::LaneId;
use crate::channel::tap::{catch_up, entry, Catchup, Entry, LaneFrame, Share};
use crate::error::Error;
use crate::protocol::ws::{cursor_frame, CloseCode, PONG};
use crate::protocol::ChannelName;
use crate::runtime::client::Hub;
use crate::runtime::sse::now_ms;
use crate::runtime::trunk::{Rider, Trunk, Trunks};
use futures::StreamExt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::thread::LocalKey;
use worker::js_sys::Promise;
use worker::{EventStream, WebSocket, WebsocketEvent};

/// The shared upstream of one channel's lanes in this isolate.
pub(super) type LaneTap = Trunk<Seat>;

thread_local! {
    static TAPS: Trunks<Seat> = RefCell::new(HashMap::new());
}

/// Where a lane with this cursor may take a seat now (`None`: it opens its own socket).
pub(super) fn seat_now(channel: &ChannelName, since: Option<u64>) -> Option<u64> {
    match entry(LaneTap::view_of(channel), since) {
        Entry::Attach { through } => Some(through),
        Entry::Replay => None,
    }
}

/// A lane with cursor `since` takes a seat on the channel's live upstream, in its
/// connection's request; `None` when it cannot (any more): then it opens its own socket.
pub(super) fn sit(
    conn: &Rc<Conn>,
    lane: LaneId,
    channel: &ChannelName,
    since: Option<u64>,
) -> Option<Rc<Seat>> {
    let through = seat_now(channel, since)?;
    let tap = LaneTap::find(channel)?;
    let seat = Seat::new(conn, lane, channel, through);
    tap.attach(&seat);
    Some(seat)
}

/// What a lane on its own socket did once caught up.
pub(super) enum Caught {
    Stay,
    /// It sits on the channel's upstream; its socket is closed.
    Joined,
    /// Its socket is the channel's upstream now: its reader carries every seat.
    Carrying(Rc<LaneTap>, u64),
}

/// A lane on its own socket has everything through `position`; `head` was the channel's head
/// when its socket was accepted. In its connection's request.
pub(super) fn caught_up(
    conn: &Rc<Conn>,
    lane: LaneId,
    channel: &ChannelName,
    socket: &WebSocket,
    position: u64,
    head: u64,
) -> Caught {
    if !conn.owns(lane) || conn.merge.borrow().ended() {
        return Caught::Stay;
    }
    let tap = LaneTap::find(channel);
    match (catch_up(LaneTap::view_of(channel), position, head), tap) {
        (Catchup::Join { through }, Some(tap)) => {
            let seat = Seat::new(conn, lane, channel, through);
            tap.attach(&seat);
            conn.relink(lane, Link::Seat(seat));
            let _ = socket.close(Some(1000), Some("joined the isolate's upstream"));
            Caught::Joined
        }
        (Catchup::Promote { position }, _) => {
            let seat = Seat::new(conn, lane, channel, position);
            seat.socket.replace(Some(socket.clone()));
            let (tap, generation) = LaneTap::promote(&seat, channel, position, socket);
            conn.relink(lane, Link::Seat(seat));
            Caught::Carrying(tap, generation)
        }
        _ => Caught::Stay,
    }
}

/// The seat's lane is closed (unsubscribed, or its connection ended).
pub(super) fn leave(seat: &Seat, reason: &str) {
    if let Some(tap) = LaneTap::find(&seat.channel) {
        tap.leave(seat.id);
    }
    if let Some(socket) = seat.socket.borrow_mut().take() {
        let _ = socket.close(Some(1000), Some(reason));
    }
}

/// A tick of the seat's connection's pacer, in its request: seats whose connections stopped
/// are let go, and an upstream without a live owner is taken over by this seat.
pub(super) fn tick(seat: &Rc<Seat>) {
    if let Some(tap) = LaneTap::find(&seat.channel) {
        tap.rescue(seat.id);
    }
}

/// Reads the upstream's frames and hands them to every seat until it closes or the upstream
/// moves on (its owner's lane left). In the owner's connection's request; `window` is the
/// object's, and the upstream confirms every quarter of it, so it never waits for anyone.
pub(super) async fn carry(
    tap: Rc<LaneTap>,
    generation: u64,
    socket: &WebSocket,
    mut events: EventStream<'_>,
    window: usize,
) {
    let mut unconfirmed = 0usize;
    while let Some(event) = events.next().await {
        let text = match event {
            Ok(WebsocketEvent::Message(message)) => message.text(),
            Ok(WebsocketEvent::Close(_)) | Err(_) => break,
        };
        let Some(text) = text else { continue };
        if !tap.current(generation) {
            let _ = socket.close(Some(1000), Some("upstream moved on"));
            return;
        }
        if text == PONG {
            continue;
        }
        if let Some(id) = tap.distribute(&text) {
            unconfirmed = unconfirmed.saturating_add(text.len());
            if unconfirmed >= window / 4 {
                unconfirmed = 0;
                let _ = socket.send_with_str(cursor_frame(id));
            }
        }
    }
    // The object closed the upstream (a restart, a purge): every seat's connection resumes.
    tap.closed(generation);
}

impl Trunk<Seat> {
    /// Gives every seat what it has not had of one upstream frame; the id of an event frame.
    /// Seats pace themselves: one whose connection took nothing from its inbox for
    /// `flow::STALL_MS` while two windows waited there is let go as too slow.
    fn distribute(&self, text: &str) -> Option<u64> {
        let frame = LaneFrame::read(text);
        let whole: Rc<str> = Rc::from(text);
        let now = now_ms();
        let mut gone = Vec::new();
        for seat in self.riders() {
            let through = seat.through.get();
            let given = match frame.share(through) {
                Share::Whole => Some(whole.clone()),
                Share::Gap(own) => Some(Rc::from(own)),
                Share::Part(_) | Share::Nothing => None,
            };
            if let Some(last) = frame.last() {
                seat.through.set(through.max(last));
            }
            if given.is_some_and(|text| !seat.give(text, now)) {
                gone.push(seat);
            }
        }
        if let Some(last) = frame.last() {
            self.reached(last);
        }
        // Let go as too slow (or over): each connection ends and resumes from its cursor.
        self.let_go(&gone);
        for seat in &gone {
            seat.close(CloseCode::TooSlow);
        }
        match frame {
            LaneFrame::Event { id } => Some(id),
            _ => None,
        }
    }
}

impl Rider for Seat {
    const KIND: &'static str = "lanes";

    fn trunks() -> &'static LocalKey<Trunks<Seat>> {
        &TAPS
    }

    fn id(&self) -> u64 {
        self.id
    }

    fn alive(&self, now: i64) -> bool {
        Seat::alive(self, now)
    }

    fn wake(&self) {
        let bell = self.wake.borrow().clone();
        if let Some(bell) = bell {
            bell.ring();
        }
    }

    fn end(&self) {
        self.close(CloseCode::Reconnect);
    }

    fn start(&self, channel: &ChannelName, position: u64) -> Result<Promise, Error> {
        let conn = self
            .conn
            .upgrade()
            .ok_or_else(|| Error::Internal("a seat without its connection".into()))?;
        Hub::get(&conn.env, channel)?.start_shared(Transport::Ws, position)
    }

    async fn carry(tap: Rc<LaneTap>, seat: Rc<Seat>, generation: u64, socket: WebSocket) {
        seat.socket.replace(Some(socket.clone()));
        let window = seat.conn.upgrade().map(|c| c.config.slow_consumer_bytes);
        match (socket.events(), window) {
            (Ok(events), Some(window)) => carry(tap, generation, &socket, events, window).await,
            _ => tap.closed(generation),
        }
    }
}
