//! Many channels on one connection, as the Worker holds it (`docs/API.md#streams`): one *lane*
//! per channel, each a v1 WebSocket subscription to the channel's object, merged into one
//! client stream (`Face::Sse` or `Face::Ws`). `Merge` decides everything and returns `Step`s;
//! `runtime/stream.rs` reads the sockets and the clock and carries the steps out.
//!
//! - Order: nothing reaches the client until every lane of the opening set is live; then the
//!   start (SSE: an `id:`-only block with the stream cursor; WS: `ready` with every head), then
//!   what waited. Each lane's frames keep their order, so each channel stays exactly-once.
//! - Position: each lane's last id sent to the client (or where it started); together they are
//!   the stream cursor.
//! - Flow: the connection's window bounds what waits for the client, all lanes together
//!   (`Backlog`, the SSE bridge's stall rule). SSE: the bytes the client's stream has not taken;
//!   WS: the event frames the client has not confirmed. Each lane's object is told what the
//!   client took, a quarter of the object's window at a time (SSE), or as the client reports
//!   (WS), exactly as a v1 WebSocket client would tell it.

use super::backlog::Backlog;
use crate::error::Error;
use crate::protocol::many::{
    channel_error, ready_frame, sse_event, sse_gap, sse_start, subscribed_frame,
    unsubscribed_frame, with_channel, ManyClientFrame, UpFrame,
};
use crate::protocol::presence;
use crate::protocol::stream::{ChannelSet, StreamSince};
use crate::protocol::ws::{cursor_frame, CloseCode, Refusal};
use crate::protocol::ChannelName;
use std::collections::VecDeque;

/// One lane's identity for the life of the connection (a channel unsubscribed and subscribed
/// again gets a new one, so a late frame of the old lane is never taken for the new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LaneId(pub u32);

/// What the client holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Sse,
    Ws,
}

/// Text for the client; for an SSE event, what its taking tells the lane's object: the lane,
/// the event's id and the size of the object's frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub text: String,
    pub confirms: Option<(LaneId, u64, usize)>,
}

/// What the runtime does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Client(Out),
    /// A frame for a lane's object (a cursor report, a publish).
    Upstream(LaneId, String),
    /// Subscribe this lane to its channel's object, after `since` (`None`: from now on).
    Open {
        lane: LaneId,
        channel: ChannelName,
        since: Option<u64>,
    },
    /// Close a lane's socket (unsubscribed).
    Close(LaneId),
    /// End the connection (and every lane) with this code.
    End(CloseCode),
}

struct Lane {
    id: LaneId,
    channel: ChannelName,
    since: Option<u64>,
    /// The head its object announced in `ready` (`None` until then).
    head: Option<u64>,
    /// Part of the opening set (its head goes into the connection's start), or subscribed
    /// later (it gets `subscribed`).
    initial: bool,
    /// The last id sent to the client, or where the lane started.
    position: u64,
    /// The object's window (from `ready`): it is told every quarter of it.
    window: u64,
    /// WS: event frames sent and not confirmed, as (id, bytes of the frame).
    unconfirmed: VecDeque<(u64, usize)>,
    /// SSE: bytes of event frames taken since the last report.
    unreported: usize,
    /// The last id reported to the object.
    reported: u64,
}

impl Lane {
    fn new(id: LaneId, channel: ChannelName, since: Option<u64>, initial: bool) -> Lane {
        Lane {
            id,
            channel,
            since,
            head: None,
            initial,
            position: since.unwrap_or(0),
            window: 0,
            unconfirmed: VecDeque::new(),
            unreported: 0,
            reported: since.unwrap_or(0),
        }
    }
}

pub struct Merge {
    face: Face,
    lanes: Vec<Lane>,
    next_lane: u32,
    max_channels: usize,
    window: usize,
    /// `HEARTBEAT_SECONDS`, for `ready`.
    heartbeat: u64,
    started: bool,
    /// Frames that came before the start, as they came: taken once every lane is live, so
    /// every position they move is known by then.
    pending: Vec<(LaneId, String)>,
    /// The connection's own frames for the client before the start.
    early: Vec<Out>,
    backlog: Backlog,
    ended: bool,
}

impl Merge {
    /// A connection over `set`, each channel after its place in `since`; returns the lanes to
    /// open. `window` is the connection's (`SLOW_CONSUMER_BYTES`); `heartbeat` is
    /// `HEARTBEAT_SECONDS`, told to a WebSocket client in `ready`.
    pub fn new(
        face: Face,
        set: &ChannelSet,
        since: Option<&StreamSince>,
        window: usize,
        heartbeat: u64,
        max_channels: usize,
        now_ms: i64,
    ) -> (Merge, Vec<Step>) {
        let mut merge = Merge {
            face,
            lanes: Vec::new(),
            next_lane: 0,
            max_channels,
            window,
            heartbeat,
            started: false,
            pending: Vec::new(),
            early: Vec::new(),
            backlog: Backlog::opened(now_ms),
            ended: false,
        };
        let starts = StreamSince::starts(since, set);
        let opens = set
            .channels()
            .iter()
            .zip(starts)
            .map(|(c, start)| merge.add(c.clone(), start, true))
            .collect();
        (merge, opens)
    }

    fn add(&mut self, channel: ChannelName, since: Option<u64>, initial: bool) -> Step {
        let lane = LaneId(self.next_lane);
        self.next_lane += 1;
        self.lanes
            .push(Lane::new(lane, channel.clone(), since, initial));
        Step::Open {
            lane,
            channel,
            since,
        }
    }

    /// Every lane's id (to close them all when the connection ends).
    pub fn lanes(&self) -> Vec<LaneId> {
        self.lanes.iter().map(|l| l.id).collect()
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The connection is over (its client left, or its time is up): nothing more is done.
    pub fn close(&mut self) {
        self.ended = true;
    }

    fn lane(&mut self, id: LaneId) -> Option<&mut Lane> {
        self.lanes.iter_mut().find(|l| l.id == id)
    }

    fn by_channel(&self, channel: &ChannelName) -> Option<&Lane> {
        self.lanes.iter().find(|l| l.channel == *channel)
    }

    /// The stream cursor: every lane at its position, in order.
    pub fn cursor(&self) -> String {
        let pairs: Vec<String> = self
            .lanes
            .iter()
            .map(|l| format!("{}={}", l.channel, l.position))
            .collect();
        pairs.join(",")
    }

    /// A frame from a lane's object.
    pub fn upstream(&mut self, lane: LaneId, text: &str, now_ms: i64) -> Vec<Step> {
        if self.ended {
            return Vec::new();
        }
        let Some(at) = self.lanes.iter().position(|l| l.id == lane) else {
            return Vec::new();
        };
        let face = self.face;
        let frame = UpFrame::read(text);
        if !self.started && !matches!(frame, UpFrame::Ready { .. }) {
            self.pending.push((lane, text.to_string()));
            return Vec::new();
        }
        let Some(l) = self.lanes.get_mut(at) else {
            return Vec::new();
        };
        let out = match frame {
            UpFrame::Ready { head, window } => {
                l.head = Some(head);
                l.window = window;
                if l.since.is_none() {
                    l.position = head;
                    l.reported = head;
                }
                if l.initial {
                    return self.try_start(now_ms);
                }
                let frame = subscribed_frame(&l.channel, head);
                return self.send(plain(frame), now_ms);
            }
            UpFrame::Event {
                id,
                event_type,
                envelope,
                text,
            } => {
                l.position = id;
                match face {
                    Face::Ws => {
                        l.unconfirmed.push_back((id, text.len()));
                        plain(text.to_string())
                    }
                    Face::Sse => Out {
                        text: sse_event(&self.cursor(), &event_type, &envelope),
                        confirms: Some((lane, id, text.len())),
                    },
                }
            }
            UpFrame::Gap {
                requested,
                earliest,
            } => match face {
                Face::Ws => plain(with_channel(text, &l.channel)),
                Face::Sse => plain(sse_gap(&l.channel, requested, earliest)),
            },
            UpFrame::Presence { object, text } => match face {
                Face::Ws => plain(text.to_string()),
                Face::Sse => plain(presence::sse(&object)),
            },
            UpFrame::Other(text) => match face {
                Face::Ws => plain(with_channel(text, &l.channel)),
                Face::Sse => return Vec::new(),
            },
        };
        self.send(out, now_ms)
    }

    /// Queues `out` for the client (or keeps it until the start); ends the connection when
    /// the client is over its window and has stalled.
    fn send(&mut self, out: Out, now_ms: i64) -> Vec<Step> {
        if !self.started {
            // Only a client's own frames come here before the start (a refusal, an early
            // subscribe answered at once): they wait behind the start too.
            self.early.push(out);
            return Vec::new();
        }
        let counted = match self.face {
            Face::Sse => Some(out.text.len()),
            Face::Ws => out
                .text
                .starts_with("{\"op\":\"event\"")
                .then_some(out.text.len()),
        };
        if let Some(n) = counted {
            self.backlog.queued(n, now_ms);
        }
        if self.backlog.stalled(self.window, now_ms) {
            return self.end(CloseCode::TooSlow);
        }
        vec![Step::Client(out)]
    }

    /// Once every lane of the opening set is live: the start, then what waited.
    fn try_start(&mut self, now_ms: i64) -> Vec<Step> {
        if self.started || self.lanes.iter().any(|l| l.initial && l.head.is_none()) {
            return Vec::new();
        }
        self.started = true;
        let start = match self.face {
            Face::Sse => sse_start(&self.cursor()),
            Face::Ws => {
                let heads: Vec<(&ChannelName, u64)> = self
                    .lanes
                    .iter()
                    .map(|l| (&l.channel, l.head.unwrap_or(0)))
                    .collect();
                ready_frame(&heads, self.window as u64, self.heartbeat)
            }
        };
        let mut steps = self.send(plain(start), now_ms);
        for out in std::mem::take(&mut self.early) {
            steps.extend(self.send(out, now_ms));
        }
        for (lane, text) in std::mem::take(&mut self.pending) {
            steps.extend(self.upstream(lane, &text, now_ms));
        }
        steps
    }

    /// A lane's socket closed: unless the client dropped that lane, the connection ends with
    /// the matching code (the client resumes from its stream cursor).
    pub fn upstream_closed(&mut self, lane: LaneId, code: u16) -> Vec<Step> {
        if self.ended || self.lanes.iter().all(|l| l.id != lane) {
            return Vec::new();
        }
        let code = match code {
            4001 => CloseCode::TooSlow,
            4101 => CloseCode::TokenExpired,
            _ => CloseCode::Reconnect,
        };
        self.end(code)
    }

    /// A lane subscribed after the start could not be opened: the client is told, naming it.
    pub fn open_failed(&mut self, lane: LaneId, error: Error, now_ms: i64) -> Vec<Step> {
        let Some(at) = self.lanes.iter().position(|l| l.id == lane) else {
            return Vec::new();
        };
        let channel = self.lanes.remove(at).channel;
        let frame = channel_error(&Refusal::from(error), &channel);
        self.send(plain(frame), now_ms)
    }

    fn end(&mut self, code: CloseCode) -> Vec<Step> {
        self.ended = true;
        vec![Step::End(code)]
    }

    /// SSE: the client's stream took `bytes` of text, which carried `confirms` if it was an
    /// event. Its object is told once a quarter of its window was taken.
    pub fn took(
        &mut self,
        bytes: usize,
        confirms: Option<(LaneId, u64, usize)>,
        now_ms: i64,
    ) -> Vec<Step> {
        self.backlog.took(bytes, now_ms);
        let Some((lane, id, frame_bytes)) = confirms else {
            return Vec::new();
        };
        let Some(l) = self.lane(lane) else {
            return Vec::new();
        };
        l.unreported = l.unreported.saturating_add(frame_bytes);
        let quarter = usize::try_from(l.window / 4).unwrap_or(usize::MAX);
        if l.unreported < quarter || id <= l.reported {
            return Vec::new();
        }
        l.unreported = 0;
        l.reported = id;
        vec![Step::Upstream(lane, cursor_frame(id))]
    }

    /// WS: a client frame, already parsed; a `Subscribe` comes here only once its rights were
    /// checked.
    pub fn client(&mut self, frame: ManyClientFrame, now_ms: i64) -> Vec<Step> {
        match frame {
            ManyClientFrame::Subscribe { channel, since } => {
                if let Some(l) = self.by_channel(&channel) {
                    let frame = subscribed_frame(&channel, l.position);
                    return self.send(plain(frame), now_ms);
                }
                if self.lanes.len() >= self.max_channels {
                    let err = Error::bad_request(format!(
                        "a connection carries at most {} channels (MAX_STREAM_CHANNELS)",
                        self.max_channels
                    ));
                    return self.refuse(err, &channel, now_ms);
                }
                vec![self.add(channel, since, false)]
            }
            ManyClientFrame::Unsubscribe(channel) => {
                let mut steps = Vec::new();
                if let Some(at) = self.lanes.iter().position(|l| l.channel == channel) {
                    let lane = self.lanes.remove(at);
                    let unconfirmed: usize = lane.unconfirmed.iter().map(|(_, n)| n).sum();
                    self.backlog.took(unconfirmed, now_ms);
                    steps.push(Step::Close(lane.id));
                }
                steps.extend(self.send(plain(unsubscribed_frame(&channel)), now_ms));
                steps
            }
            ManyClientFrame::Publish {
                channel,
                frame,
                reference,
            } => match self.by_channel(&channel).filter(|l| l.head.is_some()) {
                Some(l) => vec![Step::Upstream(l.id, frame)],
                None => {
                    let refusal = Refusal::answering(not_in_set(&channel), reference);
                    self.send(plain(channel_error(&refusal, &channel)), now_ms)
                }
            },
            ManyClientFrame::Cursor { channel, id } => self.confirm(&channel, id, now_ms),
        }
    }

    /// WS: the client has every event of `channel` through `id`.
    fn confirm(&mut self, channel: &ChannelName, id: u64, now_ms: i64) -> Vec<Step> {
        let Some(l) = self.lanes.iter_mut().find(|l| l.channel == *channel) else {
            return self.refuse(not_in_set(channel), channel, now_ms);
        };
        if id > l.position {
            let err = Error::bad_request(format!(
                "cursor {id} is ahead of the last id of {channel} you were sent ({})",
                l.position
            ));
            return self.refuse(err, channel, now_ms);
        }
        let mut confirmed = 0usize;
        while l.unconfirmed.front().is_some_and(|(i, _)| *i <= id) {
            confirmed += l.unconfirmed.pop_front().map_or(0, |(_, n)| n);
        }
        let report = (id > l.reported).then(|| {
            l.reported = id;
            Step::Upstream(l.id, cursor_frame(id))
        });
        if confirmed > 0 {
            self.backlog.took(confirmed, now_ms);
        }
        report.into_iter().collect()
    }

    /// An `error` frame naming `channel`.
    pub fn refuse(&mut self, error: Error, channel: &ChannelName, now_ms: i64) -> Vec<Step> {
        self.answer(&Refusal::from(error), channel, now_ms)
    }

    /// An `error` frame naming `channel`, answering a client frame (with its `ref`).
    pub fn answer(&mut self, refusal: &Refusal, channel: &ChannelName, now_ms: i64) -> Vec<Step> {
        let frame = channel_error(refusal, channel);
        self.send(plain(frame), now_ms)
    }

    /// The lane carrying `channel`, if the connection has it.
    pub fn lane_of(&self, channel: &ChannelName) -> Option<LaneId> {
        self.by_channel(channel).map(|l| l.id)
    }

    /// True when the client is over its window and has stalled (checked on a timer too, so a
    /// client is let go even when nothing more comes for it).
    pub fn stalled(&mut self, now_ms: i64) -> bool {
        self.backlog.stalled(self.window, now_ms)
    }

    /// SSE: how long until a heartbeat is due (`None`: now).
    pub fn heartbeat_in(&self, period_ms: i64, now_ms: i64) -> Option<i64> {
        self.backlog.heartbeat_in(period_ms, now_ms)
    }

    pub fn heartbeat(&mut self, now_ms: i64) {
        self.backlog.heartbeat(now_ms);
    }
}

fn plain(text: String) -> Out {
    Out {
        text,
        confirms: None,
    }
}

fn not_in_set(channel: &ChannelName) -> Error {
    Error::bad_request(format!(
        "channel {channel} is not in this connection's set: subscribe to it first"
    ))
}

#[cfg(test)]
mod tests;
