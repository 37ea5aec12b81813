//! Presence (DESIGN.md "Presence", issue 15): `?presence=` on every live route (`1` or `0`, else
//! 400; auth first, then a usable `sub`), `sync` then replay then live on WebSocket, SSE presence
//! events without `id:` (the cursor never moves), one member per `sub` across SSE and WebSocket
//! (it leaves with its last connection), join/leave order and batches (`diff`), the sweep of silent
//! presence sockets (4002), the `GET /channels/{c}/presence` listing, multi-channel streams, the
//! member cap (409), and presence across hibernation, a restart and a 1,000-member join storm.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgehub::auth::{sign, Info};
use futures::future::join_all;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::api::{
    admin, backend, channel, claims, client, ids, is_utc_millis, now_secs, Api, Resp,
};
use crate::harness::{SECRET, SHARED_HEARTBEAT_SECONDS};
use crate::idempotency::publish_keyed_retrying;
use crate::live::info;
use crate::publish::assert_problem;
use crate::retention::own_hub;
use crate::sse_client::{event_ids, SseStream};
use crate::sse_parser::SseEvent;
use crate::ws_client::{frame_ids, Frame, WsClient};
use crate::{case, case_no_hub, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case_no_hub!(presence_client_helpers_follow_members_and_read_the_wire_strictly),
        case!(presence_flag_is_1_or_0_and_anything_else_is_400_on_every_route),
        case!(presence_is_401_or_403_first_then_400_without_a_usable_sub),
        case!(presence_ws_gets_ready_then_a_sorted_sync_then_replay_then_live),
        case!(presence_the_largest_member_fits_its_socket_attachment),
        case!(presence_sse_events_carry_no_id_and_leave_the_cursor_alone),
        case!(presence_a_member_is_one_sub_across_sse_and_ws_and_leaves_with_its_last),
        case!(presence_others_see_join_then_leave_in_order_and_a_blink_goes_unannounced),
        case!(presence_a_burst_of_40_joins_and_40_leaves_is_followed_exactly),
        case!(presence_silent_presence_sockets_are_closed_4002_and_plain_ones_never),
        case!(presence_multi_ws_syncs_each_channel_and_follows_subscribe_and_unsubscribe),
        case!(presence_multi_sse_sends_presence_without_ids_naming_the_channel),
        case_own_hub!(presence_cap_refuses_only_new_members_with_409_presence_full),
        case_own_hub!(presence_survives_hibernation_of_the_channel_object),
        case_own_hub!(presence_after_a_restart_lists_exactly_the_reconnected_members),
        case_own_hub!(presence_join_storm_of_1000_members_while_events_flow),
    ]
}

const WAIT: Duration = Duration::from_secs(30);
/// Well past the 250 ms a presence change may be held back to be coalesced with others.
const QUIET: Duration = Duration::from_millis(1000);
/// An SSE member leaves within about a heartbeat (2 s on the shared hub) of going away.
const LEAVE_WAIT: Duration = Duration::from_secs(10);
/// How often a presence WebSocket pings: at least every HEARTBEAT_SECONDS/2 of the shared hub.
const PING_EVERY: Duration = Duration::from_millis(500);
/// No keepalive outlives its test (`TRIAL_TIMEOUT`), however it was left behind.
const PUMP_LIFETIME: Duration = Duration::from_secs(660);

// ---- tokens and the objects the hub should send ----

/// A token for `sub` with `info` (or none), that may publish and subscribe everywhere.
fn member_token(sub: &str, info: Option<&Value>) -> String {
    let mut c = claims(&["*"], &["*"], Some(now_secs() + 3600));
    c.sub = Some(sub.to_string());
    c.edgehub.info = info.map(|i| Info::parse(&i.to_string()).expect("a valid info"));
    sign(&c, SECRET)
}

/// A token with `sub` (or none) that may only subscribe to `subscribe`.
fn sub_token(sub: Option<&str>, subscribe: &[&str]) -> String {
    let mut c = claims(&[], subscribe, Some(now_secs() + 600));
    c.sub = sub.map(str::to_string);
    sign(&c, SECRET)
}

/// What `tok(sub)` shows as its member's info.
fn info_of(sub: &str) -> Value {
    json!({"name": sub})
}

fn tok(sub: &str) -> String {
    member_token(sub, Some(&info_of(sub)))
}

/// The member `tok(sub)` makes: `{"sub","info"}`.
fn who(sub: &str) -> Value {
    json!({"sub": sub, "info": info_of(sub)})
}

fn sync(c: &str, members: &[Value]) -> Value {
    json!({"action": "sync", "channel": c, "members": members})
}

/// The `sync` of members made by `tok`, `subs` in the order given.
fn syncs(c: &str, subs: &[&str]) -> Value {
    sync(c, &subs.iter().map(|s| who(s)).collect::<Vec<_>>())
}

fn change(c: &str, action: &str, member: Value) -> Value {
    json!({"action": action, "channel": c, "member": member})
}

fn join(c: &str, sub: &str) -> Value {
    change(c, "join", who(sub))
}

fn leave(c: &str, sub: &str) -> Value {
    change(c, "leave", who(sub))
}

/// The WebSocket form of a presence object.
fn op(mut object: Value) -> Value {
    object["op"] = json!("presence");
    object
}

/// The listing `GET /channels/{c}/presence` should give, `since` left out: `(member, connections)`.
fn listed(c: &str, members: &[(Value, u64)]) -> Value {
    let entry = |(m, k): &(Value, u64)| {
        let mut e = m.clone();
        e["connections"] = json!(k);
        e
    };
    let members: Vec<Value> = members.iter().map(entry).collect();
    json!({"channel": c, "count": members.len(), "members": members})
}

/// `listed` for members made by `tok`.
fn listed_subs(c: &str, members: &[(&str, u64)]) -> Value {
    let members: Vec<(Value, u64)> = members.iter().map(|(s, k)| (who(s), *k)).collect();
    listed(c, &members)
}

/// True when `got` holds exactly the values of `want`, in any order.
fn same_set(got: &[Value], want: &[Value]) -> bool {
    got.len() == want.len() && want.iter().all(|w| got.contains(w))
}

/// For a failed comparison of long lists of members (`key` of `got` and `want`): the lengths,
/// the counts, and the first member that differs.
fn first_difference(got: &Value, want: &Value, key: &str) -> String {
    let list = |v: &Value| v[key].as_array().cloned().unwrap_or_default();
    let (g, w) = (list(got), list(want));
    let at = (0..g.len().max(w.len())).find(|&i| g.get(i) != w.get(i));
    let (count, want_count) = (&got["count"], &want["count"]);
    format!(
        "{} members (count {count}), want {} (count {want_count}); first difference at {at:?}: \
         {:?}, want {:?}",
        g.len(),
        w.len(),
        at.and_then(|i| g.get(i)),
        at.and_then(|i| w.get(i))
    )
}

// ---- HTTP and SSE ----

async fn publish(api: &Api, c: &str, body: Value) -> Vec<u64> {
    let r = api.publish(c, &body, &admin()).await;
    assert_eq!(r.status, 201, "publish {body}: {}", r.text());
    ids(&r.json())
}

/// `POST /tokens` as a backend (sub `*`); the new token.
async fn mint(api: &Api, body: &Value) -> String {
    let req = client()
        .post(format!("{}/tokens", api.base))
        .bearer_auth(backend())
        .header("content-type", "application/json")
        .body(body.to_string());
    let r = api.send(req).await;
    assert_eq!(r.status, 201, "mint {body}: {}", r.text());
    r.json()["token"].as_str().expect("a token").to_string()
}

/// `GET /channels/{c}/presence` with the admin token, as it came.
async fn listing_as_is(api: &Api, c: &str) -> Value {
    let path = format!("/channels/{c}/presence");
    let r = api.get(&path, Some(&admin())).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// The listing, each member's `since` checked (RFC 3339 UTC, milliseconds) and left out.
async fn listing(api: &Api, c: &str) -> Value {
    let mut l = listing_as_is(api, c).await;
    for m in l["members"].as_array_mut().into_iter().flatten() {
        let since = m.as_object_mut().and_then(|o| o.remove("since"));
        let ok = since
            .as_ref()
            .and_then(Value::as_str)
            .is_some_and(is_utc_millis);
        assert!(ok, "the since of {m}: {since:?}");
    }
    l
}

/// The `since` the listing shows for `sub`.
async fn since_of(api: &Api, c: &str, sub: &str) -> String {
    let l = listing_as_is(api, c).await;
    let members = l["members"].as_array();
    let found = members.and_then(|m| m.iter().find(|m| m["sub"] == sub));
    let since = found.and_then(|m| m["since"].as_str()).map(str::to_string);
    since.unwrap_or_else(|| panic!("{sub} in the listing {l}"))
}

/// Reads the listing until it equals `want` or `limit` passes; returns the last one.
async fn listing_becomes(api: &Api, c: &str, want: &Value, limit: Duration) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    for _ in 0..300 {
        last = listing(api, c).await;
        if &last == want || started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

async fn sse_open(
    api: &Api,
    path: &str,
    tok: Option<&str>,
    last: Option<&str>,
) -> Result<SseStream, Resp> {
    let auth = tok.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> =
        auth.iter().map(|a| ("authorization", a.as_str())).collect();
    headers.extend(last.map(|l| ("last-event-id", l)));
    SseStream::open(api, path, &headers).await
}

async fn sse(api: &Api, path: &str, tok: Option<&str>, last: Option<&str>) -> SseStream {
    let opened = sse_open(api, path, tok, last).await;
    opened.unwrap_or_else(|r| panic!("GET {path}: {} {}", r.status, r.text()))
}

/// The next SSE event, which must be a presence event.
async fn sse_presence(s: &mut SseStream, what: &str) -> SseEvent {
    let e = s.next_event(WAIT).await;
    let e = e.unwrap_or_else(|| panic!("{what}: no event within {WAIT:?}"));
    assert_eq!(e.kind, "presence", "{what}: {e:?}");
    e
}

/// The presence blocks on the wire, in order: each must be exactly `event: presence` and one
/// `data:` line, with no `id:`, so `Last-Event-ID` stays the last real event's. Their data, or
/// the first block that is not so.
fn presence_on_the_wire(raw: &[u8]) -> Result<Vec<Value>, String> {
    let text = String::from_utf8_lossy(raw);
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    blocks.pop(); // what follows the last blank line is not a whole block yet
    let presence = blocks.into_iter().filter(|b| {
        b.lines()
            .any(|l| l.starts_with("event:") && l.contains("presence"))
    });
    let data = |b: &str| match b.lines().collect::<Vec<_>>().as_slice() {
        ["event: presence", data] if data.starts_with("data: ") => {
            Ok(serde_json::from_str(&data["data: ".len()..]).unwrap_or(Value::Null))
        }
        _ => Err(format!(
            "a presence block is `event: presence` and one data line: {b:?}"
        )),
    };
    presence.map(data).collect()
}

/// Opens `path` as a client of either kind and reports the answer: a refusal whole, a stream
/// that opened as a bare 200 (SSE) or 101 (WebSocket), then dropped.
async fn answer(api: &Api, path: &str, tok: Option<&str>) -> Resp {
    let opened = |status| Resp {
        status,
        headers: reqwest::header::HeaderMap::new(),
        body: b"(opened)".to_vec(),
    };
    if path.starts_with("/ws") {
        let ws = WsClient::open(api, path, tok).await;
        return ws.map_or_else(|r| r, |_| opened(101));
    }
    let s = sse_open(api, path, tok, None).await;
    s.map_or_else(|r| r, |_| opened(200))
}

/// The four live routes on `c` with `presence=flag`: SSE and WebSocket, one channel and many.
fn routes(c: &str, flag: &str) -> [String; 4] {
    [
        format!("/sse/{c}?presence={flag}"),
        format!("/ws/{c}?presence={flag}"),
        format!("/sse?channel={c}&presence={flag}"),
        format!("/ws?channel={c}&presence={flag}"),
    ]
}

// ---- a WebSocket that keeps itself alive ----

enum Cmd {
    Send(String),
    Mute,
    Close(oneshot::Sender<()>),
}

/// A WebSocket kept alive as a presence client must keep it (the text `ping` every so often,
/// docs: within HEARTBEAT_SECONDS/2): a task owns the client, pings every `every`, swallows the
/// `pong`s and hands over every other frame (or, for a crowd nobody reads, only the close, its
/// frames left unparsed). Dropped, it goes away without a close frame, as a crashed client does.
struct LiveWs {
    frames: mpsc::UnboundedReceiver<Frame>,
    cmds: mpsc::UnboundedSender<Cmd>,
    /// The close, once `closed_now` saw it.
    ended: Option<Option<(u16, String)>>,
}

impl LiveWs {
    /// Opens `path` (`/ws/{c}…`, or a multi-channel `/ws?…`) and reads its `ready` frame.
    async fn open(
        api: &Api,
        path: &str,
        tok: Option<&str>,
        every: Duration,
        forward: bool,
    ) -> Result<(LiveWs, Value), Resp> {
        let mut ws = match path.starts_with("/ws?") {
            true => WsClient::open_stream(api, path, tok).await?,
            false => WsClient::open(api, path, tok).await?,
        };
        let ready = ws.next_json(WAIT).await;
        assert_eq!(ready["op"], "ready", "first frame on {path}: {ready}");
        ws.set_raw(!forward);
        let (frames_in, frames) = mpsc::unbounded_channel();
        let (cmds, cmds_out) = mpsc::unbounded_channel();
        tokio::spawn(pump(ws, every, cmds_out, frames_in, forward));
        let ended = None;
        Ok((
            LiveWs {
                frames,
                cmds,
                ended,
            },
            ready,
        ))
    }

    /// The next frame (pongs aside); `None` when `wait` passes first.
    async fn next(&mut self, wait: Duration) -> Option<Frame> {
        match tokio::time::timeout(wait, self.frames.recv()).await {
            Err(_) => None,
            Ok(got) => Some(got.unwrap_or(Frame::Closed(None))),
        }
    }

    async fn next_json(&mut self, wait: Duration) -> Value {
        match self.next(wait).await {
            Some(Frame::Json(v)) => v,
            other => panic!("wanted a JSON frame within {wait:?}, got {other:?}"),
        }
    }

    fn send(&self, frame: &Value) {
        let _ = self.cmds.send(Cmd::Send(frame.to_string()));
    }

    /// Stops pinging and keeps the socket open: a client gone silent.
    fn mute(&self) {
        let _ = self.cmds.send(Cmd::Mute);
    }

    /// Closes with 1000 and waits (bounded) for the server's close.
    async fn close(self) {
        let (done, closed) = oneshot::channel();
        if self.cmds.send(Cmd::Close(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), closed).await;
        }
    }

    /// Whether the socket has closed, from the frames already received (the others are
    /// dropped): its close, if so.
    fn closed_now(&mut self) -> Option<Option<(u16, String)>> {
        while let (None, Ok(f)) = (&self.ended, self.frames.try_recv()) {
            if let Frame::Closed(close) = f {
                self.ended = Some(close);
            }
        }
        self.ended.clone()
    }

    /// Frames until the socket closes (at most 10,000, within `wait`): the close, or `None`.
    async fn until_closed(&mut self, wait: Duration) -> Option<Option<(u16, String)>> {
        let deadline = Instant::now() + wait;
        for _ in 0..10_000 {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await?
            {
                Frame::Closed(close) => return Some(close),
                _ => continue,
            }
        }
        None
    }
}

async fn pump(
    mut ws: WsClient,
    every: Duration,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    frames: mpsc::UnboundedSender<Frame>,
    forward: bool,
) {
    let (mut pinging, mut pinged) = (true, Instant::now());
    let until = Instant::now() + PUMP_LIFETIME;
    while Instant::now() < until {
        if pinging && pinged.elapsed() >= every {
            // A socket gone shows in the next read.
            let _ = ws.try_send_text("ping").await;
            pinged = Instant::now();
        }
        let wait = every
            .saturating_sub(pinged.elapsed())
            .max(Duration::from_millis(1));
        // A command may cancel `ws.next` while it waits for a frame, which loses nothing (it
        // could cut a cursor report short, sent only after a quarter window of events: far more
        // than these tests publish).
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Send(text)) => {
                    let _ = ws.try_send_text(&text).await;
                }
                Some(Cmd::Mute) => pinging = false,
                Some(Cmd::Close(done)) => {
                    ws.close().await;
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
            got = ws.next(if pinging { wait } else { every }) => match got {
                None => {}
                Some(Frame::Text(t)) if t == "pong" => {}
                Some(f) => {
                    let closed = matches!(f, Frame::Closed(_));
                    if forward || closed {
                        let _ = frames.send(f);
                    }
                    if closed {
                        return;
                    }
                }
            },
        }
    }
}

/// Opens a pinging WebSocket on `path`; panics on a refusal. The client and its `ready`.
async fn live_ws(api: &Api, path: &str, tok: Option<&str>) -> (LiveWs, Value) {
    let opened = LiveWs::open(api, path, tok, PING_EVERY, true).await;
    opened.unwrap_or_else(|r| panic!("upgrade {path}: {} {}", r.status, r.text()))
}

/// The largest member the rules allow, a `sub` of 256 characters and an `info` of about 1 KiB,
/// both of characters the runtime stores as two bytes each, still fits the 2 KiB the runtime
/// allows a socket's attachment: on a v1 WebSocket and on a lane of a multi-channel one.
async fn presence_the_largest_member_fits_its_socket_attachment(api: Api) {
    let c = channel("pbig");
    let sub = "ā".repeat(256);
    let info = json!({"n": "ā".repeat(505)});
    assert!((1000..=1024).contains(&info.to_string().len()), "{info}");
    let t = member_token(&sub, Some(&info));
    let me = json!({"sub": sub, "info": info});
    for path in [
        format!("/ws/{c}?presence=1"),
        format!("/ws?channel={c}&channel={c}-b&presence=1"),
    ] {
        let (mut ws, _) = live_ws(&api, &path, Some(&t)).await;
        let sync = ws.next_json(WAIT).await;
        assert_eq!(sync["members"], json!([me]), "{path}: {sync}");
        let got = listing(&api, &c).await;
        assert_eq!(got["members"][0]["sub"], json!(sub), "{path}");
        ws.close().await;
        listing_becomes(&api, &c, &listed(&c, &[]), WAIT).await;
    }
}

/// Opens `/ws/{c}?presence=1` as `sub` (`tok(sub)`): the client and its first frame after
/// `ready`, which must be a `sync`.
async fn ws_member(api: &Api, c: &str, sub: &str) -> (LiveWs, Value) {
    let (mut ws, _) = live_ws(api, &format!("/ws/{c}?presence=1"), Some(&tok(sub))).await;
    let first = ws.next_json(WAIT).await;
    let kind = (&first["op"], &first["action"]);
    assert_eq!(
        kind,
        (&json!("presence"), &json!("sync")),
        "{sub}'s first frame: {first}"
    );
    (ws, first)
}

/// The next frame must be `want`.
async fn expect(ws: &mut LiveWs, want: Value, what: &str) {
    assert_eq!(ws.next_json(WAIT).await, want, "{what}");
}

/// No frame at all within `QUIET`.
async fn quiet(ws: &mut LiveWs, what: &str) {
    if let Some(f) = ws.next(QUIET).await {
        panic!("{what}: wanted nothing, got {f:?}");
    }
}

// ---- following presence as a client must ----

/// One client's idea of a channel's members (docs/API.md#presence-events): a `sync` replaces
/// it, a `join` adds, a `leave` removes, a `diff` removes its `leaves` and adds its `joins`.
/// `joins` and `leaves` count members, `frames` and the rest frames; `odd` notes a join of a known member or a
/// leave of an unknown one; `story` is every change applied, in short (`sync(3)`, `+ada`,
/// `-ada`, `diff`), for failure messages.
#[derive(Debug, Default)]
struct View {
    members: BTreeMap<String, Value>,
    frames: usize,
    syncs: usize,
    diffs: usize,
    joins: usize,
    leaves: usize,
    odd: Vec<String>,
    story: Vec<String>,
}

/// A presence object's list of members, which must be sorted by `sub`: `(sub, info)`.
fn members_of(object: &Value, key: &str) -> Vec<(String, Value)> {
    let list = object[key].as_array();
    let list = list.unwrap_or_else(|| panic!("no {key} in {object}"));
    let sub = |m: &Value| m["sub"].as_str().map(str::to_string);
    let pairs: Vec<(String, Value)> = list
        .iter()
        .map(|m| {
            (
                sub(m).unwrap_or_else(|| panic!("{object}")),
                m["info"].clone(),
            )
        })
        .collect();
    let sorted = pairs.windows(2).all(|w| w[0].0 < w[1].0);
    assert!(sorted, "{key} sorted by sub: {object}");
    pairs
}

impl View {
    /// Applies a presence object of channel `c` (a WebSocket frame or an SSE event's data);
    /// false for any other frame.
    fn apply(&mut self, c: &str, object: &Value) -> bool {
        if object.get("op").is_some_and(|op| op != "presence") {
            return false;
        }
        assert_eq!(object["channel"], json!(c), "{object}");
        self.frames += 1;
        let one = |m: &Value| {
            let sub = m["sub"].as_str().unwrap_or_else(|| panic!("{object}"));
            [(sub.to_string(), m["info"].clone())]
        };
        match object["action"].as_str() {
            Some("sync") => {
                self.members = members_of(object, "members").into_iter().collect();
                self.syncs += 1;
                self.story.push(format!("sync({})", self.members.len()));
            }
            Some("join") => self.change(&one(&object["member"]), &[]),
            Some("leave") => self.change(&[], &one(&object["member"])),
            Some("diff") => {
                let (joins, leaves) = (members_of(object, "joins"), members_of(object, "leaves"));
                let both = joins.iter().any(|j| leaves.iter().any(|l| l.0 == j.0));
                assert!(!both, "a sub in both lists: {object}");
                self.diffs += 1;
                self.story.push("diff".into());
                self.change(&joins, &leaves);
            }
            _ => panic!("a presence object with an unknown action: {object}"),
        }
        true
    }

    fn change(&mut self, joins: &[(String, Value)], leaves: &[(String, Value)]) {
        for (sub, _) in leaves {
            self.story.push(format!("-{sub}"));
            if self.members.remove(sub).is_none() {
                self.odd.push(format!("a leave of an unknown member {sub}"));
            }
        }
        for (sub, info) in joins {
            self.story.push(format!("+{sub}"));
            if self.members.insert(sub.clone(), info.clone()).is_some() {
                self.odd.push(format!("a join of a known member {sub}"));
            }
        }
        self.joins += joins.len();
        self.leaves += leaves.len();
    }

    fn is(&self, want: &BTreeSet<String>) -> bool {
        self.members.keys().eq(want.iter())
    }
}

/// Follows `ws`'s presence frames until `view` holds exactly `want` (true), the socket closes or
/// `wait` passes (false). Other frames are passed over.
async fn follow(
    ws: &mut LiveWs,
    c: &str,
    view: &mut View,
    want: &BTreeSet<String>,
    wait: Duration,
) -> bool {
    let deadline = Instant::now() + wait;
    for _ in 0..1_000_000 {
        if view.is(want) {
            return true;
        }
        match ws
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Frame::Json(v)) => {
                view.apply(c, &v);
            }
            None | Some(Frame::Closed(_)) => return false,
            Some(_) => {}
        }
    }
    false
}

/// Applies whatever else arrives until `QUIET` passes without a frame (at most 1,000 frames).
async fn settle(ws: &mut LiveWs, c: &str, view: &mut View) {
    for _ in 0..1000 {
        match ws.next(QUIET).await {
            Some(Frame::Json(v)) => {
                view.apply(c, &v);
            }
            Some(Frame::Closed(close)) => panic!("closed while settling: {close:?}"),
            Some(_) => {}
            None => return,
        }
    }
}

fn set(subs: &[&str]) -> BTreeSet<String> {
    subs.iter().map(|s| s.to_string()).collect()
}

// ---- the tests ----

/// The test's own client logic, which the tests below trust: the member set a follower keeps,
/// and the strict reading of SSE presence blocks (one with an `id:` line is refused).
async fn presence_client_helpers_follow_members_and_read_the_wire_strictly(_: Api) {
    let c = "room";
    let mut view = View::default();
    assert!(view.apply(c, &op(syncs(c, &["a", "b"]))));
    assert!(view.apply(c, &join(c, "c")) && view.apply(c, &leave(c, "a")));
    assert!(!view.apply(c, &json!({"op": "event", "id": 1, "channel": c})));
    assert!(
        view.is(&set(&["b", "c"])) && view.odd.is_empty(),
        "{view:?}"
    );
    let diff = json!({"action": "diff", "channel": c, "joins": [who("a"), who("d")], "leaves": [who("b")]});
    assert!(
        view.apply(c, &diff) && view.is(&set(&["a", "c", "d"])),
        "{view:?}"
    );
    view.apply(c, &join(c, "a"));
    view.apply(c, &leave(c, "x"));
    let counts = (
        view.syncs,
        view.diffs,
        view.joins,
        view.leaves,
        view.odd.len(),
    );
    assert_eq!(counts, (1, 1, 4, 3, 2), "{view:?}");

    let wire = b"retry: 2000\n: open\n\nevent: presence\ndata: {\"a\":1}\n\nid: 3\ndata: x\n\n\
                 event: presence\ndata: {\"cut";
    assert_eq!(presence_on_the_wire(wire), Ok(vec![json!({"a": 1})]));
    for bad in [
        &b"event: presence\nid: 4\ndata: {}\n\n"[..],
        b"id: 4\nevent: presence\ndata: {}\n\n",
        b"event: presence\ndata: {}\ndata: {}\n\n",
    ] {
        let read = presence_on_the_wire(bad);
        assert!(
            read.is_err(),
            "{:?}: {read:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

async fn presence_flag_is_1_or_0_and_anything_else_is_400_on_every_route(api: Api) {
    let c = channel("pflag");
    let t = tok("ada");
    for flag in ["2", "true", "", "01"] {
        for path in routes(&c, flag) {
            assert_problem(
                &answer(&api, &path, Some(&t)).await,
                400,
                "bad_request",
                &path,
            );
        }
    }
    // `0` is the same as no flag: the streams open, nobody joins, nobody gets presence.
    let (mut obs, first) = ws_member(&api, &c, "obs").await;
    assert_eq!(first, op(syncs(&c, &["obs"])));
    let [sse1, ws1, sse_many, ws_many] = routes(&c, "0");
    let (mut ws, _) = live_ws(&api, &ws1, Some(&t)).await;
    let (mut multi, _) = live_ws(&api, &ws_many, Some(&t)).await;
    let mut s = sse(&api, &sse1, Some(&t), None).await;
    let mut s_many = sse(&api, &sse_many, Some(&t), None).await;
    quiet(&mut ws, &ws1).await;
    quiet(&mut multi, &ws_many).await;
    quiet(&mut obs, "the observer: nobody joined").await;
    for (path, s) in [(&sse1, &mut s), (&sse_many, &mut s_many)] {
        assert_eq!(s.next_event(QUIET).await, None, "{path}: no presence event");
    }
    assert_eq!(listing(&api, &c).await, listed_subs(&c, &[("obs", 1)]));
    assert_eq!(info(&api, &c).await["presence"], json!(1));
    // They are ordinary subscribers.
    assert_eq!(publish(&api, &c, json!({"data": 1})).await, vec![1]);
    for (path, ws) in [
        (ws1.as_str(), &mut ws),
        (&ws_many, &mut multi),
        ("observer", &mut obs),
    ] {
        assert_eq!(frame_ids(&[ws.next_json(WAIT).await]), vec![1], "{path}");
    }
    // One channel: `id: 1`, the data; many: `id:` is the stream cursor, the data the envelope.
    for (path, s, id, data) in [
        (&sse1, &mut s, "1".to_string(), ""),
        (&sse_many, &mut s_many, format!("{c}=1"), "/data"),
    ] {
        let e = s.next_event(WAIT).await;
        let e = e.unwrap_or_else(|| panic!("{path}: no event"));
        let got = (e.last_event_id.as_str(), e.json().pointer(data).cloned());
        assert_eq!(got, (id.as_str(), Some(json!(1))), "{path}");
    }
    join_all([ws.close(), multi.close(), obs.close()]).await;
}

async fn presence_is_401_or_403_first_then_400_without_a_usable_sub(api: Api) {
    let c = channel("pauth");
    let p = format!("public:{}", channel("pauth"));
    let long = |n: usize| sub_token(Some(&"s".repeat(n)), &[&c]);
    let (elsewhere, bare) = (
        sub_token(Some("ada"), &["elsewhere"]),
        sub_token(None, &["elsewhere"]),
    );
    let (no_sub, star, long257) = (sub_token(None, &[&c]), backend(), long(257));
    // (what, channel, token, status, code): auth first, then the sub.
    let rows = [
        ("anonymous, private", &c, None, 401, "unauthorized"),
        ("a sub, no right", &c, Some(&elsewhere), 403, "forbidden"),
        ("no right or sub", &c, Some(&bare), 403, "forbidden"),
        ("anonymous, public", &p, None, 400, "bad_request"),
        ("no sub", &c, Some(&no_sub), 400, "bad_request"),
        ("sub *", &c, Some(&star), 400, "bad_request"),
        ("a 257-byte sub", &c, Some(&long257), 400, "bad_request"),
    ];
    for (what, ch, t, status, code) in &rows {
        for path in routes(ch, "1") {
            let r = answer(&api, &path, t.map(String::as_str)).await;
            assert_problem(&r, *status, code, &format!("{what}: {path}"));
        }
    }
    for path in routes(&c, "1") {
        let status = answer(&api, &path, Some(&long(256))).await.status;
        assert!(
            status == 200 || status == 101,
            "a sub of 256 bytes: {path}: {status}"
        );
    }

    // The listing takes the subscribe right (no sub needed), or a public channel.
    let quiet_c = channel("pauth");
    let get = |ch: &str| format!("/channels/{ch}/presence");
    let r = api.get(&get(&quiet_c), None).await;
    assert_problem(&r, 401, "unauthorized", "the listing, anonymous");
    let r = api.get(&get(&quiet_c), Some(&elsewhere)).await;
    assert_problem(&r, 403, "forbidden", "the listing without the right");
    for (ch, t) in [(&quiet_c, Some(sub_token(None, &[&quiet_c]))), (&p, None)] {
        let r = api.get(&get(ch), t.as_deref()).await;
        assert_eq!(r.status, 200, "the listing of {ch}: {}", r.text());
        assert_eq!(r.json(), json!({"channel": ch, "count": 0, "members": []}));
        let mut head = client().head(format!("{}{}", api.base, get(ch)));
        if let Some(t) = &t {
            head = head.bearer_auth(t);
        }
        let r = api.send(head).await;
        assert_eq!(
            (r.status, r.body.len()),
            (200, 0),
            "HEAD the listing of {ch}"
        );
    }
}

async fn presence_ws_gets_ready_then_a_sorted_sync_then_replay_then_live(api: Api) {
    let c = channel("pready");
    assert_eq!(
        publish(&api, &c, json!([{"data": 1}, {"data": 2}])).await,
        vec![1, 2]
    );
    // cy: an SSE member whose token a backend minted, with its info.
    let cy_info = json!({"name": "Cy", "color": "#0af", "tags": ["a", 1, null]});
    let mint_body = json!({"sub": "cy", "info": cy_info, "subscribe": [c], "ttl": 600});
    let cy_tok = mint(&api, &mint_body).await;
    let cy = json!({"sub": "cy", "info": cy_info});
    let mut cy_sse = sse(&api, &format!("/sse/{c}?presence=1"), Some(&cy_tok), None).await;
    let first = sse_presence(&mut cy_sse, "cy's first event").await;
    assert_eq!(first.json(), sync(&c, std::slice::from_ref(&cy)));

    // bob: a WebSocket member whose token has no info.
    let bob = json!({"sub": "bob", "info": null});
    let bob_path = format!("/ws/{c}?presence=1");
    let (mut bob_ws, ready) = live_ws(&api, &bob_path, Some(&member_token("bob", None))).await;
    assert!(ready["window"].is_u64(), "{ready}");
    assert_eq!(
        ready,
        json!({"op": "ready", "head": 2, "window": ready["window"],
               "heartbeat": SHARED_HEARTBEAT_SECONDS})
    );
    expect(
        &mut bob_ws,
        op(sync(&c, &[bob.clone(), cy.clone()])),
        "bob's sync",
    )
    .await;
    let joined = sse_presence(&mut cy_sse, "bob joins").await;
    assert_eq!(joined.json(), change(&c, "join", bob.clone()));

    // ada, from since=0: ready, the sync (ada sorts first), then the replay, then nothing.
    let path = format!("/ws/{c}?presence=1&since=0");
    let (mut ada, ready) = live_ws(&api, &path, Some(&tok("ada"))).await;
    assert_eq!(ready["head"], json!(2), "{ready}");
    let all = [who("ada"), bob.clone(), cy.clone()];
    expect(
        &mut ada,
        op(sync(&c, &all)),
        "ada's sync, before the replay",
    )
    .await;
    let replay = [ada.next_json(WAIT).await, ada.next_json(WAIT).await];
    assert_eq!(frame_ids(&replay), vec![1, 2], "{replay:?}");
    quiet(&mut ada, "ada after the replay").await;
    expect(&mut bob_ws, op(join(&c, "ada")), "bob sees ada join").await;
    assert_eq!(
        sse_presence(&mut cy_sse, "ada joins").await.json(),
        join(&c, "ada")
    );

    assert_eq!(publish(&api, &c, json!({"data": 3})).await, vec![3]);
    for (who, ws) in [("ada", &mut ada), ("bob", &mut bob_ws)] {
        assert_eq!(frame_ids(&[ws.next_json(WAIT).await]), vec![3], "{who}");
    }
    assert_eq!(event_ids(&cy_sse.events_through(3, WAIT).await), vec![3]);
    let members: Vec<(Value, u64)> = all.iter().map(|m| (m.clone(), 1)).collect();
    assert_eq!(listing(&api, &c).await, listed(&c, &members));
    let channel_info = info(&api, &c).await;
    assert_eq!(
        (&channel_info["presence"], &channel_info["head"]),
        (&json!(3), &json!(3))
    );
    join_all([ada.close(), bob_ws.close()]).await;
}

async fn presence_sse_events_carry_no_id_and_leave_the_cursor_alone(api: Api) {
    let c = channel("psse");
    assert_eq!(
        publish(&api, &c, json!([{"data": 1}, {"data": 2}])).await,
        vec![1, 2]
    );
    let path = format!("/sse/{c}?presence=1&since=0");
    let mut s = sse(&api, &path, Some(&tok("ada")), None).await;
    let first = sse_presence(&mut s, "the first event").await;
    assert_eq!(
        (first.json(), first.last_event_id.as_str()),
        (syncs(&c, &["ada"]), "")
    );
    assert_eq!(event_ids(&s.events_through(2, WAIT).await), vec![1, 2]);

    let (bob, _) = ws_member(&api, &c, "bob").await;
    let joined = sse_presence(&mut s, "bob joins").await;
    assert_eq!(
        (joined.json(), joined.last_event_id.as_str()),
        (join(&c, "bob"), "2")
    );
    assert_eq!(publish(&api, &c, json!({"data": 3})).await, vec![3]);
    assert_eq!(event_ids(&s.events_through(3, WAIT).await), vec![3]);
    bob.close().await;
    let left = sse_presence(&mut s, "bob leaves").await;
    assert_eq!(
        (left.json(), left.last_event_id.as_str()),
        (leave(&c, "bob"), "3")
    );
    assert_eq!(s.parser.last_event_id, "3", "what EventSource resumes from");
    let wire = vec![syncs(&c, &["ada"]), join(&c, "bob"), leave(&c, "bob")];
    assert_eq!(presence_on_the_wire(&s.raw), Ok(wire));

    // Not log events: neither the poll nor the head knows them.
    assert_eq!(api.await_mirror(&c, 3).await, 3);
    let (polled, _) = api.poll_all(&c, 0, 100, 2).await;
    let polled: Vec<u64> = polled.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(polled, vec![1, 2, 3]);
    assert_eq!(info(&api, &c).await["head"], json!(3));
    // Resuming from Last-Event-ID: the sync (ada's first connection is still there), then
    // exactly what comes after 3.
    let again_path = format!("/sse/{c}?presence=1");
    let mut again = sse(&api, &again_path, Some(&tok("ada")), Some("3")).await;
    let synced = sse_presence(&mut again, "the sync after a resume").await;
    assert_eq!(synced.json(), syncs(&c, &["ada"]));
    assert_eq!(publish(&api, &c, json!({"data": 4})).await, vec![4]);
    assert_eq!(event_ids(&again.events_through(4, WAIT).await), vec![4]);
    assert_eq!(event_ids(&s.events_through(4, WAIT).await), vec![4]);
}

async fn presence_a_member_is_one_sub_across_sse_and_ws_and_leaves_with_its_last(api: Api) {
    let c = channel("pone");
    let (mut obs, _) = ws_member(&api, &c, "obs").await;
    let (mut max_ws, first) = ws_member(&api, &c, "max").await;
    assert_eq!(first, op(syncs(&c, &["max", "obs"])));
    expect(&mut obs, op(join(&c, "max")), "max's first connection").await;
    let first_since = since_of(&api, &c, "max").await;
    // Another device, whose token shows another info: the member keeps its first one.
    let phone = member_token("max", Some(&json!({"name": "max", "on": "phone"})));
    let sse_path = format!("/sse/{c}?presence=1");
    let mut max_sse = sse(&api, &sse_path, Some(&phone), None).await;
    let synced = sse_presence(&mut max_sse, "max's second connection").await;
    assert_eq!(synced.json(), syncs(&c, &["max", "obs"]), "it sees itself");
    quiet(&mut obs, "a second connection of max changes nothing").await;
    quiet(&mut max_ws, "max never hears its own join").await;
    let two = listed_subs(&c, &[("max", 2), ("obs", 1)]);
    assert_eq!(listing(&api, &c).await, two);
    assert_eq!(
        since_of(&api, &c, "max").await,
        first_since,
        "its earliest connection's"
    );

    max_ws.close().await;
    let want = listed_subs(&c, &[("max", 1), ("obs", 1)]);
    assert_eq!(listing_becomes(&api, &c, &want, WAIT).await, want);
    let later = since_of(&api, &c, "max").await;
    assert!(
        later > first_since,
        "since is now the SSE connection's: {later} after {first_since}"
    );
    quiet(&mut obs, "max still has its SSE connection").await;
    let gone = Instant::now();
    drop(max_sse);
    assert_eq!(
        obs.next_json(LEAVE_WAIT).await,
        op(leave(&c, "max")),
        "its last one went"
    );
    eprintln!(
        "e2e: presence: an SSE member left {:?} after its client went away (heartbeat {} s)",
        gone.elapsed(),
        SHARED_HEARTBEAT_SECONDS
    );
    assert_eq!(listing(&api, &c).await, listed_subs(&c, &[("obs", 1)]));
    assert_eq!(info(&api, &c).await["presence"], json!(1));
    obs.close().await;
}

async fn presence_others_see_join_then_leave_in_order_and_a_blink_goes_unannounced(api: Api) {
    /// The blink (two opens and a close) must take less than this, well inside the 250 ms batch,
    /// for its check to hold whatever the hub's own latency.
    const BLINK: Duration = Duration::from_millis(120);
    let c = channel("porder");
    let (mut ada, first) = ws_member(&api, &c, "ada").await;
    let (bob, first_bob) = ws_member(&api, &c, "bob").await;
    assert_eq!(first_bob, op(syncs(&c, &["ada", "bob"])));
    expect(&mut ada, op(join(&c, "bob")), "bob joins").await;
    bob.close().await;
    expect(&mut ada, op(leave(&c, "bob")), "then bob leaves").await;

    // After a quiet spell dan joins (sent at once); cy joins and leaves in the batch after it.
    tokio::time::sleep(QUIET).await;
    let started = Instant::now();
    let (dan, _) = ws_member(&api, &c, "dan").await;
    let (cy, _) = ws_member(&api, &c, "cy").await;
    cy.close().await;
    let blink = started.elapsed();
    let mut seen = Vec::new();
    while let (true, Some(f)) = (seen.len() < 100, ada.next(QUIET).await) {
        seen.push(f);
    }
    let mut view = View::default();
    view.apply(&c, &first);
    for f in &seen {
        let Frame::Json(v) = f else {
            panic!("ada got {f:?} in {seen:?}")
        };
        view.apply(&c, v);
    }
    assert!(view.is(&set(&["ada", "dan"])), "{view:?} from {seen:?}");
    assert!(view.odd.is_empty(), "{view:?}");
    eprintln!("e2e: presence: a blink of {blink:?} reached ada as {seen:?}");
    if blink < BLINK {
        assert_eq!(
            seen,
            vec![Frame::Json(op(join(&c, "dan")))],
            "cy joined and left in one batch"
        );
    }
    join_all([ada.close(), dan.close()]).await;
}

async fn presence_a_burst_of_40_joins_and_40_leaves_is_followed_exactly(api: Api) {
    const BURST: usize = 40;
    let c = channel("pburst");
    let (mut obs, first) = ws_member(&api, &c, "obs").await;
    let mut view = View::default();
    view.apply(&c, &first);
    let subs: Vec<String> = (0..BURST).map(|i| format!("b{i:02}")).collect();
    let started = Instant::now();
    let crowd: Vec<LiveWs> = stream::iter(subs.clone())
        .map(|s| {
            let (api, c) = (api.clone(), c.clone());
            async move { ws_member(&api, &c, &s).await.0 }
        })
        .buffer_unordered(BURST)
        .collect()
        .await;
    let opened = started.elapsed();
    let mut want: BTreeSet<String> = subs.iter().cloned().collect();
    want.insert("obs".into());
    let joined = follow(&mut obs, &c, &mut view, &want, WAIT).await;
    assert!(joined, "after the joins: {:?}", view.members.keys());
    settle(&mut obs, &c, &mut view).await;
    assert!(
        view.is(&want),
        "nothing after the joins changes it: {view:?}"
    );
    let after_joins = (view.frames, view.diffs);

    join_all(crowd.into_iter().map(LiveWs::close)).await;
    let want = set(&["obs"]);
    let left = follow(&mut obs, &c, &mut view, &want, WAIT).await;
    assert!(left, "after the leaves: {:?}", view.members.keys());
    settle(&mut obs, &c, &mut view).await;
    assert!(
        view.is(&want),
        "nothing after the leaves changes it: {view:?}"
    );
    assert!(view.odd.is_empty(), "{:?}", view.odd);
    eprintln!(
        "e2e: presence: {BURST} joins (opened in {opened:?}) reached the observer in {} frames \
         ({} diffs), the leaves in {} ({} diffs)",
        after_joins.0 - 1,
        after_joins.1,
        view.frames - after_joins.0,
        view.diffs - after_joins.1
    );
    assert_eq!(listing(&api, &c).await, listed_subs(&c, &[("obs", 1)]));
    obs.close().await;
}

async fn presence_silent_presence_sockets_are_closed_4002_and_plain_ones_never(api: Api) {
    let c = channel("psweep");
    let (mut obs, first) = ws_member(&api, &c, "obs").await;
    let mut view = View::default();
    view.apply(&c, &first);
    let (mut mute, _) = ws_member(&api, &c, "mute").await;
    let multi_path = format!("/ws?channel={c}&presence=1");
    let (mut mute_many, _) = live_ws(&api, &multi_path, Some(&tok("mute2"))).await;
    let joined = follow(
        &mut obs,
        &c,
        &mut view,
        &set(&["mute", "mute2", "obs"]),
        WAIT,
    )
    .await;
    assert!(joined, "{view:?}");
    // Plain sockets that never ping, one channel and many.
    let (mut plain, _) = WsClient::subscribe(&api, &c, None, Some(&admin())).await;
    let plain_many = WsClient::open_stream(&api, &format!("/ws?channel={c}"), Some(&admin())).await;
    let mut plain_many = plain_many.unwrap_or_else(|r| panic!("{} {}", r.status, r.text()));
    assert_eq!(plain_many.next_json(WAIT).await["op"], "ready");

    mute.mute();
    mute_many.mute();
    let silent = Instant::now();
    for (what, ws) in [("/ws/{c}", &mut mute), ("/ws?channel=", &mut mute_many)] {
        let close = ws.until_closed(LEAVE_WAIT).await;
        let code = close.as_ref().and_then(|c| c.as_ref()).map(|c| c.0);
        assert_eq!(
            code,
            Some(4002),
            "{what}: a silent presence socket: {close:?}"
        );
        eprintln!(
            "e2e: presence: a silent {what} was closed {:?} after it stopped pinging",
            silent.elapsed()
        );
    }
    let left = follow(&mut obs, &c, &mut view, &set(&["obs"]), WAIT).await;
    assert!(left, "the silent ones leave: {view:?}");

    // Another sweep later: the pinging member and the plain sockets are all still there.
    tokio::time::sleep(Duration::from_secs(2 * SHARED_HEARTBEAT_SECONDS)).await;
    assert_eq!(publish(&api, &c, json!({"data": 1})).await, vec![1]);
    assert_eq!(
        frame_ids(&[obs.next_json(WAIT).await]),
        vec![1],
        "the pinging member"
    );
    for (what, ws) in [("plain", &mut plain), ("plain multi", &mut plain_many)] {
        assert_eq!(
            frame_ids(&ws.frames_through(1, WAIT).await),
            vec![1],
            "{what}"
        );
        assert!(ws.ping(WAIT).await, "{what} still answers");
    }
    assert_eq!(listing(&api, &c).await, listed_subs(&c, &[("obs", 1)]));
    join_all([plain.close(), plain_many.close()]).await;
    obs.close().await;
}

async fn presence_multi_ws_syncs_each_channel_and_follows_subscribe_and_unsubscribe(api: Api) {
    let (a, b, d) = (channel("pma"), channel("pmb"), channel("pmd"));
    let (mut on_a, _) = ws_member(&api, &a, "obs").await;
    let (mut on_d, _) = ws_member(&api, &d, "obs").await;
    let path = format!("/ws?channel={a}&channel={b}&presence=1");
    let (mut m, ready) = live_ws(&api, &path, Some(&tok("max"))).await;
    let mut heads = serde_json::Map::new();
    heads.insert(a.clone(), json!(0));
    heads.insert(b.clone(), json!(0));
    assert_eq!(ready["heads"], Value::Object(heads), "{ready}");
    let got = [m.next_json(WAIT).await, m.next_json(WAIT).await];
    let want = [op(syncs(&a, &["max", "obs"])), op(syncs(&b, &["max"]))];
    assert!(same_set(&got, &want), "a sync for each channel: {got:?}");
    expect(&mut on_a, op(join(&a, "max")), "max joins a").await;

    m.send(&json!({"op": "subscribe", "channel": d}));
    let subscribed = json!({"op": "subscribed", "channel": d, "head": 0});
    expect(&mut m, subscribed, "subscribe d").await;
    expect(&mut m, op(syncs(&d, &["max", "obs"])), "then d's sync").await;
    expect(&mut on_d, op(join(&d, "max")), "max joins d").await;

    m.send(&json!({"op": "unsubscribe", "channel": a}));
    expect(
        &mut m,
        json!({"op": "unsubscribed", "channel": a}),
        "unsubscribe a",
    )
    .await;
    expect(
        &mut on_a,
        op(leave(&a, "max")),
        "unsubscribing leaves a's presence",
    )
    .await;
    assert_eq!(publish(&api, &a, json!({"data": "a1"})).await, vec![1]);
    assert_eq!(publish(&api, &b, json!({"data": "b1"})).await, vec![1]);
    let e = m.next_json(WAIT).await;
    assert_eq!(
        (&e["op"], &e["channel"], &e["id"]),
        (&json!("event"), &json!(b), &json!(1))
    );
    quiet(&mut m, "max after b's event").await;
    for (ch, subs) in [
        (&a, vec![("obs", 1)]),
        (&b, vec![("max", 1)]),
        (&d, vec![("max", 1), ("obs", 1)]),
    ] {
        assert_eq!(listing(&api, ch).await, listed_subs(ch, &subs), "{ch}");
    }
    m.close().await;
    expect(&mut on_d, op(leave(&d, "max")), "max's socket closed").await;
    let e = on_a.next_json(WAIT).await;
    assert_eq!(
        (&e["op"], &e["id"]),
        (&json!("event"), &json!(1)),
        "a's event: {e}"
    );
    quiet(&mut on_a, "max had left a already").await;
    join_all([on_a.close(), on_d.close()]).await;
}

async fn presence_multi_sse_sends_presence_without_ids_naming_the_channel(api: Api) {
    let (a, b) = (channel("psa"), channel("psb"));
    assert_eq!(publish(&api, &a, json!({"data": 1})).await, vec![1]);
    let path = format!("/sse?channel={a}&channel={b}&presence=1");
    let mut s = sse(&api, &path, Some(&tok("max")), None).await;
    let start = s
        .next_id_only_block(WAIT)
        .await
        .expect("the opening id-only block");
    assert_eq!(start, format!("{a}=1,{b}=0"));
    let mut seen = vec![
        sse_presence(&mut s, "the first").await,
        sse_presence(&mut s, "the second").await,
    ];
    let got: Vec<Value> = seen.iter().map(SseEvent::json).collect();
    let want = [syncs(&a, &["max"]), syncs(&b, &["max"])];
    assert!(same_set(&got, &want), "a sync for each channel: {got:?}");

    let (bob, _) = ws_member(&api, &b, "bob").await;
    seen.push(sse_presence(&mut s, "bob joins b").await);
    assert_eq!(seen[2].json(), join(&b, "bob"));
    assert_eq!(publish(&api, &b, json!({"data": 1})).await, vec![1]);
    let e = s.next_event(WAIT).await.expect("b's event");
    let after = format!("{a}=1,{b}=1");
    assert_eq!(
        (e.json()["channel"].as_str(), e.last_event_id.as_str()),
        (Some(b.as_str()), after.as_str())
    );
    bob.close().await;
    seen.push(sse_presence(&mut s, "bob leaves b").await);
    assert_eq!(seen[3].json(), leave(&b, "bob"));
    let last_ids: Vec<&str> = seen.iter().map(|e| e.last_event_id.as_str()).collect();
    assert_eq!(
        last_ids,
        vec![start.as_str(), &start, &start, &after],
        "presence moves no cursor"
    );
    assert_eq!(s.parser.last_event_id, after);
    let wire = presence_on_the_wire(&s.raw).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wire, seen.iter().map(SseEvent::json).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&s.raw);
    let (opening, first) = (
        text.find(&format!("id: {start}")),
        text.find("event: presence"),
    );
    assert!(opening < first, "the id-only block comes first: {text:?}");
}

async fn presence_cap_refuses_only_new_members_with_409_presence_full(_: Api) {
    let hub = own_hub(&[("PRESENCE_MAX_MEMBERS", "2")]).await;
    let api = Api::new(hub.base());
    let (c, d, e) = (channel("pcap"), channel("pcapd"), channel("pcape"));
    let (mut ada, _) = ws_member(&api, &c, "ada").await;
    let (bob, first) = ws_member(&api, &c, "bob").await;
    assert_eq!(first, op(syncs(&c, &["ada", "bob"])));
    expect(&mut ada, op(join(&c, "bob")), "bob, the second member").await;
    for path in routes(&c, "1") {
        let r = answer(&api, &path, Some(&tok("cy"))).await;
        assert_problem(&r, 409, "presence_full", &format!("a third member: {path}"));
    }
    // Another connection of a member, and plain subscribers, are let in.
    let mut ada_sse = sse(
        &api,
        &format!("/sse/{c}?presence=1"),
        Some(&tok("ada")),
        None,
    )
    .await;
    let synced = sse_presence(&mut ada_sse, "ada's second connection").await;
    assert_eq!(synced.json(), syncs(&c, &["ada", "bob"]));
    for path in routes(&c, "0") {
        let status = answer(&api, &path, Some(&tok("cy"))).await.status;
        assert!(
            status == 200 || status == 101,
            "a plain subscriber: {path}: {status}"
        );
    }
    // On a multi-channel WebSocket, the refusal is an error frame and the socket goes on.
    let path = format!("/ws?channel={d}&presence=1");
    let (mut cy, _) = live_ws(&api, &path, Some(&tok("cy"))).await;
    expect(&mut cy, op(syncs(&d, &["cy"])), "cy on d").await;
    cy.send(&json!({"op": "subscribe", "channel": c}));
    let refused = cy.next_json(WAIT).await;
    let want = (json!("error"), json!(409), json!("presence_full"), json!(c));
    let got = (
        &refused["op"],
        &refused["status"],
        &refused["code"],
        &refused["channel"],
    );
    assert_eq!(got, (&want.0, &want.1, &want.2, &want.3), "{refused}");
    assert!(refused["detail"].is_string(), "{refused}");
    cy.send(&json!({"op": "subscribe", "channel": e}));
    let subscribed = json!({"op": "subscribed", "channel": e, "head": 0});
    expect(&mut cy, subscribed, "the socket goes on").await;
    expect(&mut cy, op(syncs(&e, &["cy"])), "e's sync").await;
    quiet(&mut ada, "nobody joined").await;
    assert_eq!(
        listing(&api, &c).await,
        listed_subs(&c, &[("ada", 2), ("bob", 1)])
    );

    // Once a member leaves, there is room.
    bob.close().await;
    expect(&mut ada, op(leave(&c, "bob")), "bob leaves").await;
    let (cy_c, first) = ws_member(&api, &c, "cy").await;
    assert_eq!(first, op(syncs(&c, &["ada", "cy"])));
    expect(&mut ada, op(join(&c, "cy")), "cy fits now").await;
    join_all([ada.close(), cy.close(), cy_c.close()]).await;
    drop(ada_sse);
    hub.cleanup().await;
}

/// Hibernation as live.rs finds it (the local runtime evicts an object ~10 s after its last
/// request): members stay members across it. The hub's heartbeat is 15 s here, so the WebSocket
/// member pings every 5 s and the sweep does not keep the object awake.
async fn presence_survives_hibernation_of_the_channel_object(_: Api) {
    const IDLE_TRIES: [u64; 3] = [15, 30, 75];
    const SLOW_PINGS: Duration = Duration::from_secs(5);
    let hub = own_hub(&[("HEARTBEAT_SECONDS", "15")]).await;
    let api = Api::new(hub.base());
    let c = channel("phib");
    let path = format!("/ws/{c}?presence=1");
    let mut ada = sse(
        &api,
        &path.replacen("/ws/", "/sse/", 1),
        Some(&tok("ada")),
        None,
    )
    .await;
    assert_eq!(
        sse_presence(&mut ada, "ada's sync").await.json(),
        syncs(&c, &["ada"])
    );
    let (mut bob, _) = LiveWs::open(&api, &path, Some(&tok("bob")), SLOW_PINGS, true)
        .await
        .unwrap_or_else(|r| panic!("bob: {} {}", r.status, r.text()));
    expect(&mut bob, op(syncs(&c, &["ada", "bob"])), "bob's sync").await;
    assert_eq!(
        sse_presence(&mut ada, "bob joins").await.json(),
        join(&c, "bob")
    );

    let mut before = info(&api, &c).await["object"]["instance"].clone();
    let mut evicted_after = None;
    for idle in IDLE_TRIES {
        tokio::time::sleep(Duration::from_secs(idle)).await;
        let after = info(&api, &c).await["object"]["instance"].clone();
        eprintln!("e2e: presence: hibernation: idle {idle} s: instance {before} -> {after}");
        if after != before {
            evicted_after = Some(idle);
            break;
        }
        before = after;
    }
    assert!(
        evicted_after.is_some(),
        "never evicted, even after {IDLE_TRIES:?} s idle"
    );

    let (mut cy, _) = LiveWs::open(&api, &path, Some(&tok("cy")), SLOW_PINGS, true)
        .await
        .unwrap_or_else(|r| panic!("cy: {} {}", r.status, r.text()));
    expect(
        &mut cy,
        op(syncs(&c, &["ada", "bob", "cy"])),
        "cy's sync after the wake",
    )
    .await;
    assert_eq!(
        sse_presence(&mut ada, "cy joins").await.json(),
        join(&c, "cy")
    );
    expect(&mut bob, op(join(&c, "cy")), "bob sees cy join").await;
    let all = listed_subs(&c, &[("ada", 1), ("bob", 1), ("cy", 1)]);
    assert_eq!(listing(&api, &c).await, all);
    assert_eq!(info(&api, &c).await["presence"], json!(3));
    bob.close().await;
    assert_eq!(
        sse_presence(&mut ada, "bob leaves").await.json(),
        leave(&c, "bob")
    );
    expect(&mut cy, op(leave(&c, "bob")), "cy sees bob leave").await;
    cy.close().await;
    drop(ada);
    hub.cleanup().await;
}

async fn presence_after_a_restart_lists_exactly_the_reconnected_members(_: Api) {
    let mut hub = own_hub(&[]).await;
    let api = Api::new(hub.base());
    let c = channel("prestart");
    let sse_path = format!("/sse/{c}?presence=1");
    let (mut ada, _) = ws_member(&api, &c, "ada").await;
    let mut bob = sse(&api, &sse_path, Some(&tok("bob")), None).await;
    assert_eq!(
        sse_presence(&mut bob, "bob's sync").await.json(),
        syncs(&c, &["ada", "bob"])
    );
    let (mut cy, first) = ws_member(&api, &c, "cy").await;
    assert_eq!(first, op(syncs(&c, &["ada", "bob", "cy"])));
    let all = listed_subs(&c, &[("ada", 1), ("bob", 1), ("cy", 1)]);
    assert_eq!(listing(&api, &c).await, all);

    let restarted = hub.restart().await;
    let api = Api::new(&restarted.unwrap_or_else(|why| panic!("restarting: {why}")));
    for (who, ws) in [("ada", &mut ada), ("cy", &mut cy)] {
        assert!(
            ws.until_closed(WAIT).await.is_some(),
            "{who}'s socket must close"
        );
    }
    bob.read_to_end(WAIT).await;
    assert!(bob.ended(), "bob's stream must end");

    // ada and bob come back, cy does not: nobody stale is left.
    let (mut ada, first) = ws_member(&api, &c, "ada").await;
    assert_eq!(
        first,
        op(syncs(&c, &["ada"])),
        "ada alone after the restart"
    );
    let mut bob = sse(&api, &sse_path, Some(&tok("bob")), None).await;
    assert_eq!(
        sse_presence(&mut bob, "bob's sync").await.json(),
        syncs(&c, &["ada", "bob"])
    );
    expect(&mut ada, op(join(&c, "bob")), "bob is back").await;
    let two = listed_subs(&c, &[("ada", 1), ("bob", 1)]);
    assert_eq!(listing(&api, &c).await, two);
    assert_eq!(info(&api, &c).await["presence"], json!(2));
    ada.close().await;
    drop(bob);
    hub.cleanup().await;
}

/// How many of `crowd` have closed, by close code (`-` for none sent).
fn closes(crowd: &mut [LiveWs]) -> BTreeMap<String, usize> {
    let mut by_code = BTreeMap::new();
    for close in crowd.iter_mut().filter_map(LiveWs::closed_now) {
        let code = close.map_or("-".to_string(), |c| c.0.to_string());
        *by_code.entry(code).or_insert(0) += 1;
    }
    by_code
}

/// What went wrong in the storm, if something does: the storm sockets closed, the channel
/// object's instance then and now, and what a sample was told since it knew everyone.
async fn diagnose(
    api: &Api,
    c: &str,
    instance_before: &Value,
    crowd: &mut [LiveWs],
    watchers: &mut [(LiveWs, View)],
) -> String {
    let instance = info(api, c).await["object"]["instance"].clone();
    let (ws, view) = &mut watchers[0];
    let told = view.story.len();
    settle(ws, c, view).await;
    format!(
        "storm sockets closed, by code: {:?}; the object instance {instance_before} -> \
         {instance}; a sample knows {} members, told since: {}",
        closes(crowd),
        view.members.len(),
        view.story[told..].join(" ")
    )
}

/// A plain (non-presence) subscriber of the storm's channel.
enum Plain {
    Sse(SseStream),
    Ws(WsClient),
}

/// Reads a plain subscriber's event ids until the id in `last` (0 while unknown) arrives, the
/// stream ends, or `wait` passes: what it is, the ids, and how the reading ended.
async fn read_plain(
    mut plain: Plain,
    last: Arc<AtomicU64>,
    wait: Duration,
) -> (&'static str, Vec<u64>, String) {
    let what = match plain {
        Plain::Sse(_) => "SSE",
        Plain::Ws(_) => "WS",
    };
    let (started, mut got) = (Instant::now(), Vec::new());
    let tick = Duration::from_secs(1);
    for _ in 0..1_000_000 {
        let want = last.load(Ordering::SeqCst);
        if want > 0 && got.last() == Some(&want) {
            break;
        }
        if started.elapsed() > wait {
            return (what, got, format!("still reading after {wait:?}"));
        }
        let (id, end) = match &mut plain {
            Plain::Sse(s) => match s.next_event(tick).await {
                Some(e) => (e.id(), None),
                None => (None, s.ended().then(|| "the stream ended".to_string())),
            },
            Plain::Ws(ws) => match ws.next(tick).await {
                Some(Frame::Json(v)) if v["op"] == "event" => (v["id"].as_u64(), None),
                Some(Frame::Closed(close)) => (None, Some(format!("closed {close:?}"))),
                _ => (None, None),
            },
        };
        got.extend(id);
        if let Some(end) = end {
            return (what, got, format!("{end} after {:?}", started.elapsed()));
        }
    }
    (what, got, "complete".to_string())
}

/// 1,000 WebSocket members join as fast as the test can open them while a publisher publishes
/// every 200 ms and plain SSE and WebSocket subscribers read: every publish is stored, every event
/// arrives in order, 20 of the members, following sync/join/leave/diff, each end up knowing all
/// 1,000, and all of them are still there after a sweep. The heartbeat is 20 s, so the crowd
/// pings every 7 s. `make test` runs it alone: beside another test, a client's pings were once
/// seen 40 s apart. Times are reported, not asserted.
async fn presence_join_storm_of_1000_members_while_events_flow(_: Api) {
    const MEMBERS: usize = 1000;
    const SAMPLE_EVERY: usize = 50;
    const CONNECT_CONCURRENCY: usize = 64;
    // 5 a second to 1,002 sockets is 5,000 deliveries a second, within what this runtime
    // delivers (scenario 2 of the bench); 20 a second is more, and piles up (p50 14 s).
    const PUBLISH_EVERY: Duration = Duration::from_millis(200);
    const STORM_WAIT: Duration = Duration::from_secs(120);
    const HEARTBEAT: u64 = 20;
    const CROWD_PINGS: Duration = Duration::from_secs(HEARTBEAT / 3);
    let heartbeat = HEARTBEAT.to_string();
    let hub = own_hub(&[
        ("HEARTBEAT_SECONDS", &heartbeat),
        ("RETAIN_EVENTS", "100000"),
    ])
    .await;
    let api = Api::new(hub.base());
    let c = channel("pstorm");
    let subs: Vec<String> = (0..MEMBERS).map(|i| format!("m{i:04}")).collect();
    let everyone: Arc<BTreeSet<String>> = Arc::new(subs.iter().cloned().collect());

    // Plain subscribers, SSE and WebSocket, read until the publisher's last id (0: not known yet).
    let last_id = Arc::new(AtomicU64::new(0));
    let plain_sse = sse(&api, &format!("/sse/{c}"), Some(&admin()), None).await;
    let (plain_ws, _) = WsClient::subscribe(&api, &c, None, Some(&admin())).await;
    let readers = [Plain::Sse(plain_sse), Plain::Ws(plain_ws)]
        .map(|p| tokio::spawn(read_plain(p, last_id.clone(), STORM_WAIT)));
    // A new one after the storm means the object was reloaded under it.
    let instance_before = info(&api, &c).await["object"]["instance"].clone();
    // A publish every 50 ms, each on its own (a slow one does not hold back the next).
    let stop = Arc::new(AtomicBool::new(false));
    let proxy_retries = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn({
        let (api, c, stop) = (api.clone(), c.clone(), stop.clone());
        let proxy_retries = proxy_retries.clone();
        async move {
            let (tok, mut sent) = (admin(), Vec::new());
            let mut tick = tokio::time::interval(PUBLISH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for i in 1..=10_000u64 {
                tick.tick().await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (api, c, tok) = (api.clone(), c.clone(), tok.clone());
                let proxy_retries = proxy_retries.clone();
                sent.push(tokio::spawn(async move {
                    let at = Instant::now();
                    let (body, key) = (json!({"data": {"i": i}}).to_string(), format!("storm-{i}"));
                    // `wrangler dev`'s own proxy answers this 503 when it loses the request on
                    // its way in (it does under 1,000-socket loads, with or without presence:
                    // docs/benchmarks.md); a client retries it with the same key, stored once.
                    let (r, retries) = publish_keyed_retrying(&api, &c, &body, &key, &tok).await;
                    proxy_retries.fetch_add(retries as u64, Ordering::SeqCst);
                    (at.elapsed(), r)
                }));
            }
            join_all(sent).await
        }
    });

    enum Opened {
        Crowd(LiveWs),
        Sample(tokio::task::JoinHandle<(LiveWs, View, Option<Duration>)>),
    }
    let started = Instant::now();
    let opened: Vec<Opened> = stream::iter(subs.iter().cloned().enumerate())
        .map(|(i, sub)| {
            let (api, c, everyone) = (api.clone(), c.clone(), everyone.clone());
            async move {
                let (path, sample) = (format!("/ws/{c}?presence=1"), i % SAMPLE_EVERY == 0);
                let t = member_token(&sub, None);
                let opened = LiveWs::open(&api, &path, Some(&t), CROWD_PINGS, sample).await;
                let (mut ws, _) =
                    opened.unwrap_or_else(|r| panic!("{sub}: {} {}", r.status, r.text()));
                if !sample {
                    return Opened::Crowd(ws);
                }
                Opened::Sample(tokio::spawn(async move {
                    let mut view = View::default();
                    let knows = follow(&mut ws, &c, &mut view, &everyone, STORM_WAIT).await;
                    (ws, view, knows.then(|| started.elapsed()))
                }))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let all_open = started.elapsed();
    let (mut crowd, mut samples) = (Vec::new(), Vec::new());
    for o in opened {
        match o {
            Opened::Crowd(ws) => crowd.push(ws),
            Opened::Sample(task) => samples.push(task),
        }
    }
    let (mut complete, mut watchers) = (Vec::new(), Vec::new());
    for task in samples {
        let (ws, view, knew) = task.await.expect("a sample's task");
        if knew.is_none() {
            let missing: Vec<&String> = everyone
                .iter()
                .filter(|s| !view.members.contains_key(*s))
                .collect();
            let count = listing_as_is(&api, &c).await["count"].clone();
            let closed = closes(&mut crowd);
            panic!(
                "a sample never knew everyone (the listing counts {count}; storm sockets closed: \
                 {closed:?}): {} missing {missing:?}; {} odd {:?}; what it was told: {}",
                missing.len(),
                view.odd.len(),
                view.odd,
                view.story.join(" ")
            );
        }
        eprintln!(
            "e2e: presence storm: a sample knew all after {knew:?}: {} frames ({} diffs), {} odd",
            view.frames,
            view.diffs,
            view.odd.len()
        );
        complete.extend(knew);
        watchers.push((ws, view));
    }
    let every_view = complete.iter().max().copied();
    // The object sweeps one heartbeat after the first member came: let one sweep pass.
    tokio::time::sleep_until((started + Duration::from_secs(HEARTBEAT * 3 / 2)).into()).await;
    let closed = closes(&mut crowd);
    assert!(
        closed.is_empty(),
        "storm sockets closed, by code: {closed:?}"
    );

    // A newcomer sees all 1,001 (itself last); the listing shows the first 1,000 and counts all.
    let (fresh, first) = ws_member(&api, &c, "zz-fresh").await;
    let mut members: Vec<Value> = subs
        .iter()
        .map(|s| json!({"sub": s, "info": null}))
        .collect();
    members.push(who("zz-fresh"));
    let want = op(sync(&c, &members));
    if first != want {
        let why = first_difference(&first, &want, "members");
        let state = diagnose(&api, &c, &instance_before, &mut crowd, &mut watchers).await;
        panic!("the newcomer's sync: {why}; {state}");
    }
    let crowd_listed: Vec<(Value, u64)> = members
        .iter()
        .take(MEMBERS)
        .map(|m| (m.clone(), 1))
        .collect();
    let mut want = listed(&c, &crowd_listed);
    want["count"] = json!(MEMBERS + 1);
    let got = listing(&api, &c).await;
    if got != want {
        let why = first_difference(&got, &want, "members");
        let state = diagnose(&api, &c, &instance_before, &mut crowd, &mut watchers).await;
        panic!("the listing with 1,001 members: {why}; {state}");
    }
    assert_eq!(info(&api, &c).await["presence"], json!(MEMBERS + 1));
    fresh.close().await;
    let want = listed(&c, &crowd_listed);
    let got = listing_becomes(&api, &c, &want, WAIT).await;
    let why = first_difference(&got, &want, "members");
    assert!(got == want, "the listing after the newcomer left: {why}");

    stop.store(true, Ordering::SeqCst);
    let answers = publisher.await.expect("the publisher");
    let (mut latencies, mut stored, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for (took, r) in answers.into_iter().map(|a| a.expect("a publish")) {
        latencies.push(took);
        match ids(&r.json()).as_slice() {
            // 200: a keyed retry of one the proxy lost after it was stored.
            [id] if r.status == 201 || r.status == 200 => stored.push(*id),
            _ => refused.push(format!("{} after {took:.1?}: {}", r.status, r.text())),
        }
    }
    stored.sort();
    let published = stored.last().copied().unwrap_or(0);
    last_id.store(published, Ordering::SeqCst);
    let mut read = Vec::new();
    for reader in readers {
        read.push(reader.await.expect("a plain reader"));
    }
    let brief: Vec<String> = read
        .iter()
        .map(|(what, got, end)| {
            format!(
                "{what}: {} ids, the last {:?}, {end}",
                got.len(),
                got.last()
            )
        })
        .collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    eprintln!(
        "e2e: presence storm: {MEMBERS} members open after {all_open:?}; every sample knew all \
         after {every_view:?}; {} publishes ({} retries of the dev proxy's 503), latency p50 \
         {:?} p99 {:?} max {:?}",
        latencies.len(),
        proxy_retries.load(Ordering::SeqCst),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    let times: Vec<&str> = refused.iter().filter_map(|r| r.split(':').next()).collect();
    let instance = info(&api, &c).await["object"]["instance"].clone();
    let summary = format!(
        "{} publishes answered 201 (ids up to {published}), {} not (the first: {:?}; all: \
         {times:?}); the plain subscribers: {brief:?}; the channel's object instance {} -> \
         {instance}",
        stored.len(),
        refused.len(),
        refused.first(),
        instance_before
    );
    assert!(
        refused.is_empty(),
        "publishes refused during the storm: {summary}"
    );
    let want: Vec<u64> = (1..=published).collect();
    assert_eq!(stored, want, "the ids given: {summary}");
    for (what, got, end) in read {
        assert!(
            got == want,
            "the plain {what} subscriber got {got:?} of 1..={published}, {end}"
        );
    }

    drop((crowd, watchers));
    hub.cleanup().await;
}
