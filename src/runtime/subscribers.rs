//! The channel object's live subscribers: hibernatable WebSockets, tagged by transport (`ws` for
//! clients, `sse` for the Worker's SSE bridges), each carrying a small typed attachment that
//! survives hibernation. Accepting replays from the log in the same synchronous step, so no
//! publish can fall between replay and live delivery. WebSocket clients confirm what they read
//! (`channel::flow`); one that falls more than its window behind is closed with 4001. Their
//! replay is paced by that window: what does not fit waits for their reports
//! (`resume_replay`), and until they have caught up they get no live events.

use super::filters::{self, Filters, Selection, FILTER_TAG};
use super::log::ChannelLog;
use super::presence::{self, Presence};
use crate::auth::Publisher;
use crate::channel::fanout::{deliver, Frames, Sink, Transport};
use crate::channel::flow::Credit;
use crate::channel::flow::Floor;
use crate::channel::subscriber::{held_at, Attachment, FloorScan, Verdict, ATTACHMENT_VERSION};
use crate::channel::{plan_replay, Replay, Window};
use crate::error::Error;
use crate::protocol::bridge::Downstream;
use crate::protocol::filter::Filter;
use crate::protocol::ws::{ready_frame, CloseCode};
use crate::protocol::ChannelName;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use worker::js_sys::{Function, Reflect};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::worker_sys::DurableObjectState;
use worker::{State, WebSocket, WebSocketPair};

/// Events read from the log per step of a replay.
const REPLAY_PAGE: u64 = 500;
/// A socket's attachment (`channel::subscriber`), if it has one of this version.
pub fn attachment(ws: &WebSocket) -> Option<Attachment> {
    ws.deserialize_attachment::<Attachment>()
        .ok()
        .flatten()
        .filter(|a| a.v == ATTACHMENT_VERSION)
}

/// A subscriber's socket in the `Sink` role.
pub struct SocketSink(pub WebSocket);

impl Sink<String> for SocketSink {
    fn send(&self, text: &String) -> bool {
        self.0.send_with_str(text).is_ok()
    }
}

/// A socket in the `Sink` role for frames already made JS strings: a publish's frame is
/// converted once for all its subscribers, not once per socket, and `send` is looked up once.
struct JsSink<'a> {
    socket: &'a WebSocket,
    send: &'a Function,
}

impl Sink<JsValue> for JsSink<'_> {
    fn send(&self, frame: &JsValue) -> bool {
        let this: &JsValue = self.socket.as_ref();
        self.send.call1(this, frame).is_ok()
    }
}

/// Sends `frames` to `sockets` as JS strings; returns the indices of the sockets that failed.
pub fn deliver_js(sockets: &[WebSocket], frames: &[String]) -> Vec<usize> {
    let Some(first) = sockets.first() else {
        return Vec::new();
    };
    let first: &JsValue = first.as_ref();
    let send = Reflect::get(first, &JsValue::from_str("send")).and_then(|f| f.dyn_into());
    let Ok(send) = send else {
        // Not a WebSocket as we know it: the text path reports every failure on its own.
        let sinks: Vec<SocketSink> = sockets.iter().cloned().map(SocketSink).collect();
        return deliver(&sinks, frames);
    };
    let frames: Vec<JsValue> = frames.iter().map(|f| JsValue::from_str(f)).collect();
    let sinks: Vec<JsSink<'_>> = sockets
        .iter()
        .map(|socket| JsSink {
            socket,
            send: &send,
        })
        .collect();
    deliver(&sinks, &frames)
}

/// The open sockets of one transport. Reads the runtime's list without the crate's `unwrap`.
/// A socket the object has closed stays in that list until its client answers the close (a
/// client that stopped reading never does), so only `OPEN` sockets count.
pub fn sockets(state: &State, transport: Transport) -> Vec<WebSocket> {
    let raw = state.as_raw();
    let mut all = open(raw.get_websockets_with_tag(transport.tag()));
    all.extend(open(
        raw.get_websockets_with_tag(filters::transport_tag(transport)),
    ));
    all
}

/// How many clients the open sockets of one transport carry: one each, or what a socket that
/// is its isolate's shared upstream last reported (`runtime::tap`).
pub fn clients(state: &State, transport: Transport) -> u64 {
    sockets(state, transport)
        .iter()
        .map(|ws| attachment(ws).and_then(|a| a.members).unwrap_or(1))
        .sum()
}

/// Keeps a shared upstream's report of how many clients it carries (SSE bridges, and the
/// WebSocket upstreams the Worker subscribed as shared; a client's own WebSocket's report is
/// ignored, it is one client).
pub fn carried(ws: &WebSocket, n: u64) {
    let Some(mut attachment) = attachment(ws) else {
        return;
    };
    if attachment.transport == Transport::Sse || attachment.members.is_some() {
        attachment.members = Some(n);
        let _ = ws.serialize_attachment(&attachment);
    }
}

/// Every socket with `tag`, closing ones included: a publish sends to these without asking
/// each for its state (a send to a closing one fails and is ignored).
pub fn any_with_tag(state: &DurableObjectState, tag: &str) -> Vec<WebSocket> {
    state
        .get_websockets_with_tag(tag)
        .map(|list| list.into_iter().map(WebSocket::from).collect())
        .unwrap_or_default()
}

pub fn all_sockets(state: &State) -> Vec<WebSocket> {
    open(state.as_raw().get_websockets())
}

/// The `OPEN` sockets of a list from the runtime.
pub fn open<E>(list: Result<Vec<worker::web_sys::WebSocket>, E>) -> Vec<WebSocket> {
    const OPEN: u16 = 1;
    list.map(|list| {
        list.into_iter()
            .filter(|ws| ws.ready_state() == OPEN)
            .map(WebSocket::from)
            .collect()
    })
    .unwrap_or_default()
}

/// Tag prefixes for what a socket was accepted for that its attachment has no room for: the
/// channel's name (a socket's publish may be the first write of its object, which then knows
/// no name) and the publisher its idempotency keys belong to. Tags survive hibernation too.
const CHANNEL_TAG: &str = "channel:";
const PUBLISHER_TAG: &str = "publisher:";
/// The tag of presence connections (their attachments carry a `Ticket`).
pub const PRESENCE_TAG: &str = "presence";

/// What a socket's tags say about it.
#[derive(Default)]
pub struct Tagged {
    pub channel: Option<ChannelName>,
    pub publisher: Option<Publisher>,
}

/// Reads a socket's tags (a socket accepted before tags were used has none).
pub fn tagged(state: &DurableObjectState, ws: &WebSocket) -> Tagged {
    let mut found = Tagged::default();
    let raw: &worker::web_sys::WebSocket = ws.as_ref();
    for tag in state.get_tags(raw).unwrap_or_default() {
        if let Some(name) = tag.strip_prefix(CHANNEL_TAG) {
            found.channel = ChannelName::parse(name).ok();
        } else if let Some(hex) = tag.strip_prefix(PUBLISHER_TAG) {
            found.publisher = Publisher::parse(hex);
        }
    }
    found
}

/// A subscriber about to be accepted.
pub struct Join<'a> {
    pub channel: &'a ChannelName,
    /// Whose idempotency keys its publishes use (a socket that may publish).
    pub publisher: Option<Publisher>,
    pub attachment: Attachment,
    pub cursor: Option<u64>,
    pub window: Window,
    /// Bytes of event frames a WebSocket client may leave unconfirmed (`channel::flow`).
    pub flow_window: u64,
    /// `HEARTBEAT_SECONDS`, told to a WebSocket client in `ready`.
    pub heartbeat: u64,
    pub now_ms: i64,
    /// A presence connection's `sync` object: sent after `ready`, before any event.
    pub greeting: Option<String>,
    /// The subscriber's topic filter and its key (`runtime::filters`).
    pub filter: Option<(String, Rc<Filter>)>,
}

/// A subscriber just accepted: the client end of its socket, and when it would stall if a
/// paced replay holds it at its window.
pub struct Accepted {
    pub client: WebSocket,
    pub stalls_at: Option<i64>,
}

/// Accepts a new subscriber and sends it `ready` (WebSocket clients), then its replay, all
/// before any other event can run. A WebSocket client's credit starts where its replay starts,
/// so the replay counts against its window and is paced by it (the rest follows its reports);
/// `floor` is lowered to it.
pub fn accept(
    state: &State,
    log: &ChannelLog,
    join: Join<'_>,
    floor: &Cell<Floor>,
) -> Result<Accepted, Error> {
    let internal = |what: &str| {
        let what = what.to_string();
        move |e: worker::Error| Error::Internal(format!("{what}: {e}"))
    };
    let Join {
        channel,
        mut attachment,
        cursor,
        window,
        ..
    } = join;
    let plan = plan_replay(cursor, window, false);
    let (after, credited) = attachment.start(plan, window);
    if credited {
        let bytes = log
            .bytes_at(after)
            .map_err(internal("reading a position"))?;
        floor.set(attachment.credited(after, bytes, join.now_ms, floor.get()));
    }
    let pair = WebSocketPair::new().map_err(internal("creating a socket pair"))?;
    let server = pair.server;
    let filter_key = join.filter.as_ref().map(|(key, _)| key.as_str());
    let filter = join.filter.as_ref().map(|(_, f)| f.as_ref());
    hibernate(
        state,
        &server,
        &attachment,
        channel,
        join.publisher,
        filter_key,
    )?;
    let sink = SocketSink(server.clone());
    let first = match attachment.transport {
        Transport::Ws => ready_frame(window.head, join.flow_window, join.heartbeat),
        Transport::Sse => Downstream::Start {
            after: cursor.unwrap_or(window.head),
            head: window.head,
        }
        .encode(),
    };
    deliver(std::slice::from_ref(&sink), &[first]);
    if let Some(sync) = &join.greeting {
        let frame = presence::frame(attachment.transport, sync);
        deliver(std::slice::from_ref(&sink), &[frame]);
    }
    let sent = paced_replay(
        &sink,
        log,
        channel,
        &mut attachment,
        filter,
        plan,
        window.head,
        join.flow_window,
    )?;
    if sent.is_some() {
        floor.set(floor.get().holding());
    }
    attachment.settle(sent);
    server
        .serialize_attachment(&attachment)
        .map_err(internal("attaching rights"))?;
    Ok(Accepted {
        client: pair.client,
        stalls_at: attachment.stall(join.now_ms).and_then(Result::ok),
    })
}

/// Hands the socket to the runtime as hibernatable, tagged with its transport (filtered or
/// not), its channel, its publisher, whether it is a presence connection, and its filter.
fn hibernate(
    state: &State,
    server: &WebSocket,
    attachment: &Attachment,
    channel: &ChannelName,
    publisher: Option<Publisher>,
    filter_key: Option<&str>,
) -> Result<(), Error> {
    let transport = match filter_key {
        Some(_) => filters::transport_tag(attachment.transport),
        None => attachment.transport.tag(),
    };
    let tags = [transport.to_string()]
        .into_iter()
        .chain(filter_key.map(|key| format!("{FILTER_TAG}{key}")))
        .chain([format!("{CHANNEL_TAG}{channel}")])
        .chain(publisher.map(|p| format!("{PUBLISHER_TAG}{}", p.hex())))
        .chain(attachment.member.as_ref().map(|_| PRESENCE_TAG.to_string()))
        .map(|tag| JsValue::from_str(&tag))
        .collect();
    state
        .as_raw()
        .accept_websocket_with_tags(server.as_ref(), tags)
        .map_err(|e| Error::Unavailable(format!("accepting a socket: {e:?}")))
}

/// Sends a subscriber the next step of its replay (`replay`), paced by its credit if it has
/// one: a WebSocket client up to its window (it reports every quarter of it); an SSE bridge a
/// quarter window at a time, followed by a `held` notice, because it reports only once its
/// client has taken everything before that notice. Returns the last id sent if short of `head`.
///
/// A filtered WebSocket client can only report what it was sent: a step that its filter left
/// empty moves its credit past what it skipped (it owes nothing for events it never got), and
/// the next step follows at once, so it is never held waiting for a report it cannot make.
#[allow(clippy::too_many_arguments)]
fn paced_replay(
    sink: &SocketSink,
    log: &ChannelLog,
    channel: &ChannelName,
    attachment: &mut Attachment,
    filter: Option<&Filter>,
    mut plan: Replay,
    head: u64,
    flow_window: u64,
) -> Result<Option<u64>, Error> {
    let mut sent;
    loop {
        let limit = attachment.step_limit(flow_window);
        let step = replay(
            sink,
            log,
            channel,
            attachment.transport,
            filter,
            plan,
            head,
            limit,
        )?;
        sent = step.held_at;
        let (Some(at), Some(_), 0) = (sent, filter, step.delivered) else {
            break;
        };
        let Some(credit) = attachment.credit else {
            break;
        };
        let progressed = match plan {
            Replay::After(before) => at > before,
            _ => true,
        };
        if attachment.transport == Transport::Sse || !progressed {
            break;
        }
        let bytes = log
            .bytes_at(at)
            .map_err(|e| Error::Internal(format!("reading a position: {e}")))?;
        attachment.credit = Some(Credit::new(at, bytes, credit.at_ms));
        plan = Replay::After(at);
    }
    if let Some(sent) = attachment.notice_after_step(sent) {
        deliver(
            std::slice::from_ref(sink),
            &[Downstream::Held(sent).encode()],
        );
    }
    Ok(sent)
}

/// Where a replay step left a subscriber: held after an id (short of the head) or live, and
/// how many events it was sent.
struct Step {
    held_at: Option<u64>,
    delivered: usize,
}

/// Sends `sink` the replay `plan` asks for, page by page: the gap notice if any, then the
/// events (those `filter` lets through, if it has one). With `limit` (a WebSocket client's
/// `Credit::replay_limit`), only the events whose frames start before it: the step is then held
/// after the last id it looked at when that stops it short of `head`.
#[allow(clippy::too_many_arguments)]
fn replay(
    sink: &SocketSink,
    log: &ChannelLog,
    channel: &ChannelName,
    transport: Transport,
    filter: Option<&Filter>,
    plan: Replay,
    head: u64,
    limit: Option<u64>,
) -> Result<Step, Error> {
    let mut after = match plan {
        Replay::Live => {
            return Ok(Step {
                held_at: None,
                delivered: 0,
            })
        }
        Replay::After(n) => n,
        Replay::Gap { earliest, .. } => earliest.saturating_sub(1),
    };
    let mut delivered = 0;
    for page in 0.. {
        let mut events = log
            .after(after, REPLAY_PAGE, limit)
            .map_err(|e| Error::Internal(format!("reading the replay: {e}")))?;
        let full = events.len() as u64 == REPLAY_PAGE;
        if let Some(last) = events.last() {
            after = last.id;
        }
        if let Some(filter) = filter {
            events.retain(|e| filter.matches(&e.filtered_as()));
        }
        delivered += events.len();
        let frames = match page {
            0 => Frames::replay(channel, plan, &events),
            _ => Frames::encode(channel, &events),
        };
        if filter.is_some_and(Filter::mercure) {
            // Mercure updates: no gap notice (the protocol has none), the update's own framing.
            let all = vec![true; events.len()];
            deliver(
                std::slice::from_ref(sink),
                &frames.select(transport, &all, true),
            );
        } else {
            deliver(std::slice::from_ref(sink), frames.for_transport(transport));
        }
        if !full {
            break;
        }
    }
    Ok(Step {
        held_at: held_at(after, head),
        delivered,
    })
}

/// A subscriber held by a paced replay reported its cursor (`attachment.credit` is updated):
/// sends it what its credit now allows, from where the replay stopped at `sent` (a gap notice
/// first if retention dropped events meanwhile), and settles `attachment` (still held, or
/// live).
pub fn resume_replay(
    ws: &WebSocket,
    log: &ChannelLog,
    channel: &ChannelName,
    sent: u64,
    attachment: &mut Attachment,
    filter: Option<&Filter>,
    flow_window: u64,
) -> Result<(), Error> {
    let window = log
        .window()
        .map_err(|e| Error::Internal(format!("reading the window: {e}")))?;
    let plan = plan_replay(Some(sent), window, false);
    let sink = SocketSink(ws.clone());
    let sent = paced_replay(
        &sink,
        log,
        channel,
        attachment,
        filter,
        plan,
        window.head,
        flow_window,
    )?;
    attachment.settle(sent);
    Ok(())
}

/// Closes with 4001 every subscriber a paced replay holds that has not reported for
/// `flow::STALL_MS` (it resumes from its cursor); returns when the next of those
/// still held would stall, for the alarm.
pub fn close_stalled(state: &State, presence: &Presence, now_ms: i64) -> Option<i64> {
    let mut next: Option<i64> = None;
    for ws in all_sockets(state) {
        match attachment(&ws).and_then(|a| a.stall(now_ms)) {
            Some(Err(())) => presence.close(&ws, CloseCode::TooSlow),
            Some(Ok(at)) => next = Some(next.map_or(at, |n| n.min(at))),
            None => {}
        }
    }
    next
}

/// What a publish's fan-out needs to enforce WebSocket windows.
pub struct FlowCheck<'a> {
    pub window: u64,
    /// The stream position after this publish's last event frame.
    pub end: u64,
    pub now_ms: i64,
    pub floor: &'a Cell<Floor>,
    /// When the first event after a cursor was sent (its publish time), if it is still held.
    pub sent_after: &'a dyn Fn(u64) -> Option<i64>,
    /// The same for the first event after a cursor that a filter lets through.
    pub matched_after: &'a dyn Fn(u64, &Filter) -> Option<i64>,
    /// The channel's head after this publish.
    pub head: u64,
}

/// Sends a publish's frames to every live subscriber; sockets that fail are closed so their
/// clients reconnect from their cursor. WebSocket clients that this publish would put over their
/// window, silent for `flow::STALL_MS`, are closed with 4001 instead (their attachments are read
/// only when the floor says some socket may be over).
///
/// Subscribers held by a paced replay get nothing here: their replay brings these events in
/// order. The floor says when one may be held, and the attachments are read then.
pub fn fan_out(
    state: &State,
    presence: &Presence,
    filters: &Filters,
    frames: &Frames,
    flow: FlowCheck<'_>,
) {
    let check = flow.floor.get().must_check(flow.end, flow.window);
    let mut scan = FloorScan::new(flow.end);
    for transport in [Transport::Ws, Transport::Sse] {
        let mut sockets = any_with_tag(state.as_raw(), transport.tag());
        if check {
            sockets.retain(|ws| {
                let Some(attachment) = attachment(ws) else {
                    return true;
                };
                match attachment.verdict(flow.end, flow.window, flow.now_ms, flow.sent_after) {
                    Verdict::TooSlow => {
                        presence.close(ws, CloseCode::TooSlow);
                        false
                    }
                    Verdict::Skip => {
                        scan.kept(&attachment);
                        false
                    }
                    Verdict::Deliver => {
                        scan.kept(&attachment);
                        true
                    }
                }
            });
        }
        for failed in deliver_js(&sockets, frames.for_transport(transport)) {
            if let Some(socket) = sockets.get(failed) {
                presence.close(socket, CloseCode::Reconnect);
            }
        }
        fan_out_filtered(
            state, presence, filters, frames, transport, &flow, check, &mut scan,
        );
    }
    if check {
        flow.floor.set(scan.floor());
    }
}

/// The filtered subscribers' part of a publish: each gets the events its filter lets through
/// (sockets that share a filter share one selection and one send list). Flow control is the
/// unfiltered rule, except that a socket owes nothing for events its filter kept from it: one
/// over its window with no matching event after its cursor has its credit moved to the head.
#[allow(clippy::too_many_arguments)]
fn fan_out_filtered(
    state: &State,
    presence: &Presence,
    filters: &Filters,
    frames: &Frames,
    transport: Transport,
    flow: &FlowCheck<'_>,
    check: bool,
    scan: &mut FloorScan,
) {
    let raw = state.as_raw();
    let sockets = any_with_tag(raw, filters::transport_tag(transport));
    if sockets.is_empty() {
        return;
    }
    let mut selection = Selection::new(frames);
    let mut groups: HashMap<String, (Rc<Filter>, Vec<WebSocket>)> = HashMap::new();
    for ws in sockets {
        let key = filters::key_of(raw, &ws).unwrap_or_default();
        let Some(filter) = filters.of(raw, &ws) else {
            continue;
        };
        if check && !filtered_verdict(presence, &ws, &filter, flow, scan) {
            continue;
        }
        groups
            .entry(key)
            .or_insert_with(|| (filter, Vec::new()))
            .1
            .push(ws);
    }
    for (key, (filter, sockets)) in groups {
        let chosen = frames.select(transport, selection.keep(&key, &filter), filter.mercure());
        for failed in deliver_js(&sockets, &chosen) {
            if let Some(socket) = sockets.get(failed) {
                presence.close(socket, CloseCode::Reconnect);
            }
        }
    }
}

/// Whether a filtered socket gets this publish (`Verdict::Deliver`); closes it when too slow.
fn filtered_verdict(
    presence: &Presence,
    ws: &WebSocket,
    filter: &Filter,
    flow: &FlowCheck<'_>,
    scan: &mut FloorScan,
) -> bool {
    let Some(mut attachment) = attachment(ws) else {
        return true;
    };
    if let Some(credit) = attachment.credit {
        let owed = credit.unconfirmed(flow.end) > flow.window
            && (flow.matched_after)(credit.cursor, filter).is_none();
        if owed && attachment.sent.is_none() {
            // Nothing it could confirm: it is level with the head.
            attachment.credit = Some(Credit::new(flow.head, flow.end, flow.now_ms));
            let _ = ws.serialize_attachment(&attachment);
        }
    }
    let matched = |cursor| (flow.matched_after)(cursor, filter);
    match attachment.verdict(flow.end, flow.window, flow.now_ms, matched) {
        Verdict::TooSlow => {
            presence.close(ws, CloseCode::TooSlow);
            false
        }
        Verdict::Skip => {
            scan.kept(&attachment);
            false
        }
        Verdict::Deliver => {
            scan.kept(&attachment);
            true
        }
    }
}

/// Closes `ws`; a presence connection must leave first: use `Presence::close` for those.
pub fn close(ws: &WebSocket, code: CloseCode) {
    // Closing an already closed socket throws; there is nothing left to do then.
    let _ = ws.close(Some(code.code()), Some(code.reason()));
}

/// Closes every socket whose token has expired; returns the earliest expiry still ahead.
pub fn close_expired(state: &State, presence: &Presence, now_s: i64) -> Option<i64> {
    let mut next: Option<i64> = None;
    for ws in all_sockets(state) {
        let Some(attachment) = attachment(&ws) else {
            continue;
        };
        match attachment.exp {
            Some(_) if attachment.expired(now_s) => presence.close(&ws, CloseCode::TokenExpired),
            Some(exp) => next = Some(next.map_or(exp, |n| n.min(exp))),
            None => {}
        }
    }
    next
}
