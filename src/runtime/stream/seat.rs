//! A lane's seat on its channel's shared upstream (`shared`): its inbox, filled from the
//! upstream's request, and the bells whose reactions run in its own connection's request (one
//! gives the inbox to the connection's merge, one makes it take the upstream over).

use super::shared::LaneTap;
use super::Conn;
use crate::channel::backlog::Backlog;
use crate::channel::merge::LaneId;
use crate::protocol::ws::CloseCode;
use crate::protocol::ChannelName;
use crate::runtime::bell::Bell;
use crate::runtime::sse::{heartbeat_period_ms, now_ms};
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use worker::WebSocket;

thread_local! {
    static NEXT_SEAT: Cell<u64> = const { Cell::new(1) };
}

/// What waits in a seat's inbox for its connection.
enum Delivery {
    Frame(Rc<str>),
    Closed(CloseCode),
}

/// One lane's place in its channel's shared upstream.
pub(super) struct Seat {
    pub(super) id: u64,
    lane: LaneId,
    pub(super) channel: ChannelName,
    pub(super) conn: Weak<Conn>,
    /// The last id it was given.
    pub(super) through: Cell<u64>,
    inbox: RefCell<Vec<Delivery>>,
    /// What waits in the inbox, and since when nothing was taken (the stall rule of a stream).
    waiting: Cell<Backlog>,
    /// Rung when its inbox has something; its reaction runs in the connection's request.
    deliver: RefCell<Option<Rc<Bell>>>,
    /// Rung to make it open a new upstream; made in its connection's request.
    pub(super) wake: RefCell<Option<Rc<Bell>>>,
    /// The upstream, while this seat's connection's request carries it.
    pub(super) socket: RefCell<Option<WebSocket>>,
}

impl Seat {
    /// A seat for `lane` of `conn`, made in that connection's request (its bells are).
    pub(super) fn new(
        conn: &Rc<Conn>,
        lane: LaneId,
        channel: &ChannelName,
        through: u64,
    ) -> Rc<Seat> {
        let seat = Rc::new(Seat {
            id: NEXT_SEAT.with(|n| n.replace(n.get().wrapping_add(1))),
            lane,
            channel: channel.clone(),
            conn: Rc::downgrade(conn),
            through: Cell::new(through),
            inbox: RefCell::new(Vec::new()),
            waiting: Cell::new(Backlog::opened(now_ms())),
            deliver: RefCell::new(None),
            wake: RefCell::new(None),
            socket: RefCell::new(None),
        });
        let weak = Rc::downgrade(&seat);
        seat.deliver.replace(Some(Bell::repeating(move || {
            if let Some(seat) = weak.upgrade() {
                seat.drain();
            }
        })));
        let weak = Rc::downgrade(&seat);
        seat.wake.replace(Some(Bell::repeating(move || {
            if let Some(seat) = weak.upgrade() {
                if let Some(tap) = LaneTap::find(&seat.channel) {
                    tap.take_over(&seat);
                }
            }
        })));
        seat
    }

    /// Gives its connection what waits (in the connection's request).
    fn drain(&self) {
        let Some(conn) = self.conn.upgrade() else {
            return;
        };
        let items = std::mem::take(&mut *self.inbox.borrow_mut());
        let mut waiting = self.waiting.get();
        waiting.took(waiting.bytes(), now_ms());
        self.waiting.set(waiting);
        for item in items {
            let now = now_ms();
            let steps = match item {
                Delivery::Frame(text) => conn.merge.borrow_mut().upstream(self.lane, &text, now),
                Delivery::Closed(code) => conn
                    .merge
                    .borrow_mut()
                    .upstream_closed(self.lane, code.code()),
            };
            conn.run(steps);
        }
    }

    /// Queues a frame for its connection; false when the connection is over, or has taken
    /// nothing from its inbox for `flow::STALL_MS` while more than twice its window waited
    /// there (its request no longer takes what it is given). A burst bigger than that is not a
    /// stall: the upstream's request may read many frames before the seat's request runs.
    /// `now` is unix milliseconds.
    pub(super) fn give(&self, text: Rc<str>, now: i64) -> bool {
        let Some(conn) = self.conn.upgrade() else {
            return false;
        };
        if conn.merge.borrow().ended() {
            return false;
        }
        let mut waiting = self.waiting.get();
        waiting.queued(text.len(), now);
        if waiting.stalled(conn.config.slow_consumer_bytes.saturating_mul(2), now) {
            return false;
        }
        self.waiting.set(waiting);
        self.inbox.borrow_mut().push(Delivery::Frame(text));
        self.ring();
        true
    }

    /// Its connection's lane ends with `code` (it resumes from its cursor).
    pub(super) fn close(&self, code: CloseCode) {
        self.inbox.borrow_mut().push(Delivery::Closed(code));
        self.ring();
    }

    fn ring(&self) {
        let bell = self.deliver.borrow().clone();
        if let Some(bell) = bell {
            bell.ring();
        }
    }

    /// Its connection is open and its pacer ran within one heartbeat and a second.
    pub(super) fn alive(&self, now: i64) -> bool {
        let Some(conn) = self.conn.upgrade() else {
            return false;
        };
        let period = heartbeat_period_ms(conn.config.heartbeat_seconds);
        let silence = now.saturating_sub(conn.ticked.get());
        !conn.merge.borrow().ended() && silence <= period.saturating_mul(3) + 1000
    }

    /// The last id it was given (where it sat, right after `sit`).
    pub(super) fn through(&self) -> u64 {
        self.through.get()
    }
}
