//! One subscriber of a channel's object, as the object's rules see it: what its socket may do
//! and where its delivery stands (`Attachment`, kept on the socket across hibernation), and every
//! decision about it that flow control makes: where its replay starts and how far one step may
//! go, what a `cursor` report does, whether a publish is sent to it, skipped (a paced replay holds
//! it) or ends it (too slow), and when a held one stalls. All pure, the clock passed in;
//! `runtime/subscribers.rs` and `runtime/hub/` read sockets and the log and carry the answers
//! out. See `docs/API.md#ws-flow` and `docs/architecture.md`.

use super::fanout::Transport;
use super::flow::{Credit, Floor, Report};
use super::{Replay, Window};
use serde::{Deserialize, Serialize};

/// Version of `Attachment`; a socket whose attachment has another version is treated as
/// anonymous and read-only until it reconnects.
pub const ATTACHMENT_VERSION: u8 = 1;

/// What a socket may do, kept across hibernation. Small: the runtime caps attachments at 2 KiB
/// (a presence member's `info` is at most 1 KiB of UTF-8 and its `sub` 256 characters, so at
/// most 1 KiB and 512 bytes as the runtime stores strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub v: u8,
    pub transport: Transport,
    pub publish: bool,
    /// Token expiry, unix seconds.
    pub exp: Option<i64>,
    /// How far a WebSocket client has confirmed (none for SSE bridges, which guard their own
    /// clients). Added after version 1 was out, so it may be missing.
    #[serde(default)]
    pub credit: Option<Credit>,
    /// While a paced replay holds a subscriber at its window: the last id it was sent. Such a
    /// socket gets no live events; its reports resume the replay until it reaches the head, and
    /// then it is live (`None`).
    #[serde(default)]
    pub sent: Option<u64>,
    /// A presence connection's member (`channel::presence`); cleared once the connection has
    /// left, so it is never counted again.
    #[serde(default)]
    pub member: Option<Ticket>,
    /// An isolate's shared upstream (`runtime::tap`, and the many-channel lanes' WebSocket
    /// one): how many clients it carries, as it last reported; counted as one until it
    /// reports. A WebSocket upstream is `Some(1)` from its accept: only a socket the Worker
    /// subscribed as shared may report, never a client's own WebSocket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u64>,
}

/// A presence connection's member, kept on its socket so that the roster can be rebuilt from
/// the sockets after hibernation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub sub: String,
    /// The member's info, as its compact JSON text.
    pub info: Option<String>,
    /// This connection's id among its member's connections (random).
    pub conn: u64,
    /// When it entered, unix milliseconds.
    pub since: i64,
    /// Where the presence changes stood when it was sent its `sync` (`Outbox::position`).
    pub synced: u64,
}

/// What a publish does to one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Held by a paced replay: the replay brings it these events later, in order.
    Skip,
    /// Over its window and silent: close it with 4001 (it resumes from its cursor).
    TooSlow,
}

/// What a `cursor` report asks of the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Nothing changes: a repeat, or a live SSE bridge (it guards its own client).
    Nothing,
    /// An id this socket was never sent: refuse the report.
    Ahead { sent: u64 },
    /// The cursor moves to `id`: look its stream position up and call `Attachment::confirmed`.
    Moved { id: u64 },
}

impl Attachment {
    pub fn new(transport: Transport, publish: bool, exp: Option<i64>) -> Self {
        Attachment {
            v: ATTACHMENT_VERSION,
            transport,
            publish,
            exp,
            credit: None,
            sent: None,
            member: None,
            members: None,
        }
    }

    pub fn expired(&self, now_s: i64) -> bool {
        self.exp.is_some_and(|exp| now_s >= exp)
    }

    /// Where a new subscriber's delivery starts, and whether it gets a credit there: every
    /// WebSocket client does (its window counts from there), and so does an SSE bridge with a
    /// replay to pace. The runtime looks the position of the returned id up and calls
    /// `credited`.
    pub fn start(&self, plan: Replay, window: Window) -> (u64, bool) {
        let after = match plan {
            Replay::Live => window.head,
            Replay::After(n) => n,
            Replay::Gap { earliest, .. } => earliest.saturating_sub(1),
        };
        (
            after,
            plan != Replay::Live || self.transport == Transport::Ws,
        )
    }

    /// Gives the socket its first credit, at `cursor` (stream position `bytes`), and lowers
    /// `floor` to it.
    pub fn credited(&mut self, cursor: u64, bytes: u64, now_ms: i64, floor: Floor) -> Floor {
        self.credit = Some(Credit::new(cursor, bytes, now_ms));
        floor.joined(bytes)
    }

    /// How far one step of its replay may go: events whose frames start before this stream
    /// position (`None`: no limit). A WebSocket client is sent up to its window (it reports
    /// every quarter of it); an SSE bridge a quarter window, because it reports only at each
    /// step's `held` notice, once its client has taken everything before it.
    pub fn step_limit(&self, window: u64) -> Option<u64> {
        let step = match self.transport {
            Transport::Ws => window,
            Transport::Sse => window / 4,
        };
        self.credit.map(|c| c.replay_limit(step))
    }

    /// The id a replay step's `held` notice names, given where the step left the socket
    /// (`held_at`): only an SSE bridge still short of the head gets one.
    pub fn notice_after_step(&self, held_at: Option<u64>) -> Option<u64> {
        held_at.filter(|_| self.transport == Transport::Sse)
    }

    /// Records where a paced replay left the socket: held after `sent`, or live. A live SSE
    /// bridge keeps no credit: its reports only matter while it is held (it guards its own
    /// client), and a stale credit would hold the floor down.
    pub fn settle(&mut self, sent: Option<u64>) {
        self.sent = sent;
        if sent.is_none() && self.transport == Transport::Sse {
            self.credit = None;
        }
    }

    /// What reporting `id` does, the channel's head being `head`.
    pub fn report(&self, id: u64, head: u64, now_ms: i64) -> Reported {
        if self.transport == Transport::Sse && self.sent.is_none() {
            return Reported::Nothing;
        }
        let sent = self.sent.unwrap_or(head);
        let credit = self.credit;
        match credit.unwrap_or(Credit::new(0, 0, now_ms)).report(id, sent) {
            Report::Ahead { sent } => Reported::Ahead { sent },
            Report::Stale if credit.is_some() => Reported::Nothing,
            Report::Advance(_) | Report::Stale => Reported::Moved { id },
        }
    }

    /// The report of `id` (at stream position `bytes`) is taken: the credit moves there. A
    /// socket that had no credit joins the floor.
    pub fn confirmed(&mut self, id: u64, bytes: u64, now_ms: i64, floor: Floor) -> Floor {
        let first = self.credit.is_none();
        self.credit = Some(Credit::new(id, bytes, now_ms));
        if first {
            floor.joined(bytes)
        } else {
            floor
        }
    }

    /// What a publish that takes the stream to `end` does to this socket. `sent_ms(cursor)`
    /// tells when the first event after a cursor was sent (asked only when over the window).
    pub fn verdict(
        &self,
        end: u64,
        window: u64,
        now_ms: i64,
        sent_ms: impl FnOnce(u64) -> Option<i64>,
    ) -> Verdict {
        let Some(credit) = self.credit else {
            return Verdict::Deliver;
        };
        // SSE bridges guard their own clients; only their replays are paced here.
        if self.transport == Transport::Ws && credit.too_slow(end, window, now_ms, sent_ms) {
            return Verdict::TooSlow;
        }
        if self.sent.is_some() {
            Verdict::Skip
        } else {
            Verdict::Deliver
        }
    }

    /// For a socket a paced replay holds: `Err(())` when it has stalled (close it with 4001),
    /// else `Ok(when it will)`. `None` for a socket that is not held.
    pub fn stall(&self, now_ms: i64) -> Option<Result<i64, ()>> {
        let (Some(_), Some(credit)) = (self.sent, self.credit) else {
            return None;
        };
        Some(match credit.stalled(now_ms) {
            true => Err(()),
            false => Ok(credit.stalls_at()),
        })
    }
}

/// A pass over every socket during a publish, to learn the new `Floor`: the lowest confirmed
/// position among those kept, and whether any is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloorScan {
    lowest: u64,
    held: bool,
}

impl FloorScan {
    /// A scan of a publish that takes the stream to `end`.
    pub fn new(end: u64) -> FloorScan {
        FloorScan {
            lowest: end,
            held: false,
        }
    }

    /// A socket kept after its verdict.
    pub fn kept(&mut self, attachment: &Attachment) {
        if let Some(credit) = attachment.credit {
            self.lowest = self.lowest.min(credit.bytes);
            self.held |= attachment.sent.is_some();
        }
    }

    pub fn floor(self) -> Floor {
        Floor::seen(self.lowest, self.held)
    }
}

/// What a replay that sent everything through `last` leaves: `Some(last)` while short of
/// `head` (the socket is held there), `None` once it is live.
pub fn held_at(last: u64, head: u64) -> Option<u64> {
    (last < head).then_some(last)
}

#[cfg(test)]
mod tests;
