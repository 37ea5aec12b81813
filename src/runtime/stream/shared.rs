//! Many-channel lanes that share an upstream (`docs/architecture.md#tap`): the lanes of one
//! channel in one Worker isolate that carry no presence, no topic filter and no publishing
//! right share one hibernatable WebSocket to its object, as plain SSE bridges share theirs
//! (`runtime::tap`, whose rules about requests hold here too).
//!
//! - A lane with nothing to replay takes a *seat* at once. Any other opens its own socket and,
//!   once caught up, takes a seat (the upstream is no further than it) or makes its socket the
//!   upstream (there is none). `channel::tap` decides; this file carries it out.
//! - The upstream's request puts each frame in every seat's inbox and rings the seat's bell,
//!   whose reaction runs in the seat's own connection's request: that one gives the frames to
//!   its merge and writes to its client. Flow control stays the connection's (its window).
//! - When the upstream's lane leaves, another seat's request opens a new upstream from where
//!   the shared stream stood, as a tap's member does.

use super::seat::Seat;
use super::{Conn, Link};
use crate::channel::fanout::Transport;
use crate::channel::merge::LaneId;
use crate::channel::tap::{catch_up, entry, Catchup, Entry, LaneFrame, Share, TapView};
use crate::error::Error;
use crate::protocol::bridge::Upstream;
use crate::protocol::ws::{cursor_frame, CloseCode, PONG};
use crate::protocol::ChannelName;
use crate::runtime::bell::Bell;
use crate::runtime::client::Hub;
use crate::runtime::sse::{accept_started, now_ms};
use futures::StreamExt;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use worker::js_sys::Promise;
use worker::wasm_bindgen_futures::spawn_local;
use worker::{EventStream, WebSocket, WebsocketEvent};

/// Take-overs that may fail in a row (the object unreachable, the seat's request gone) before
/// every seat's connection is ended to resume on its own; until then the next seat's pacer
/// tries again.
const TAKE_OVER_TRIES: u32 = 3;

/// How long an upstream may stay unopened (its new owner's connection never opened it) before
/// any seat's pacer takes it over.
const RESCUE_MS: i64 = 5_000;

thread_local! {
    static TAPS: RefCell<HashMap<ChannelName, Rc<LaneTap>>> = RefCell::new(HashMap::new());
}

pub(super) fn find(channel: &ChannelName) -> Option<Rc<LaneTap>> {
    TAPS.with(|taps| taps.borrow().get(channel).cloned())
}

fn view(channel: &ChannelName) -> TapView {
    find(channel).map_or(TapView::None, |t| t.view())
}

/// Where a lane with this cursor may take a seat now (`None`: it opens its own socket).
pub(super) fn seat_now(channel: &ChannelName, since: Option<u64>) -> Option<u64> {
    match entry(view(channel), since) {
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
    let tap = find(channel)?;
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
    let tap = find(channel);
    let view = tap.as_ref().map_or(TapView::None, |t| t.view());
    match (catch_up(view, position, head), tap) {
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
            let window = conn.config.slow_consumer_bytes;
            let tap = LaneTap::promote(&seat, channel, position, window);
            conn.relink(lane, Link::Seat(seat));
            let generation = tap.state.borrow().generation;
            Caught::Carrying(tap, generation)
        }
        _ => Caught::Stay,
    }
}

/// The seat's lane is closed (unsubscribed, or its connection ended).
pub(super) fn leave(seat: &Seat, reason: &str) {
    if let Some(tap) = find(&seat.channel) {
        tap.leave(seat.id);
    }
    if let Some(socket) = seat.socket.borrow_mut().take() {
        let _ = socket.close(Some(1000), Some(reason));
    }
}

/// A tick of the seat's connection's pacer, in its request: seats whose connections stopped
/// are let go, and an upstream without a live owner is taken over by this seat.
pub(super) fn tick(seat: &Rc<Seat>) {
    if let Some(tap) = find(&seat.channel) {
        tap.rescue(seat);
    }
}

/// Reads the upstream's frames and hands them to every seat until it closes or the upstream
/// moves on (its owner's lane left). In the owner's connection's request.
pub(super) async fn carry(
    tap: Rc<LaneTap>,
    generation: u64,
    socket: &WebSocket,
    mut events: EventStream<'_>,
) {
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
        if text != PONG {
            tap.distribute(socket, &text);
        }
    }
    // The object closed the upstream (a restart, a purge): every seat's connection resumes.
    if tap.current(generation) {
        tap.end_all();
    }
}

/// The shared upstream of one channel's lanes in this isolate, and its seats.
pub(super) struct LaneTap {
    channel: ChannelName,
    /// The object's window: the upstream confirms every quarter of it.
    window: usize,
    state: RefCell<TapState>,
}

struct TapState {
    source: Source,
    /// Changes with every upstream: a reader of an older one stops.
    generation: u64,
    /// The last id the upstream brought.
    position: u64,
    seats: Vec<Rc<Seat>>,
    /// Bytes of event frames not yet confirmed to the object.
    unconfirmed: usize,
    /// The owner's bell: reports the seat count on the upstream.
    count: Option<Rc<Bell>>,
    socket: Option<WebSocket>,
    owner: Option<Rc<Seat>>,
    /// When seats were last checked for stopped connections (at most once a second).
    reaped_ms: i64,
    /// Take-overs failed in a row.
    failures: u32,
}

impl TapState {
    fn orphan(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.source = Source::Orphaned;
        self.count = None;
        self.socket = None;
        self.owner = None;
        self.unconfirmed = 0;
    }
}

enum Source {
    Live { owner: u64 },
    Opening { by: u64, since_ms: i64 },
    Orphaned,
}

impl LaneTap {
    fn view(&self) -> TapView {
        let state = self.state.borrow();
        match state.source {
            Source::Live { .. } => TapView::Live(state.position),
            _ => TapView::Busy,
        }
    }

    fn current(&self, generation: u64) -> bool {
        self.state.borrow().generation == generation
    }

    fn attach(&self, seat: &Rc<Seat>) {
        self.state.borrow_mut().seats.push(seat.clone());
        self.count_changed();
    }

    /// Makes `seat`'s socket, caught up at `position`, the upstream of a new shared stream.
    fn promote(
        seat: &Rc<Seat>,
        channel: &ChannelName,
        position: u64,
        window: usize,
    ) -> Rc<LaneTap> {
        let tap = Rc::new(LaneTap {
            channel: channel.clone(),
            window,
            state: RefCell::new(TapState {
                source: Source::Live { owner: seat.id },
                generation: 1,
                position,
                seats: vec![seat.clone()],
                unconfirmed: 0,
                count: None,
                socket: seat.socket.borrow().clone(),
                owner: Some(seat.clone()),
                reaped_ms: 0,
                failures: 0,
            }),
        });
        TAPS.with(|taps| taps.borrow_mut().insert(channel.clone(), tap.clone()));
        tap.ring_count_from_owner();
        tap
    }

    /// Arms the owner's count bell (in the owner's request, which is running now).
    fn ring_count_from_owner(self: &Rc<LaneTap>) {
        let tap = Rc::downgrade(self);
        let bell = Bell::repeating(move || {
            if let Some(tap) = tap.upgrade() {
                tap.report_count();
            }
        });
        self.state.borrow_mut().count = Some(bell);
        self.report_count();
    }

    /// Tells the object how many clients the upstream carries (in the owner's request).
    fn report_count(&self) {
        let state = self.state.borrow();
        if let (Source::Live { .. }, Some(socket)) = (&state.source, state.socket.as_ref()) {
            let n = state.seats.len() as u64;
            let _ = socket.send_with_str(Upstream::Members(n).encode());
        }
    }

    fn count_changed(&self) {
        let bell = self.state.borrow().count.clone();
        if let Some(bell) = bell {
            bell.ring();
        }
    }

    /// Gives every seat what it has not had of one upstream frame, and confirms event frames
    /// to the object every quarter of its window: seats pace themselves, the upstream never
    /// waits. In the owner's request.
    fn distribute(&self, socket: &WebSocket, text: &str) {
        let frame = LaneFrame::read(text);
        let whole: Rc<str> = Rc::from(text);
        let seats = self.state.borrow().seats.clone();
        let mut gone = Vec::new();
        for seat in seats {
            let through = seat.through.get();
            let given = match frame.share(through) {
                Share::Whole => Some(whole.clone()),
                Share::Gap(own) => Some(Rc::from(own)),
                Share::Part(_) | Share::Nothing => None,
            };
            if let Some(last) = frame.last() {
                seat.through.set(through.max(last));
            }
            if given.is_some_and(|text| !seat.give(text)) {
                gone.push(seat);
            }
        }
        let confirm = {
            let mut state = self.state.borrow_mut();
            if !gone.is_empty() {
                state.seats.retain(|s| !gone.iter().any(|g| g.id == s.id));
            }
            if let Some(last) = frame.last() {
                state.position = state.position.max(last);
            }
            match frame {
                LaneFrame::Event { id } => {
                    state.unconfirmed = state.unconfirmed.saturating_add(text.len());
                    (state.unconfirmed >= self.window / 4).then(|| {
                        state.unconfirmed = 0;
                        id
                    })
                }
                _ => None,
            }
        };
        if let Some(id) = confirm {
            let _ = socket.send_with_str(cursor_frame(id));
        }
        if !gone.is_empty() {
            // Let go as too slow (or over): each connection ends and resumes from its cursor.
            for seat in &gone {
                seat.close(CloseCode::TooSlow);
            }
            self.count_changed();
        }
    }

    /// A seat's lane closed. When it carried the upstream, another seat takes over.
    fn leave(self: &Rc<LaneTap>, id: u64) {
        let mut state = self.state.borrow_mut();
        let before = state.seats.len();
        state.seats.retain(|s| s.id != id);
        let was_seated = state.seats.len() < before;
        let owned = match state.source {
            Source::Live { owner } => owner == id,
            Source::Opening { by, .. } => by == id,
            Source::Orphaned => false,
        };
        if owned {
            state.orphan();
        }
        let orphaned = matches!(state.source, Source::Orphaned);
        let now = now_ms();
        let next = state.seats.iter().find(|s| s.alive(now)).cloned();
        drop(state);
        match (orphaned, next) {
            (true, None) => self.end_all(),
            (true, Some(next)) => {
                let bell = next.wake.borrow().clone();
                if let Some(bell) = bell {
                    bell.ring();
                }
            }
            (false, _) if was_seated => self.count_changed(),
            (false, _) => {}
        }
    }

    /// Opens a new upstream from where the shared stream stood, in `seat`'s connection's
    /// request (its bell's reaction, or its pacer): the call starts before this returns, so
    /// the socket is that request's.
    pub(super) fn take_over(self: &Rc<LaneTap>, seat: &Rc<Seat>) {
        let mut state = self.state.borrow_mut();
        let here = state.seats.iter().any(|s| s.id == seat.id);
        if !matches!(state.source, Source::Orphaned) || !here {
            return;
        }
        state.generation = state.generation.wrapping_add(1);
        state.source = Source::Opening {
            by: seat.id,
            since_ms: now_ms(),
        };
        let (generation, position) = (state.generation, state.position);
        drop(state);
        let started = seat
            .conn
            .upgrade()
            .ok_or_else(|| Error::Internal("a seat without its connection".into()))
            .and_then(|conn| {
                Hub::get(&conn.env, &self.channel)?.start_shared(Transport::Ws, position)
            });
        match started {
            Ok(answer) => spawn_local(reopen(self.clone(), seat.clone(), generation, answer)),
            Err(e) => {
                worker::console_error!("lanes {}: taking over: {e:?}", self.channel.as_str());
                let failures = {
                    let mut state = self.state.borrow_mut();
                    state.orphan();
                    state.failures = state.failures.saturating_add(1);
                    state.failures
                };
                if failures >= TAKE_OVER_TRIES {
                    self.end_all();
                }
            }
        }
    }

    /// In `seat`'s request, at its pacer's tick (see `tick`).
    fn rescue(self: &Rc<LaneTap>, seat: &Rc<Seat>) {
        let now = now_ms();
        let (take, reaped) = {
            let mut state = self.state.borrow_mut();
            let before = state.seats.len();
            if now.saturating_sub(state.reaped_ms) >= 1000 {
                state.reaped_ms = now;
                state.seats.retain(|s| s.alive(now));
            }
            let reaped = state.seats.len() < before;
            let stale = match state.source {
                Source::Live { .. } => state.owner.as_ref().is_some_and(|o| !o.alive(now)),
                Source::Orphaned => true,
                Source::Opening { since_ms, .. } => now.saturating_sub(since_ms) > RESCUE_MS,
            };
            if stale && !matches!(state.source, Source::Orphaned) {
                state.orphan();
            }
            (stale && state.seats.iter().any(|s| s.id == seat.id), reaped)
        };
        if take {
            self.take_over(seat);
        } else if reaped {
            self.count_changed();
        }
    }

    /// Ends every seat's lane (each connection resumes from its cursor) and forgets the
    /// upstream.
    fn end_all(self: &Rc<LaneTap>) {
        let seats = std::mem::take(&mut self.state.borrow_mut().seats);
        self.state.borrow_mut().orphan();
        TAPS.with(|taps| {
            let mut taps = taps.borrow_mut();
            if taps.get(&self.channel).is_some_and(|t| Rc::ptr_eq(t, self)) {
                taps.remove(&self.channel);
            }
        });
        for seat in seats {
            seat.close(CloseCode::Reconnect);
        }
    }
}

/// The rest of a take-over, in the seat's request: the object's answer becomes the upstream.
async fn reopen(tap: Rc<LaneTap>, seat: Rc<Seat>, generation: u64, answer: Promise) {
    let socket = accept_started(answer, "upstream").await;
    let socket = match socket {
        Ok(socket) if tap.current(generation) => socket,
        Ok(socket) => {
            let _ = socket.close(Some(1000), Some("upstream moved on"));
            return;
        }
        Err(e) => {
            worker::console_error!("lanes {}: reopening: {e:?}", tap.channel.as_str());
            if tap.current(generation) {
                tap.end_all();
            }
            return;
        }
    };
    let Ok(events) = socket.events() else {
        tap.end_all();
        return;
    };
    seat.socket.replace(Some(socket.clone()));
    {
        let mut state = tap.state.borrow_mut();
        state.source = Source::Live { owner: seat.id };
        state.socket = Some(socket.clone());
        state.owner = Some(seat.clone());
        state.failures = 0;
    }
    tap.ring_count_from_owner();
    carry(tap, generation, &socket, events).await;
}
