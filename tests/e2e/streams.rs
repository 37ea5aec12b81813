//! Many channels on one connection (docs/API.md#streams): `GET /poll`, `/sse` and `/ws` with
//! `?channel=a&channel=b…`. The multi-channel poll's round-robin pages and stream cursor `next`
//! (paging, channels left out of `since`, raw and encoded forms), ETag/304 and per-channel gaps
//! (also on SSE and WS); the refusals at the door on all three routes (channel set, `since`,
//! `Last-Event-ID`: 400; rights: 401, 403 naming the channel; all-public anonymous works); SSE's
//! opening id-only block and each event's `id:` as the whole stream cursor, resumed with
//! `Last-Event-ID` exactly once (also from the opening block alone); WebSocket `ready` with
//! `heads`, `subscribe`/`unsubscribe`/`publish`/`cursor` frames, rights and `MAX_STREAM_CHANNELS`
//! per subscribe, a resume with `since=<cursor>`, changes to the set while events flow; and a
//! restart of the hub ending both, resumed from the cursor exactly once; 100 channels on one
//! SSE stream and one WebSocket, whose lanes leave with them; token expiry; slow clients let go
//! while others get everything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{admin, channel, client, ids, is_utc_millis, token, Api, Resp};
use crate::publish::{assert_problem, head};
use crate::retention::own_hub;
use crate::sse_client::SseStream;
use crate::sse_parser::{Item, Parser, SseEvent};
use crate::ws_client::{Frame, WsClient};
use crate::{case, case_no_hub, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case_no_hub!(stream_sse_parser_keeps_the_id_of_id_only_blocks),
        case!(stream_poll_round_robin_paging_cursor_and_etag),
        case_own_hub!(stream_gaps_name_only_the_channels_behind),
        case!(stream_bad_sets_and_cursors_are_400_on_poll_sse_and_ws),
        case!(stream_rights_are_401_or_403_naming_the_channel_and_public_is_open),
        case!(stream_sse_ids_are_the_stream_cursor_and_resume_exactly_once),
        case!(stream_sse_from_now_resumes_from_its_opening_id_block),
        case!(stream_ws_ready_replay_live_subscribe_unsubscribe_publish_cursor),
        case!(stream_ws_rights_are_checked_on_every_subscribe),
        case_own_hub!(stream_ws_subscribes_beyond_max_stream_channels_are_400),
        case!(stream_ws_resumes_with_the_stream_cursor_exactly_once),
        case!(stream_ws_set_changes_while_events_flow_keep_each_channel_contiguous),
        case_own_hub!(stream_restart_ends_sse_and_ws_and_the_cursor_resumes_exactly_once),
        case!(stream_a_hundred_channels_on_one_sse_and_one_ws_and_every_lane_leaves_with_them),
        case!(stream_sse_and_ws_end_when_their_token_expires),
        case!(stream_a_purge_changes_nothing_live_and_an_older_cursor_gets_the_gap),
        case_own_hub!(stream_slow_clients_are_let_go_others_get_everything_and_they_resume),
    ]
}

pub(crate) const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(700);
const PREAMBLE: &str = "retry: 2000\n: edgehub stream open\n\n";
const HEARTBEAT: &str = ": heartbeat\n\n";
const ROUTES: [&str; 3] = ["/poll", "/sse", "/ws"];

/// `(channel, id)` of events, in the order received.
pub(crate) type Pairs = Vec<(String, u64)>;

/// A stream cursor: every channel's position, in the stream's order (`a=1,b=2`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor(pub(crate) Vec<(String, u64)>);

impl Cursor {
    pub(crate) fn parse(text: &str) -> Cursor {
        let pair = |p: &str| {
            let (c, id) = p.rsplit_once('=')?;
            Some((c.to_string(), id.parse().ok()?))
        };
        let pairs = text.split(',').map(pair).collect::<Option<Vec<_>>>();
        Cursor(pairs.unwrap_or_else(|| panic!("not a stream cursor: {text:?}")))
    }
    pub(crate) fn get(&self, c: &str) -> u64 {
        self.0.iter().find(|(n, _)| n == c).map_or(0, |p| p.1)
    }
    fn set(&mut self, c: &str, id: u64) {
        match self.0.iter_mut().find(|(n, _)| n == c) {
            Some(p) => p.1 = id,
            None => self.0.push((c.to_string(), id)),
        }
    }
    /// Moved past every event of `got`.
    fn after(&self, got: &[(String, u64)]) -> Cursor {
        let mut next = self.clone();
        got.iter().for_each(|(c, id)| next.set(c, *id));
        next
    }
    pub(crate) fn text(&self) -> String {
        let pairs: Vec<String> = self.0.iter().map(|(c, id)| format!("{c}={id}")).collect();
        pairs.join(",")
    }
    /// Percent-encoded, for `since=` in a URL.
    pub(crate) fn url(&self) -> String {
        let t = self.text();
        t.replace(':', "%3A")
            .replace('=', "%3D")
            .replace(',', "%2C")
    }
    /// True once every channel of `to` is at or past its position there.
    fn reached(&self, to: &Cursor) -> bool {
        to.0.iter().all(|(c, id)| self.get(c) >= *id)
    }
    /// `{"a": 1, "b": 2}`, as `ready.heads` shows it.
    fn heads(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(c, id)| (c.clone(), json!(id)))
                .collect(),
        )
    }
}

/// The cursor with `chans` at `ids`.
pub(crate) fn cur(chans: &[String], ids: &[u64]) -> Cursor {
    Cursor(chans.iter().cloned().zip(ids.iter().copied()).collect())
}

/// `n` fresh channel names, `e2e-<what><i>-…`.
pub(crate) fn names(what: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| channel(&format!("{what}{i}"))).collect()
}

/// The `id:` of the stream's next id-only block (its opening one, first).
pub(crate) async fn opening(s: &mut SseStream) -> String {
    let id = s.next_id_only_block(WAIT).await;
    id.unwrap_or_else(|| panic!("no id-only block: {:?}", String::from_utf8_lossy(&s.raw)))
}

pub(crate) fn query(chans: &[String]) -> String {
    let parts: Vec<String> = chans.iter().map(|c| format!("channel={c}")).collect();
    parts.join("&")
}

/// Publishes `n` events on `c` in one batch, `{"c": c, "i": 1..=n}`, every second one of type
/// `t.even`; returns their ids.
pub(crate) async fn publish_n(api: &Api, c: &str, n: u64) -> Vec<u64> {
    let event = |i: u64| match i % 2 {
        0 => json!({"type": "t.even", "data": {"c": c, "i": i}}),
        _ => json!({"data": {"c": c, "i": i}}),
    };
    let batch = Value::Array((1..=n).map(event).collect());
    let r = api.publish(c, &batch, &admin()).await;
    let got = ids(&r.json());
    let ok = r.status == 201 && got.len() == n as usize;
    assert!(ok, "publish {n} on {c}: {}", r.text());
    got
}

/// The envelopes' `(channel, id)`: poll `events`, or WS frames whose `op` is `event`.
pub(crate) fn pairs(envelopes: &[Value]) -> Pairs {
    let is_event = |e: &&Value| e.get("op").is_none_or(|op| op == "event");
    let channel = |e: &Value| e["channel"].as_str().unwrap_or("?").to_string();
    let pair = |e: &Value| (channel(e), e["id"].as_u64().unwrap_or(0));
    envelopes.iter().filter(is_event).map(pair).collect()
}

fn page_pairs(page: &Value) -> Pairs {
    pairs(page["events"].as_array().map_or(&[], Vec::as_slice))
}

pub(crate) fn sse_pairs(events: &[SseEvent]) -> Pairs {
    let envelopes = events
        .iter()
        .filter(|e| e.kind != "gap")
        .map(SseEvent::json);
    pairs(&envelopes.collect::<Vec<_>>())
}

fn jsons(frames: Vec<Frame>) -> Vec<Value> {
    let json = |f| match f {
        Frame::Json(v) => v,
        other => panic!("an unexpected frame {other:?}"),
    };
    frames.into_iter().map(json).collect()
}

/// The documented page order: the first event after each channel's position (in the set's
/// order), then the second of each, and so on, cut at `limit`.
fn round_robin(from: &Cursor, to: &Cursor, limit: usize) -> Pairs {
    let rounds = to.0.iter().map(|p| p.1).max().unwrap_or(0);
    let mut out = Vec::new();
    for r in 1..=rounds {
        for (c, head) in &to.0 {
            let id = from.get(c) + r;
            if id <= *head {
                out.push((c.clone(), id));
            }
        }
    }
    out.truncate(limit);
    out
}

/// `got` (in arrival order) holds, for each channel, exactly the ids after `from` through `to`,
/// in id order, and nothing of any other channel.
pub(crate) fn once(what: &str, got: &[(String, u64)], from: &Cursor, to: &Cursor) {
    for (c, last) in &to.0 {
        let seen: Vec<u64> = got.iter().filter(|(n, _)| n == c).map(|p| p.1).collect();
        let want: Vec<u64> = (from.get(c) + 1..=*last).collect();
        assert_eq!(seen, want, "{what}: the ids of channel {c}");
    }
    let outside = got.iter().filter(|(n, _)| to.0.iter().all(|(c, _)| c != n));
    let outside: Vec<_> = outside.collect();
    assert!(outside.is_empty(), "{what}: others {outside:?}");
}

async fn poll_ok(api: &Api, q: &str, since: Option<&str>, limit: Option<u32>) -> Value {
    let mut path = format!("/poll?{q}");
    if let Some(s) = since {
        path.push_str(&format!("&since={s}"));
    }
    if let Some(l) = limit {
        path.push_str(&format!("&limit={l}"));
    }
    let r = api.get(&path, Some(&admin())).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

async fn get_if_none_match(api: &Api, path: &str, etag: &str) -> Resp {
    let req = client()
        .get(format!("{}{path}", api.base))
        .bearer_auth(admin());
    api.send(req.header("if-none-match", etag)).await
}

pub(crate) async fn open_sse(api: &Api, path: &str, last_id: Option<&str>) -> SseStream {
    let auth = format!("Bearer {}", admin());
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(last_id.map(|l| ("last-event-id", l)));
    let opened = SseStream::open(api, path, &headers).await;
    opened.unwrap_or_else(|r| panic!("GET {path}: {} {}", r.status, r.text()))
}

/// Reads a multi-channel SSE stream until `cursor` reaches `to` (or the stream ends, or `wait`
/// passes). Each event's `id:` must be the stream cursor after it (`cursor` moves along), its
/// `data:` the envelope, its `event:` the envelope's type. Returns the events, gaps included.
pub(crate) async fn sse_until(
    s: &mut SseStream,
    cursor: &mut Cursor,
    to: &Cursor,
) -> Vec<SseEvent> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while !cursor.reached(to) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(e) = s.next_event(left).await else {
            break;
        };
        if e.kind != "gap" {
            let env = e.json();
            let (Some(c), Some(id)) = (env["channel"].as_str(), env["id"].as_u64()) else {
                panic!("an SSE event whose data is not an envelope: {e:?}");
            };
            cursor.set(c, id);
            assert_eq!(e.last_event_id, cursor.text(), "the id: line of {env}");
            assert_eq!(json!(e.kind), env["type"], "the event: line of {env}");
            assert!(is_utc_millis(env["time"].as_str().unwrap_or("")), "{env}");
        }
        got.push(e);
    }
    got
}

/// Opens a multi-channel WebSocket and reads its first frame, which must be `ready`.
pub(crate) async fn open_ws(api: &Api, path: &str, tok: Option<&str>) -> (WsClient, Value) {
    let opened = WsClient::open_stream(api, path, tok).await;
    let mut ws = opened.unwrap_or_else(|r| panic!("upgrade {path}: {} {}", r.status, r.text()));
    let ready = ws.next_json(WAIT).await;
    assert_eq!(ready["op"], "ready", "first frame on {path}: {ready}");
    (ws, ready)
}

/// JSON frames until every channel of `to` had an event at or past its id there, the socket
/// closed, or `WAIT` passed.
pub(crate) async fn ws_until(ws: &mut WsClient, to: &Cursor) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    let (mut seen, mut got) = (Cursor(Vec::new()), Vec::new());
    while !seen.reached(to) {
        match ws
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Frame::Json(v)) => {
                seen = seen.after(&pairs(std::slice::from_ref(&v)));
                got.push(v);
            }
            None | Some(Frame::Closed(_)) => break,
            Some(other) => panic!("an unexpected frame {other:?} after {got:?}"),
        }
    }
    got
}

/// Every frame that arrives within `QUIET` of the last one (at most 1,000).
async fn ws_quiet(ws: &mut WsClient) -> Vec<Frame> {
    let mut got = Vec::new();
    while let (true, Some(f)) = (got.len() < 1000, ws.next(QUIET).await) {
        got.push(f);
    }
    got
}

/// Sends `frame`; the next frame must be `op` naming the frame's channel.
async fn ask(ws: &mut WsClient, frame: Value, op: &str, what: &str) -> Value {
    ws.send_json(&frame).await;
    let f = ws.next_json(WAIT).await;
    let want = (&json!(op), &frame["channel"]);
    assert_eq!((&f["op"], &f["channel"]), want, "{what}: {f}");
    f
}

/// Sends `frame`; the next frame must be an `error` naming its channel, with this status and
/// code, and the socket must stay usable.
pub(crate) async fn refuse(
    ws: &mut WsClient,
    frame: Value,
    status: u16,
    code: &str,
    what: &str,
) -> Value {
    let e = ask(ws, frame, "error", what).await;
    let want = (&json!(status), &json!(code));
    assert_eq!((&e["status"], &e["code"]), want, "{what}: {e}");
    assert!(ws.ping(WAIT).await, "{what}: the socket must stay usable");
    e
}

fn sub(c: &str) -> Value {
    json!({"op": "subscribe", "channel": c})
}

fn unsub(c: &str) -> Value {
    json!({"op": "unsubscribe", "channel": c})
}

/// `route?q` as a poll, SSE or WebSocket client opens it: a refusal whole, a success as a bare
/// status (200 or 101), so `assert_problem` reports it.
async fn answer(api: &Api, route: &str, q: &str, tok: Option<&str>, last: Option<&str>) -> Resp {
    let path = if q.is_empty() {
        route.to_string()
    } else {
        format!("{route}?{q}")
    };
    let opened = |status| Resp {
        status,
        headers: reqwest::header::HeaderMap::new(),
        body: b"(opened)".to_vec(),
    };
    let auth = tok.map(|t| format!("Bearer {t}"));
    let auth = auth.iter().map(|a| ("authorization", a.as_str()));
    let headers: Vec<(&str, &str)> = auth.chain(last.map(|l| ("last-event-id", l))).collect();
    match route {
        "/poll" => api.get(&path, tok).await,
        "/sse" => SseStream::open(api, &path, &headers)
            .await
            .map_or_else(|r| r, |_| opened(200)),
        _ => WsClient::open(api, &path, tok)
            .await
            .map_or_else(|r| r, |_| opened(101)),
    }
}

async fn stream_sse_parser_keeps_the_id_of_id_only_blocks(_: Api) {
    let input = b"retry: 2000\n: edgehub stream open\n\nid: a=1,b=0\n\nid: a=2,b=0\ndata: {}\n\n";
    let (mut whole, mut bytewise) = (Parser::default(), Parser::default());
    let items = whole.feed(input);
    let items_bytewise: Vec<Item> = input.iter().flat_map(|b| bytewise.feed(&[*b])).collect();
    assert_eq!(items, items_bytewise, "chunking changed the result");
    for p in [&whole, &bytewise] {
        assert_eq!(p.id_only_blocks, vec!["a=1,b=0".to_string()]);
        assert_eq!(p.last_event_id, "a=2,b=0");
    }
    let events = items.iter().filter(|i| matches!(i, Item::Event(_))).count();
    assert_eq!(events, 1, "the id-only block dispatches nothing: {items:?}");
    // An `event:` line does not make an id-only block an event; a block cut off by the end of
    // the stream is not one; an id with NUL is ignored.
    let mut p = Parser::default();
    let items = p.feed(b"id: s=3\n\nevent: x\nid: s=4\n\nid: s\0\n\nid: s=5\n");
    assert_eq!(items, vec![]);
    p.finish();
    p.feed(b"\n");
    assert_eq!(p.id_only_blocks, vec!["s=3".to_string(), "s=4".to_string()]);
}

async fn stream_poll_round_robin_paging_cursor_and_etag(api: Api) {
    let chans = names("spoll", 3);
    let heads = [5, 3, 1];
    for (c, n) in chans.iter().zip(heads) {
        publish_n(&api, c, n).await;
        assert_eq!(api.await_mirror(c, n).await, n, "the mirror of {c}");
    }
    let (q, zero, top) = (query(&chans), cur(&chans, &[0; 3]), cur(&chans, &heads));

    let page = poll_ok(&api, &q, Some("0"), None).await;
    let want = round_robin(&zero, &top, 100);
    assert_eq!(page_pairs(&page), want, "since=0: {page}");
    assert_eq!(page["next"], json!(top.text()), "{page}");
    assert_eq!(page["more"], json!(false), "{page}");
    assert!(page.get("gaps").is_none(), "no gaps: {page}");
    for e in page["events"].as_array().into_iter().flatten() {
        let i = e["id"].as_u64().unwrap_or(0);
        let kind = json!(if i % 2 == 0 { "t.even" } else { "message" });
        let data = json!({"c": e["channel"], "i": i});
        assert!(e["data"] == data && e["type"] == kind, "{e}");
        assert!(is_utc_millis(e["time"].as_str().unwrap_or("")), "{e}");
    }

    // Pages of 4 (the first cut inside channel a), following `next` until `more` is false.
    let (mut cursor, mut got, mut pages) = (zero.clone(), Vec::new(), 0);
    for _ in 0..10 {
        let page = poll_ok(&api, &q, Some(&cursor.url()), Some(4)).await;
        let want = round_robin(&cursor, &top, 4);
        let at = format!("page {pages} from {}: {page}", cursor.text());
        assert_eq!(page_pairs(&page), want, "{at}");
        let next = Cursor::parse(page["next"].as_str().unwrap_or(""));
        assert_eq!(next, cursor.after(&want), "`next` of {at}");
        assert_eq!(page["more"], json!(next != top), "`more` of {at}");
        (cursor, pages) = (next, pages + 1);
        got.extend(want);
        if page["more"] != json!(true) {
            break;
        }
    }
    assert_eq!(pages, 3, "9 events at limit 4 are 3 pages");
    once("paging at limit 4", &got, &zero, &top);

    // A channel the cursor leaves out starts from now on; so does every channel without since.
    let only_a = cur(&chans[..1], &[0]).url();
    let page = poll_ok(&api, &q, Some(&only_a), None).await;
    let want: Pairs = (1..=5).map(|i| (chans[0].clone(), i)).collect();
    assert_eq!(page_pairs(&page), want, "since names a only: {page}");
    assert_eq!(page["next"], json!(top.text()), "{page}");
    let page = poll_ok(&api, &q, None, None).await;
    assert_eq!(page_pairs(&page), vec![], "without since: {page}");
    assert_eq!(page["next"], json!(top.text()), "{page}");
    // The raw form of the cursor is read as the encoded one.
    let mid = cur(&chans, &[2, 1, 1]);
    let raw = poll_ok(&api, &q, Some(&mid.text()), None).await;
    let encoded = poll_ok(&api, &q, Some(&mid.url()), None).await;
    let want = round_robin(&mid, &top, 100);
    assert_eq!(page_pairs(&raw), want, "raw since: {raw}");
    assert_eq!(raw["events"], encoded["events"]);
    assert_eq!(raw["next"], encoded["next"]);

    // ETag: the same poll with If-None-Match is a 304 until a new event is mirrored.
    let path = format!("/poll?{q}&since=0");
    let first = api.get(&path, Some(&admin())).await;
    let etag = first.header("etag").unwrap_or_default();
    assert!(first.status == 200 && !etag.is_empty(), "{first:?}");
    let again = get_if_none_match(&api, &path, &etag).await;
    assert_eq!(again.status, 304, "If-None-Match: {}", again.text());
    assert!(again.body.is_empty(), "a 304 has no body");
    assert_eq!(publish_n(&api, &chans[1], 1).await, vec![4]);
    assert_eq!(api.await_mirror(&chans[1], 4).await, 4);
    let started = Instant::now();
    let mut last = get_if_none_match(&api, &path, &etag).await;
    while last.status == 304 && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = get_if_none_match(&api, &path, &etag).await;
    }
    assert_eq!(last.status, 200, "after a publish: {}", last.text());
    let b4 = (chans[1].clone(), 4);
    assert!(page_pairs(&last.json()).contains(&b4), "{}", last.text());
    assert_ne!(last.header("etag"), Some(etag), "the ETag must change");
}

async fn stream_gaps_name_only_the_channels_behind(_: Api) {
    let hub = own_hub(&[("RETAIN_EVENTS", "5")]).await;
    let api = Api::new(hub.base());
    let chans = names("sgap", 3);
    let heads = [10, 3, 10];
    for (c, n) in chans.iter().zip(heads) {
        publish_n(&api, c, n).await;
        assert_eq!(api.await_mirror(c, n).await, n, "the mirror of {c}");
    }
    let (q, top) = (query(&chans), cur(&chans, &heads));
    let gap = |i: usize, since| json!({"channel": chans[i], "requested": since, "earliest": 6});
    // (since, its gaps, where each channel's events start)
    let cases = [
        ([2, 0, 7], vec![gap(0, 2)], [5, 0, 7]),
        ([0, 0, 0], vec![gap(0, 0), gap(2, 0)], [5, 0, 5]),
    ];
    for (since, gaps, from) in &cases {
        let (since, from) = (cur(&chans, since), cur(&chans, from));
        let (want, started) = (round_robin(&from, &top, 100), Instant::now());
        let page = loop {
            // The mirror prunes with each publish; wait (bounded) until it shows it.
            let page = poll_ok(&api, &q, Some(&since.url()), None).await;
            if page_pairs(&page) == want || started.elapsed() > WAIT {
                break page;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let what = format!("poll since={}: {page}", since.text());
        assert_eq!(page_pairs(&page), want, "{what}");
        let mut got: Vec<Value> = page["gaps"].as_array().cloned().unwrap_or_default();
        got.sort_by_key(|g| g["channel"].as_str().map(str::to_string));
        assert_eq!(&got, gaps, "gaps of {what}");
        assert_eq!(page["next"], json!(top.text()), "{what}");
    }

    // SSE and WebSocket name the channel of their gap too, before what it retains.
    let (since, want_gap) = (cur(&chans, &[2, 0, 7]), &cases[0].1[0]);
    let retained = cur(&chans, &[5, 0, 7]);
    let path = format!("/sse?{q}&since={}", since.url());
    let mut s = open_sse(&api, &path, None).await;
    let events = sse_until(&mut s, &mut since.clone(), &top).await;
    let is_gap = |e: &&SseEvent| e.kind == "gap";
    let gaps: Vec<Value> = events.iter().filter(is_gap).map(SseEvent::json).collect();
    assert_eq!(gaps, vec![want_gap.clone()], "SSE gaps: {events:?}");
    let gap_at = events.iter().position(|e| e.kind == "gap");
    let is_a = |e: &SseEvent| e.kind != "gap" && e.json()["channel"] == json!(chans[0]);
    let (a_at, got) = (events.iter().position(is_a), sse_pairs(&events));
    assert!(gap_at < a_at, "SSE: the gap first: {events:?}");
    once("SSE after a gap", &got, &retained, &top);
    let path = format!("/ws?{q}&since={}", since.url());
    let (mut ws, _) = open_ws(&api, &path, Some(&admin())).await;
    let frames = ws_until(&mut ws, &top).await;
    let mut gap_frame = want_gap.clone();
    gap_frame["op"] = json!("gap");
    let gaps: Vec<&Value> = frames.iter().filter(|f| f["op"] == "gap").collect();
    assert_eq!(gaps, vec![&gap_frame], "WS gaps: {frames:?}");
    let gap_at = frames.iter().position(|f| f["op"] == "gap");
    let is_a = |f: &Value| f["op"] == "event" && f["channel"] == json!(chans[0]);
    let a_at = frames.iter().position(is_a);
    assert!(gap_at < a_at, "WS: the gap first: {frames:?}");
    once("WS after a gap", &pairs(&frames), &retained, &top);
    ws.close().await;
    hub.cleanup().await;
}

async fn stream_bad_sets_and_cursors_are_400_on_poll_sse_and_ws(api: Api) {
    let [a, b] = [channel("sbad-a"), channel("sbad-b")];
    let ab = format!("channel={a}&channel={b}");
    let over: Vec<String> = (0..101).map(|i| format!("channel={a}-{i}")).collect();
    let cases = [
        (String::new(), "no channel"),
        ("since=0".to_string(), "no channel, a since"),
        (format!("channel={a}&channel={a}"), "a channel named twice"),
        (over.join("&"), "101 channels"),
        (format!("{ab}&channel=x%2Fy"), "an encoded slash"),
        (format!("channel=-{a}"), "a leading dash"),
        ("channel=".to_string(), "an empty name"),
        (format!("channel={a}%20x"), "a space"),
        (format!("{ab}&since=x"), "since=x"),
        (format!("{ab}&since="), "an empty since"),
        (format!("{ab}&since=5"), "a single number other than 0"),
        (format!("{ab}&since={a}"), "a pair without ="),
        (format!("{ab}&since={a}%3D-1"), "a negative id"),
        (format!("{ab}&since={a}%3D1.5"), "a fractional id"),
        (format!("{ab}&since={a}%3D9007199254740992"), "too large"),
        (format!("{ab}&since={a}%3D1%2C"), "a trailing comma"),
        (format!("{ab}&since={a}%3D1%2C{a}%3D2"), "a repeated pair"),
        (format!("{ab}&since=zz%3D1"), "a pair off the set"),
    ];
    let tok = admin();
    for route in ROUTES {
        for (q, what) in &cases {
            let r = answer(&api, route, q, Some(&tok), None).await;
            assert_problem(&r, 400, "bad_request", &format!("{route}: {what}"));
        }
    }
    let off = [
        format!("{a}=1,zz=1"),
        format!("{a}=1,{a}=2"),
        format!("{a}=-1"),
    ];
    for bad in ["5", "x", &off[0], &off[1], &off[2]] {
        let r = answer(&api, "/sse", &ab, Some(&tok), Some(bad)).await;
        let what = format!("/sse Last-Event-ID {bad:?}");
        assert_problem(&r, 400, "bad_request", &what);
    }
    // 100 distinct channels are allowed; the cursor names each, in the set's order.
    let hundred: Vec<String> = (0..100).map(|i| format!("{a}-{i}")).collect();
    let page = poll_ok(&api, &query(&hundred), Some("0"), None).await;
    let next = cur(&hundred, &[0; 100]).text();
    assert_eq!(page["next"], json!(next), "{page}");
    assert_eq!(page_pairs(&page), vec![], "{page}");
}

async fn stream_rights_are_401_or_403_naming_the_channel_and_public_is_open(api: Api) {
    let [a, b, c] = [channel("sau-one"), channel("sau-two"), channel("sau-three")];
    let q = format!("channel={a}&channel={b}&channel={c}");
    let only_a = token(&[], &[&a], 600);
    let public = [channel("sau-p"), channel("sau-q")].map(|c| format!("public:{c}"));
    let public_q = query(&public);
    for route in ROUTES {
        let refused = |r: &Resp, status, code, what: &str| {
            assert_problem(r, status, code, &format!("{route}: {what}"));
        };
        let r = answer(&api, route, &q, Some(&only_a), None).await;
        refused(&r, 403, "forbidden", "a token for a only");
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
        let names_b = detail.contains(&b) && !detail.contains(&c);
        assert!(names_b, "{route}: names b, the first refused: {detail:?}");
        // Auth comes before since, the channel set before auth.
        let r = answer(&api, route, &format!("{q}&since=x"), Some(&only_a), None).await;
        refused(&r, 403, "forbidden", "a token for a only and since=x");
        let r = answer(&api, route, &format!("channel={a}&channel={a}"), None, None).await;
        refused(&r, 400, "bad_request", "anonymous, a repeated channel");
        let r = answer(&api, route, &q, None, None).await;
        refused(&r, 401, "unauthorized", "anonymous");
        let r = answer(&api, route, &format!("{public_q}&channel={a}"), None, None).await;
        refused(&r, 401, "unauthorized", "anonymous, public and not");
    }
    // Anonymous on public channels only: every route works.
    let start = cur(&public, &[0, 0]);
    let r = api.get(&format!("/poll?{public_q}&since=0"), None).await;
    assert_eq!(r.status, 200, "anonymous poll: {}", r.text());
    assert_eq!(r.json()["next"], json!(start.text()), "{}", r.text());
    let opened = SseStream::open(&api, &format!("/sse?{public_q}"), &[]).await;
    let mut s = opened.unwrap_or_else(|r| panic!("anonymous SSE: {}", r.text()));
    assert_eq!(opening(&mut s).await, start.text(), "anonymous SSE");
    let (ws, ready) = open_ws(&api, &format!("/ws?{public_q}"), None).await;
    assert_eq!(ready["heads"], start.heads(), "{ready}");
    ws.close().await;
    // A query token works as on v1.
    let short = token(&[], &[&a, &b, &c], 120);
    let r = api.get(&format!("/poll?{q}&token={short}"), None).await;
    assert_eq!(r.status, 200, "a query token: {}", r.text());
}

async fn stream_sse_ids_are_the_stream_cursor_and_resume_exactly_once(api: Api) {
    let chans = names("ssse", 2);
    let (a, b, q) = (&chans[0], &chans[1], query(&chans));
    publish_n(&api, a, 2).await;
    let mut s = open_sse(&api, &format!("/sse?{q}"), None).await;
    let kind = s.header("content-type");
    assert_eq!(kind.as_deref(), Some("text/event-stream"));
    let start = cur(&chans, &[2, 0]);
    assert_eq!(opening(&mut s).await, start.text(), "the opening block");
    let wire = String::from_utf8_lossy(&s.raw).replace(HEARTBEAT, "");
    let first = format!("{PREAMBLE}id: {}\n\n", start.text());
    assert!(wire.starts_with(&first), "want {first:?}: {wire:?}");
    assert_eq!(s.parser.last_event_id, start.text());

    publish_n(&api, a, 4).await;
    publish_n(&api, b, 3).await;
    let top = cur(&chans, &[6, 3]);
    let events = sse_until(&mut s, &mut start.clone(), &top).await;
    once("live SSE", &sse_pairs(&events), &start, &top);
    for env in events.iter().map(SseEvent::json) {
        assert_eq!(env["data"]["c"], env["channel"], "{env}");
    }
    let wire = String::from_utf8_lossy(&s.raw).into_owned();
    let typed = wire.contains("\nevent: t.even\n") && !wire.contains("event: message");
    assert!(typed, "event: only for other types than message: {wire:?}");
    let last = s.parser.last_event_id.clone();
    assert_eq!(last, top.text(), "the last event's id");
    drop(s);

    // Events published while disconnected; `Last-Event-ID` wins over `since`.
    publish_n(&api, a, 3).await;
    publish_n(&api, b, 4).await;
    let after = cur(&chans, &[9, 7]);
    let mut s = open_sse(&api, &format!("/sse?{q}&since=0"), Some(&last)).await;
    assert_eq!(opening(&mut s).await, last, "the resumed opening block");
    let events = sse_until(&mut s, &mut top.clone(), &after).await;
    once("SSE resumed", &sse_pairs(&events), &top, &after);
    assert_eq!(s.next_event(QUIET).await, None, "nothing more");
}

async fn stream_sse_from_now_resumes_from_its_opening_id_block(api: Api) {
    let chans = names("snow", 2);
    publish_n(&api, &chans[0], 3).await;
    publish_n(&api, &chans[1], 1).await;
    let path = format!("/sse?{}", query(&chans));
    let mut s = open_sse(&api, &path, None).await;
    let start = opening(&mut s).await;
    assert_eq!(start, cur(&chans, &[3, 1]).text(), "at the heads");
    assert_eq!(s.parser.last_event_id, start, "EventSource's id");
    drop(s);

    publish_n(&api, &chans[0], 2).await;
    publish_n(&api, &chans[1], 2).await;
    let mut s = open_sse(&api, &path, Some(&start)).await;
    assert_eq!(opening(&mut s).await, start);
    let (from, to) = (Cursor::parse(&start), cur(&chans, &[5, 3]));
    let events = sse_until(&mut s, &mut from.clone(), &to).await;
    once("published in between", &sse_pairs(&events), &from, &to);
    assert_eq!(s.next_event(QUIET).await, None, "nothing more");
}

async fn stream_ws_ready_replay_live_subscribe_unsubscribe_publish_cursor(api: Api) {
    let chans = names("sws", 3);
    let (a, b, c) = (&chans[0], &chans[1], &chans[2]);
    for (ch, n) in [(a, 3), (b, 2), (c, 2)] {
        publish_n(&api, ch, n).await;
    }
    let ab = &chans[..2];
    let path = format!("/ws?{}&since=0", query(ab));
    let (mut ws, ready) = open_ws(&api, &path, Some(&admin())).await;
    let (zero, heads) = (cur(ab, &[0, 0]), cur(ab, &[3, 2]));
    assert_eq!(ready["heads"], heads.heads(), "{ready}");
    assert!(ready["window"].as_u64().is_some_and(|w| w > 0), "{ready}");
    let frames = ws_until(&mut ws, &heads).await;
    once("WS replay from 0", &pairs(&frames), &zero, &heads);
    for f in &frames {
        let data = json!({"c": f["channel"], "i": f["id"]});
        assert_eq!((&f["op"], &f["data"]), (&json!("event"), &data), "{f}");
        assert!(is_utc_millis(f["time"].as_str().unwrap_or("")), "{f}");
    }
    publish_n(&api, a, 1).await;
    publish_n(&api, b, 1).await;
    let live = cur(ab, &[4, 3]);
    let got = pairs(&ws_until(&mut ws, &live).await);
    once("WS live", &got, &heads, &live);

    // subscribe c from after 1: `subscribed` first, then its replay.
    let frame = json!({"op": "subscribe", "channel": c, "since": 1});
    let f = ask(&mut ws, frame, "subscribed", "subscribe c since 1").await;
    assert_eq!(f["head"], json!(2), "{f}");
    let frames = ws_until(&mut ws, &cur(&chans[2..], &[2])).await;
    assert_eq!(pairs(&frames), vec![(c.clone(), 2)], "{frames:?}");

    // unsubscribe b: nothing more of b, while a and c still deliver.
    ask(&mut ws, unsub(b), "unsubscribed", "unsubscribe b").await;
    for ch in [b, a, c] {
        publish_n(&api, ch, 1).await;
    }
    let want = vec![(a.clone(), 5), (c.clone(), 3)];
    let mut frames = ws_until(&mut ws, &Cursor(want.clone())).await;
    frames.extend(jsons(ws_quiet(&mut ws).await));
    assert_eq!(pairs(&frames), want, "after unsubscribing b: {frames:?}");

    // Subscribing again to a channel in the set changes nothing: `subscribed`, no replay.
    let frame = json!({"op": "subscribe", "channel": a, "since": 0});
    let f = ask(&mut ws, frame, "subscribed", "subscribe a twice").await;
    assert_eq!(f["head"], json!(5), "the last id seen on a: {f}");
    assert!(ws.ping(WAIT).await, "no replay after a second subscribe");
    ask(&mut ws, unsub(b), "unsubscribed", "unsubscribe b again").await;

    // publish frames: on a channel of the set, the event and the ack; elsewhere a 400.
    let data = json!({"via": "ws"});
    let frame = json!({"op": "publish", "channel": a, "type": "t.ws", "data": data, "ref": "r-1"});
    ws.send_json(&frame).await;
    let (x, y) = (ws.next_json(WAIT).await, ws.next_json(WAIT).await);
    let (event, ack) = if x["op"] == "event" { (x, y) } else { (y, x) };
    let mut want = frame.clone();
    want["op"] = json!("event");
    want["id"] = json!(6);
    for k in ["op", "channel", "id", "type", "data"] {
        assert_eq!(event[k], want[k], "{k} of {event}");
    }
    let want = json!({"op": "ack", "channel": a, "ref": "r-1", "id": 6});
    assert_eq!(ack, want);
    let frame = json!({"op": "publish", "channel": b, "data": 1, "ref": "r-2"});
    let e = refuse(&mut ws, frame, 400, "bad_request", "a publish off the set").await;
    assert_eq!(e["ref"], json!("r-2"), "{e}");
    assert_eq!(head(&api, b).await, 4, "nothing stored on b");

    // cursor frames: through what was sent, silently; above it, or off the set, a 400.
    let good = json!({"op": "cursor", "channel": a, "id": 6});
    ws.send_json(&good).await;
    assert!(ws.ping(WAIT).await, "a good cursor report gets no answer");
    for (ch, id, what) in [(a, 7, "above what was sent"), (b, 1, "off the set")] {
        let frame = json!({"op": "cursor", "channel": ch, "id": id});
        refuse(&mut ws, frame, 400, "bad_request", what).await;
    }
    ws.close().await;
}

async fn stream_ws_rights_are_checked_on_every_subscribe(api: Api) {
    let p = channel("srights");
    let (a1, a2, b) = (format!("{p}-a1"), format!("{p}-a2"), format!("{p}-b"));
    let tok = token(&[], &[&format!("{p}-a*")], 600);
    let (mut ws, _) = open_ws(&api, &format!("/ws?channel={a1}"), Some(&tok)).await;
    let frame = json!({"op": "subscribe", "channel": b, "since": 0});
    refuse(&mut ws, frame, 403, "forbidden", "subscribe b").await;
    ask(&mut ws, sub(&a2), "subscribed", "subscribe a2").await;
    for ch in [&b, &a1, &a2] {
        publish_n(&api, ch, 1).await;
    }
    let want = vec![(a1.clone(), 1), (a2.clone(), 1)];
    let mut frames = ws_until(&mut ws, &Cursor(want.clone())).await;
    frames.extend(jsons(ws_quiet(&mut ws).await));
    let mut got = pairs(&frames);
    got.sort();
    assert_eq!(got, want, "nothing of b: {frames:?}");
    ws.close().await;

    // Anonymous on a public channel: a subscribe to a channel that is not public is a 401.
    let [public, other] = [channel("sr-p"), channel("sr-q")].map(|c| format!("public:{c}"));
    let (mut anon, _) = open_ws(&api, &format!("/ws?channel={public}"), None).await;
    refuse(&mut anon, sub(&a1), 401, "unauthorized", "anonymous").await;
    ask(&mut anon, sub(&other), "subscribed", "anonymous, public").await;
    anon.close().await;
}

async fn stream_ws_subscribes_beyond_max_stream_channels_are_400(_: Api) {
    let hub = own_hub(&[("MAX_STREAM_CHANNELS", "3")]).await;
    let api = Api::new(hub.base());
    let chans = names("smax", 4);
    let r = answer(&api, "/poll", &query(&chans), Some(&admin()), None).await;
    assert_problem(&r, 400, "bad_request", "4 channels, at most 3");
    poll_ok(&api, &query(&chans[..3]), None, None).await;

    let path = format!("/ws?{}", query(&chans[..2]));
    let (mut ws, _) = open_ws(&api, &path, Some(&admin())).await;
    let ws = &mut ws;
    ask(ws, sub(&chans[2]), "subscribed", "the third channel").await;
    refuse(ws, sub(&chans[3]), 400, "bad_request", "a fourth").await;
    ask(ws, sub(&chans[2]), "subscribed", "one already in the set").await;
    ask(ws, unsub(&chans[0]), "unsubscribed", "making room").await;
    ask(ws, sub(&chans[3]), "subscribed", "the fourth, with room").await;
    publish_n(&api, &chans[0], 1).await;
    publish_n(&api, &chans[3], 1).await;
    let frames = ws_until(ws, &cur(&chans[3..], &[1])).await;
    assert_eq!(pairs(&frames), vec![(chans[3].clone(), 1)], "{frames:?}");
    assert_eq!(ws_quiet(ws).await, vec![], "nothing of the one gone");
    hub.cleanup().await;
}

async fn stream_ws_resumes_with_the_stream_cursor_exactly_once(api: Api) {
    let chans = names("sres", 3);
    publish_n(&api, &chans[0], 2).await;
    publish_n(&api, &chans[2], 1).await;
    let (q, tok) = (query(&chans), admin());
    let (mut ws, ready) = open_ws(&api, &format!("/ws?{q}"), Some(&tok)).await;
    let start = cur(&chans, &[2, 0, 1]);
    assert_eq!(ready["heads"], start.heads(), "{ready}");
    assert_eq!(ws_quiet(&mut ws).await, vec![], "no replay from now on");
    publish_n(&api, &chans[0], 3).await;
    publish_n(&api, &chans[1], 2).await;
    let mid = cur(&chans, &[5, 2, 1]);
    let got = pairs(&ws_until(&mut ws, &mid).await);
    once("WS from now", &got, &start, &mid);
    // The cursor the client keeps: `ready.heads`, moved by each event.
    let cursor = start.after(&got);
    drop(ws);

    for (c, n) in chans.iter().zip([4, 3, 5]) {
        publish_n(&api, c, n).await;
    }
    let top = cur(&chans, &[9, 5, 6]);
    let path = format!("/ws?{q}&since={}", cursor.url());
    let (mut ws, ready) = open_ws(&api, &path, Some(&tok)).await;
    assert_eq!(ready["heads"], top.heads(), "{ready}");
    let got = pairs(&ws_until(&mut ws, &top).await);
    once("WS resumed with since=<cursor>", &got, &cursor, &top);
    assert_eq!(ws_quiet(&mut ws).await, vec![], "nothing more");
    ws.close().await;
}

/// Per channel: its subscription periods, each the `subscribed` head and the ids received.
type Periods = BTreeMap<String, Vec<(Option<u64>, Vec<u64>)>>;

fn last_id(periods: &Periods, c: &str) -> u64 {
    let ids = periods[c].iter().flat_map(|(_, ids)| ids.iter().copied());
    ids.last().unwrap_or(0)
}

async fn stream_ws_set_changes_while_events_flow_keep_each_channel_contiguous(api: Api) {
    const ROUNDS: u64 = 30;
    let chans = names("sflow", 3);
    let [x, y, z] = [0, 1, 2].map(|i| chans[i].clone());
    let path = format!("/ws?{}&since=0", query(&chans));
    let (mut ws, _) = open_ws(&api, &path, Some(&admin())).await;
    let publisher = {
        let (api, chans) = (api.clone(), chans.clone());
        tokio::spawn(async move {
            for i in 1..=ROUNDS {
                for c in &chans {
                    let r = api.publish(c, &json!({"data": {"i": i}}), &admin()).await;
                    assert_eq!(ids(&r.json()), vec![i], "{c}: {}", r.text());
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    // When x's event `steps[k]` arrives: unsubscribe y, resubscribe y from its last id,
    // unsubscribe z, resubscribe z from now on.
    let (steps, mut step) = ([6, 12, 16, 22], 0);
    let mut periods: Periods = chans
        .iter()
        .map(|c| (c.clone(), vec![(None, vec![])]))
        .collect();
    let mut live: BTreeMap<String, bool> = chans.iter().map(|c| (c.clone(), true)).collect();
    let (mut anomalies, started) = (Vec::new(), Instant::now());
    loop {
        let z_back = periods[&z].last().is_some_and(|p| p.0 == Some(ROUNDS));
        let ended = [&x, &y, &z].map(|c| last_id(&periods, c) == ROUNDS);
        if publisher.is_finished() && step == 4 && ended[0] && ended[1] && (ended[2] || z_back) {
            break;
        }
        let late = started.elapsed() > Duration::from_secs(120);
        assert!(!late, "the flow did not end: {periods:?} {anomalies:?}");
        let f = match ws.next(Duration::from_secs(1)).await {
            None => continue,
            Some(Frame::Json(f)) => f,
            Some(other) => panic!("a frame {other:?}; so far {periods:?}"),
        };
        let c = f["channel"].as_str().unwrap_or_default().to_string();
        match (f["op"].as_str(), periods.get_mut(&c)) {
            (Some("event"), Some(p)) => {
                let id = f["id"].as_u64().unwrap_or(0);
                if !live[&c] {
                    anomalies.push(format!("{c} {id} after unsubscribed"));
                }
                if let Some(period) = p.last_mut() {
                    period.1.push(id);
                }
            }
            (Some("unsubscribed"), Some(_)) => {
                live.insert(c, false);
            }
            (Some("subscribed"), Some(p)) => {
                p.push((f["head"].as_u64(), Vec::new()));
                live.insert(c, true);
            }
            _ => anomalies.push(f.to_string()),
        }
        while step < steps.len() && last_id(&periods, &x) >= steps[step] {
            let frame = match step {
                0 => unsub(&y),
                1 => json!({"op": "subscribe", "channel": y, "since": last_id(&periods, &y)}),
                2 => unsub(&z),
                _ => sub(&z),
            };
            ws.send_json(&frame).await;
            step += 1;
        }
    }
    publisher.await.expect("the publisher");
    ws.close().await;
    assert!(anomalies.is_empty(), "{anomalies:?}");
    let all: Vec<u64> = (1..=ROUNDS).collect();
    assert_eq!(periods[&x], vec![(None, all.clone())], "x, never changed");
    let (py, pz) = (&periods[&y], &periods[&z]);
    assert!(py.len() == 2 && pz.len() == 2, "two periods: {py:?} {pz:?}");
    let joined: Vec<u64> = py.iter().flat_map(|p| p.1.iter().copied()).collect();
    assert_eq!(joined, all, "y, back from its last id: {py:?}");
    let mid_flow = py[1].0.is_some_and(|h| h < ROUNDS);
    assert!(mid_flow, "y must come back while events flow: {py:?}");
    let (k, h) = (pz[0].1.len() as u64, pz[1].0.unwrap_or(0));
    assert_eq!(pz[0].1, (1..=k).collect::<Vec<_>>(), "z before it left");
    assert!(h >= k, "z's head when it came back: {pz:?}");
    let from_now: Vec<u64> = (h + 1..=ROUNDS).collect();
    assert_eq!(pz[1].1, from_now, "z from now on, after {h}");
}

async fn stream_restart_ends_sse_and_ws_and_the_cursor_resumes_exactly_once(_: Api) {
    let mut hub = own_hub(&[]).await;
    let api = Api::new(hub.base());
    let chans = names("srestart", 2);
    publish_n(&api, &chans[0], 3).await;
    publish_n(&api, &chans[1], 2).await;
    let (q, tok) = (query(&chans), admin());
    let (zero, before) = (cur(&chans, &[0, 0]), cur(&chans, &[3, 2]));
    let mut sse = open_sse(&api, &format!("/sse?{q}&since=0"), None).await;
    let got = sse_until(&mut sse, &mut zero.clone(), &before).await;
    once("SSE before the restart", &sse_pairs(&got), &zero, &before);
    let (mut ws, _) = open_ws(&api, &format!("/ws?{q}&since=0"), Some(&tok)).await;
    let got = pairs(&ws_until(&mut ws, &before).await);
    once("WS before the restart", &got, &zero, &before);
    let ws_cursor = zero.after(&got);

    let restarted = hub.restart().await;
    let api = Api::new(&restarted.unwrap_or_else(|why| panic!("restarting: {why}")));
    let rest = sse.read_to_end(WAIT).await;
    assert!(sse.ended() && rest.is_empty(), "SSE must end: {rest:?}");
    let close = match ws.next(WAIT).await {
        Some(Frame::Closed(close)) => close,
        other => panic!("the socket must close at a restart, got {other:?}"),
    };
    if let Some((code, reason)) = &close {
        let again = *code == 1000 || (4000..4100).contains(code);
        assert!(again, "close {code} {reason:?}: not 'reconnect'");
    }
    eprintln!("e2e: streams: the WS close at a restart: {close:?}");

    publish_n(&api, &chans[0], 3).await;
    publish_n(&api, &chans[1], 4).await;
    let after = cur(&chans, &[6, 6]);
    let last = sse.parser.last_event_id.clone();
    assert_eq!(last, before.text(), "the SSE cursor");
    let mut sse = open_sse(&api, &format!("/sse?{q}"), Some(&last)).await;
    let got = sse_until(&mut sse, &mut before.clone(), &after).await;
    once("SSE after the restart", &sse_pairs(&got), &before, &after);
    let path = format!("/ws?{q}&since={}", ws_cursor.url());
    let (mut ws, _) = open_ws(&api, &path, Some(&tok)).await;
    let got = pairs(&ws_until(&mut ws, &after).await);
    once("WS after the restart", &got, &ws_cursor, &after);
    assert_eq!(sse.next_event(QUIET).await, None, "SSE: nothing more");
    assert_eq!(ws_quiet(&mut ws).await, vec![], "WS: nothing more");
    ws.close().await;
    hub.cleanup().await;
}

/// One channel's subscriber counts, `{"sse","ws"}`, until they equal `want` or `limit` passes.
pub(crate) async fn counts_become(api: &Api, c: &str, want: Value, limit: Duration) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    for _ in 0..300 {
        last = crate::live::info(api, c).await["subscribers"].clone();
        if last == want || started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// `MAX_STREAM_CHANNELS` (100) channels on one SSE stream and one WebSocket: every lane opens,
/// events of any of them arrive, each channel's object counts one WebSocket per stream (the
/// Worker's lane), and when the clients go away every lane leaves its object (the WebSocket at
/// once, the SSE stream within a heartbeat).
async fn stream_a_hundred_channels_on_one_sse_and_one_ws_and_every_lane_leaves_with_them(api: Api) {
    let chans = names("s100-", 100);
    let q = query(&chans);
    let mut sse = open_sse(&api, &format!("/sse?{q}"), None).await;
    let start = opening(&mut sse).await;
    assert_eq!(
        start,
        cur(&chans, &[0; 100]).text(),
        "every channel from its head"
    );
    let (mut ws, ready) = open_ws(&api, &format!("/ws?{q}"), Some(&admin())).await;
    assert_eq!(ready["heads"], cur(&chans, &[0; 100]).heads(), "{ready}");
    let picked = [0usize, 37, 99];
    for i in picked {
        publish_n(&api, &chans[i], 2).await;
    }
    let mut ids = [0u64; 100];
    for i in picked {
        ids[i] = 2;
    }
    let (from, to) = (cur(&chans, &[0; 100]), cur(&chans, &ids));
    let events = sse_until(&mut sse, &mut from.clone(), &to).await;
    once("SSE over 100 channels", &sse_pairs(&events), &from, &to);
    let frames = ws_until(&mut ws, &to).await;
    once("WS over 100 channels", &pairs(&frames), &from, &to);
    for i in [0usize, 99] {
        let n = counts_become(&api, &chans[i], json!({"sse": 0, "ws": 2}), WAIT).await;
        assert_eq!(
            n,
            json!({"sse": 0, "ws": 2}),
            "{}: one lane per stream",
            chans[i]
        );
    }
    ws.close().await;
    let n = counts_become(&api, &chans[99], json!({"sse": 0, "ws": 1}), WAIT).await;
    assert_eq!(
        n,
        json!({"sse": 0, "ws": 1}),
        "the WebSocket's lanes leave with it"
    );
    drop(sse);
    // A gone SSE client is noticed by the bridge's next heartbeat write.
    let limit = Duration::from_secs(4 * crate::harness::SHARED_HEARTBEAT_SECONDS + 10);
    for c in [&chans[0], &chans[50], &chans[99]] {
        let n = counts_become(&api, c, json!({"sse": 0, "ws": 0}), limit).await;
        assert_eq!(
            n,
            json!({"sse": 0, "ws": 0}),
            "{c}: the SSE stream's lanes leave too"
        );
    }
}

/// A multi-channel stream ends when its token stops being accepted (`exp` plus the 30 s clock
/// skew), as a v1 stream does: the WebSocket closes with 4101, the SSE stream ends; also on
/// channels that never had an event (the Worker ends it, not the objects' alarms).
async fn stream_sse_and_ws_end_when_their_token_expires(api: Api) {
    let chans = names("sexp", 2);
    let refs: Vec<&str> = chans.iter().map(String::as_str).collect();
    let exp = crate::api::now_secs() + 3;
    let short = edgehub::auth::sign(
        &crate::api::claims(&[], &refs, Some(exp)),
        crate::harness::SECRET,
    );
    let q = query(&chans);
    let auth = format!("Bearer {short}");
    let opened = SseStream::open(&api, &format!("/sse?{q}"), &[("authorization", &auth)]).await;
    let mut sse = opened.unwrap_or_else(|r| panic!("SSE: {} {}", r.status, r.text()));
    let (mut ws, _) = open_ws(&api, &format!("/ws?{q}"), Some(&short)).await;
    let started = Instant::now();
    let mut closed = None;
    while started.elapsed() < Duration::from_secs(90) && closed.is_none() {
        match ws.next(Duration::from_secs(1)).await {
            Some(Frame::Closed(c)) => closed = Some(c),
            Some(other) => panic!("unexpected frame before the close: {other:?}"),
            None => {}
        }
    }
    let when = crate::api::now_secs();
    assert_eq!(
        closed,
        Some(Some((4101, "token expired".to_string()))),
        "the WebSocket at expiry (exp {exp}, now {when})"
    );
    assert!(
        when >= exp + 29,
        "closed at {when}, before exp {exp} plus the skew"
    );
    let rest = sse.read_to_end(Duration::from_secs(20)).await;
    assert!(
        sse.ended() && rest.is_empty(),
        "the SSE stream ends too: {rest:?}"
    );
}

/// Reads a multi-channel SSE stream until it reaches the cursor `done` is given (bounded).
async fn read_sse_until_told(mut s: SseStream, done: Arc<Mutex<Option<Cursor>>>) -> Pairs {
    let (started, mut at, mut got) = (Instant::now(), Cursor(Vec::new()), Vec::new());
    while started.elapsed() < Duration::from_secs(120) && !s.ended() {
        let target = done.lock().unwrap().clone();
        if target.is_some_and(|t| at.reached(&t)) {
            break;
        }
        if let Some(e) = s.next_event(Duration::from_millis(200)).await {
            let pair = sse_pairs(std::slice::from_ref(&e));
            pair.iter().for_each(|(c, id)| at.set(c, *id));
            got.extend(pair);
        }
    }
    got
}

/// Reads (and reports, as the flow control asks) a multi-channel WebSocket until it reaches
/// the cursor `done` is given (bounded).
async fn read_ws_until_told(mut ws: WsClient, done: Arc<Mutex<Option<Cursor>>>) -> Pairs {
    let (started, mut at, mut got) = (Instant::now(), Cursor(Vec::new()), Vec::new());
    while started.elapsed() < Duration::from_secs(120) {
        let target = done.lock().unwrap().clone();
        if target.is_some_and(|t| at.reached(&t)) {
            break;
        }
        match ws.next(Duration::from_millis(200)).await {
            Some(Frame::Json(v)) if v["op"] == "event" => {
                let pair = pairs(std::slice::from_ref(&v));
                pair.iter().for_each(|(c, id)| at.set(c, *id));
                got.extend(pair);
            }
            Some(Frame::Closed(close)) => panic!("the reporting WebSocket closed: {close:?}"),
            _ => {}
        }
    }
    got
}

/// Flow control over a multi-channel connection (docs/API.md#stream-ws-flow), on a hub with the
/// smallest window: an SSE client that stops reading and a WebSocket that reads but never
/// confirms are let go (the WebSocket with 4001), while a multi-channel SSE reader and a
/// reporting WebSocket get every event of both channels in order; the stalled SSE client then
/// resumes from its last id, exactly once.
async fn stream_slow_clients_are_let_go_others_get_everything_and_they_resume(_: Api) {
    use crate::slow::{dechunk, own_hub, publish_padded, stalled, RETAIN_ALL};
    use tokio::io::AsyncReadExt;
    let hub = own_hub(RETAIN_ALL).await;
    let api = Api::new(hub.base());
    let chans = names("sslow", 2);
    let q = query(&chans);
    let zero = cur(&chans, &[0, 0]);
    let reader = open_sse(&api, &format!("/sse?{q}&since=0"), None).await;
    let (reporting, _) = open_ws(&api, &format!("/ws?{q}&since=0"), Some(&admin())).await;
    // The two good clients read all along, each in its own task, until told the last ids.
    let done: Arc<Mutex<Option<Cursor>>> = Arc::default();
    let sse_task = tokio::spawn(read_sse_until_told(reader, done.clone()));
    let ws_task = tokio::spawn(read_ws_until_told(reporting, done.clone()));
    let (mut silent, _) = open_ws(&api, &format!("/ws?{q}&since=0"), Some(&admin())).await;
    silent.set_reporting(false);
    let host = api.base.trim_start_matches("http://");
    let request = format!(
        "GET /sse?{q}&since=0 HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {}\r\n\r\n",
        admin()
    );
    let (mut slow, head, mut raw) = stalled(&api, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lanes = |n: u64| json!({"sse": 0, "ws": n});
    assert_eq!(
        counts_become(&api, &chans[0], lanes(4), WAIT).await,
        lanes(4)
    );

    // Publish alternately until both slow ones are gone (the silent socket is read meanwhile, so
    // only its missing reports can end it), then ten more on each channel. The stalled SSE
    // client is let go only once the runtime stops taking its stream: the sockets between it
    // and workerd (the front's two, autotuned) first absorb about 1,000 of these events (8 MB),
    // and more on a loaded machine; 1,500 was once not enough in a full run beside a busy loop.
    let (mut n, mut silent_closed, mut dropped, mut seen) = (0u64, None, None, Value::Null);
    while n < 4000 && dropped.is_none_or(|d| n < d + 20) {
        n += 1;
        let c = &chans[(n % 2) as usize];
        publish_padded(&api, c, n).await;
        // Drain what came (a closed socket answers `Closed` every time: stop there).
        for _ in 0..1000 {
            match silent_closed.is_none().then_some(()) {
                Some(()) => match silent.next(Duration::from_millis(1)).await {
                    Some(Frame::Closed(close)) => silent_closed = Some(close),
                    Some(_) => {}
                    None => break,
                },
                None => break,
            }
        }
        if dropped.is_none() && n % 4 == 0 {
            seen = crate::live::info(&api, &chans[0]).await["subscribers"].clone();
            if seen == lanes(2) && silent_closed.is_some() {
                dropped = Some(n);
            }
        }
    }
    let dropped = dropped.unwrap_or_else(|| {
        panic!(
            "the slow clients were never let go: silent {silent_closed:?}, {n} events, \
             subscribers {seen}"
        )
    });
    assert_eq!(
        silent_closed,
        Some(Some((
            4001,
            "too far behind, reconnect with your cursor".into()
        ))),
        "the silent WebSocket"
    );
    let top = cur(&chans, &[n / 2, n - n / 2]);
    *done.lock().unwrap() = Some(top.clone());
    let got = sse_task.await.expect("the SSE reader");
    once("the reading SSE client", &got, &zero, &top);
    let got = ws_task.await.expect("the WebSocket reader");
    once("the reporting WebSocket", &got, &zero, &top);

    // The stalled client reads again: a run from the start on each channel, then the end.
    let started = Instant::now();
    while !dechunk(&raw).1 && started.elapsed() < Duration::from_secs(60) {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(Duration::from_secs(5), slow.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(k)) => raw.extend_from_slice(&chunk[..k]),
            Err(_) => {}
        }
    }
    let mut parser = Parser::default();
    let events: Vec<SseEvent> = parser
        .feed(&dechunk(&raw).0)
        .into_iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let last = parser.last_event_id.clone();
    let had = Cursor::parse(&last);
    once(
        "the stalled client, before it was let go",
        &sse_pairs(&events),
        &zero,
        &had,
    );
    assert!(
        !had.reached(&top),
        "it was let go before the end ({last} of {})",
        top.text()
    );
    let mut again = open_sse(&api, &format!("/sse?{q}"), Some(&last)).await;
    let got = sse_until(&mut again, &mut had.clone(), &top).await;
    once("the stalled client, resumed", &sse_pairs(&got), &had, &top);
    eprintln!(
        "e2e: streams: slow clients let go after {dropped} events of {} B (the stalled SSE \
         client had {last}); the others got all {n}",
        crate::slow::PAD
    );
    hub.cleanup().await;
}

/// A purge of one channel of a live stream (docs/API.md#stream-bridge): the stream goes on and
/// delivers what follows (ids are never reused); a cursor from before the purge resumes with a
/// gap naming that channel, and nothing of the other channel is lost.
async fn stream_a_purge_changes_nothing_live_and_an_older_cursor_gets_the_gap(api: Api) {
    let chans = names("spurge", 2);
    let (a, q) = (&chans[0], query(&chans));
    publish_n(&api, a, 3).await;
    publish_n(&api, &chans[1], 1).await;
    let zero = cur(&chans, &[0, 0]);
    let mut sse = open_sse(&api, &format!("/sse?{q}&since=0"), None).await;
    let before = cur(&chans, &[3, 1]);
    let got = sse_until(&mut sse, &mut zero.clone(), &before).await;
    once("before the purge", &sse_pairs(&got), &zero, &before);
    let purge = client()
        .delete(format!("{}/channels/{a}/events", api.base))
        .bearer_auth(admin());
    assert_eq!(api.send(purge).await.status, 204, "the purge");
    publish_n(&api, a, 2).await;
    publish_n(&api, &chans[1], 1).await;
    let after = cur(&chans, &[5, 2]);
    let got = sse_until(&mut sse, &mut before.clone(), &after).await;
    once("live through the purge", &sse_pairs(&got), &before, &after);
    drop(sse);
    // A cursor from before the purge: a gap for that channel, then what it retains.
    let mut again = open_sse(&api, &format!("/sse?{q}"), Some(&zero.text())).await;
    let got = sse_until(&mut again, &mut zero.clone(), &after).await;
    let gaps: Vec<Value> = got
        .iter()
        .filter(|e| e.kind == "gap")
        .map(SseEvent::json)
        .collect();
    assert_eq!(
        gaps,
        vec![json!({"channel": a, "requested": 0, "earliest": 4})],
        "the gap of the purged channel"
    );
    once(
        "resumed across the purge",
        &sse_pairs(&got),
        &cur(&chans, &[3, 0]),
        &after,
    );
}
