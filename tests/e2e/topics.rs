//! Topics within a channel (DESIGN.md "Topics within a channel"): publishing topics (HTTP and
//! WS, every bad one refused with nothing of its batch stored), `topics` after `type` in every
//! envelope, `topic=` / `topic_pattern=` filters on SSE, WS and poll (single and multi-channel,
//! live and replay, a channel added by a `subscribe` frame), a filtered SSE resumed exactly once
//! with `Last-Event-ID`, flow control that owes nothing for filtered-out events, and 400 for
//! every bad filter on every route.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{admin, channel, client, ids, Api, Resp};
use crate::publish::{assert_problem, head};
use crate::sse_client::SseStream;
use crate::sse_parser::SseEvent;
use crate::ws_client::{frame_ids, Frame, WsClient};
use crate::{case, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(topics_http_publish_refuses_bad_topics_and_stores_nothing_of_the_batch),
        case!(topics_ws_publish_with_a_bad_topic_is_an_error_frame_and_the_socket_stays_open),
        case!(topics_envelopes_carry_topics_after_type_on_ws_multi_sse_and_poll),
        case!(topics_exact_pattern_and_union_filters_on_sse_and_ws_live_and_replay),
        case!(topics_multi_channel_sse_and_ws_filter_every_channel_even_one_added_later),
        case!(topics_a_filtered_sse_resumes_from_last_event_id_exactly_once),
        case_own_hub!(topics_a_filtered_ws_owes_nothing_for_events_its_filter_kept_from_it),
        case!(topics_bad_filters_are_400_on_sse_and_ws_single_and_multi),
        case!(topics_bad_filters_are_400_on_poll_single_and_multi),
        case!(topics_poll_returns_matching_events_and_next_is_the_last_id_examined),
        case!(topics_multi_channel_poll_filters_every_channel_and_next_is_examined),
        case!(topics_poll_etag_differs_with_the_filter),
    ]
}

const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(700);

const BOOK_1: &str = "https://example.com/books/1";
const BOOKS: &str = "https://example.com/books/:id";
const ORDERS: &str = "*://*/orders/*";

/// `(channel, id)` of events, in the order received.
type Pairs = Vec<(String, u64)>;

/// Percent-encodes every byte but the unreserved ones, for a query value or a cursor.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A filter as a query: `topic=…&topic_pattern=…`, each value percent-encoded.
fn fq(exact: &[&str], patterns: &[&str]) -> String {
    let exact = exact.iter().map(|t| format!("topic={}", enc(t)));
    let patterns = patterns.iter().map(|p| format!("topic_pattern={}", enc(p)));
    exact.chain(patterns).collect::<Vec<_>>().join("&")
}

/// `channel=a&channel=b…`.
fn chans_query(chans: &[String]) -> String {
    let parts: Vec<String> = chans.iter().map(|c| format!("channel={c}")).collect();
    parts.join("&")
}

/// A stream cursor's text, `a=1,b=2`.
fn cursor(pairs: &[(&String, u64)]) -> String {
    let parts: Vec<String> = pairs.iter().map(|(c, id)| format!("{c}={id}")).collect();
    parts.join(",")
}

/// One event to publish: data `{"n": n}` and its topics (none when `topics` is empty).
fn event(n: u64, topics: &[&str]) -> Value {
    let mut e = json!({"data": {"n": n}});
    if !topics.is_empty() {
        e["topics"] = json!(topics);
    }
    e
}

/// Publishes one event per entry of `topics` on `c` in one batch, numbered from `first` (the
/// channel's next id: each event's data is `{"n": its id}`).
async fn publish_topics(api: &Api, c: &str, first: u64, topics: &[&[&str]]) -> Vec<u64> {
    let batch: Vec<Value> = (first..).zip(topics).map(|(n, t)| event(n, t)).collect();
    let r = api.publish(c, &Value::Array(batch), &admin()).await;
    let want: Vec<u64> = (first..first + topics.len() as u64).collect();
    assert_eq!(r.status, 201, "publish on {c}: {}", r.text());
    assert_eq!(ids(&r.json()), want, "the ids on {c}: {}", r.text());
    want
}

/// Publishes a body that must be refused with 400 `bad_request`.
async fn publish_refused(api: &Api, c: &str, body: &Value, what: &str) {
    let r = api.publish(c, body, &admin()).await;
    assert_problem(&r, 400, "bad_request", &format!("publish {what}"));
}

/// `ids` of channel `c` as `(channel, id)` pairs.
fn on(c: &str, ids: &[u64]) -> Pairs {
    ids.iter().map(|id| (c.to_string(), *id)).collect()
}

/// Opens an SSE stream with the admin token and an optional `Last-Event-ID`.
async fn open_sse(api: &Api, path: &str, last_id: Option<&str>) -> SseStream {
    let auth = format!("Bearer {}", admin());
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(last_id.map(|l| ("last-event-id", l)));
    let opened = SseStream::open(api, path, &headers).await;
    opened.unwrap_or_else(|r| panic!("GET {path}: {} {}", r.status, r.text()))
}

/// Opens a WebSocket (multi-channel when `path` has no channel in it) and reads its `ready`.
async fn open_ws(api: &Api, path: &str) -> WsClient {
    let opened = if path.starts_with("/ws?") {
        WsClient::open_stream(api, path, Some(&admin())).await
    } else {
        WsClient::open(api, path, Some(&admin())).await
    };
    let mut ws = opened.unwrap_or_else(|r| panic!("upgrade {path}: {} {}", r.status, r.text()));
    let ready = ws.next_json(WAIT).await;
    assert_eq!(ready["op"], "ready", "first frame on {path}: {ready}");
    ws
}

/// A single-channel SSE stream's event ids through `last` (bounded); no gap may come, and each
/// event's data is `{"n": its id}`: the event's data, not an envelope.
async fn sse_ids(s: &mut SseStream, last: u64, what: &str) -> Vec<u64> {
    let events = s.events_through(last, WAIT).await;
    for e in &events {
        assert_ne!(
            e.kind, "gap",
            "{what}: a filtered stream skips, it has no gap: {e:?}"
        );
        assert_eq!(
            e.json(),
            json!({"n": e.id()}),
            "{what}: the event's data: {e:?}"
        );
    }
    events.iter().filter_map(SseEvent::id).collect()
}

/// A single-channel WebSocket's event frames through `last` (bounded); no gap may come.
async fn ws_events(ws: &mut WsClient, last: u64, what: &str) -> Vec<Value> {
    let frames = ws.frames_through(last, WAIT).await;
    let others: Vec<&Value> = frames.iter().filter(|f| f["op"] != "event").collect();
    assert!(others.is_empty(), "{what}: only events: {others:?}");
    frames
}

/// True once `got` holds, for every channel of `want`, an id at or past its last one there.
fn reached(got: &[(String, u64)], want: &[(String, u64)]) -> bool {
    want.iter()
        .all(|(c, id)| got.iter().any(|(g, i)| g == c && i >= id))
}

/// Reads a multi-channel SSE stream (bounded) until it reached every `(channel, id)` of `want`.
/// `at` is the stream cursor so far (channel to id); each event's `id:` must be it, moved by
/// the event. Returns the events' `(channel, id)` and envelopes. No gap may come.
async fn sse_many(
    s: &mut SseStream,
    at: &mut BTreeMap<String, u64>,
    order: &[String],
    want: &[(String, u64)],
    what: &str,
) -> (Pairs, Vec<Value>) {
    let deadline = Instant::now() + WAIT;
    let (mut got, mut envelopes) = (Vec::new(), Vec::new());
    while !reached(&got, want) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(e) = s.next_event(left).await else {
            break;
        };
        assert_ne!(
            e.kind, "gap",
            "{what}: a filtered stream skips, it has no gap: {e:?}"
        );
        let env = e.json();
        let (Some(c), Some(id)) = (env["channel"].as_str(), env["id"].as_u64()) else {
            panic!("{what}: an SSE event whose data is not an envelope: {e:?}");
        };
        at.insert(c.to_string(), id);
        let want_id: Vec<(&String, u64)> = order.iter().map(|c| (c, at[c])).collect();
        assert_eq!(
            e.last_event_id,
            cursor(&want_id),
            "{what}: the id: of {env}"
        );
        got.push((c.to_string(), id));
        envelopes.push(env);
    }
    (got, envelopes)
}

/// Reads a multi-channel WebSocket (bounded) until it reached every `(channel, id)` of `want`:
/// the events' `(channel, id)` and frames. Only event frames may come.
async fn ws_many(ws: &mut WsClient, want: &[(String, u64)], what: &str) -> (Pairs, Vec<Value>) {
    let deadline = Instant::now() + WAIT;
    let (mut got, mut frames) = (Vec::new(), Vec::new());
    while !reached(&got, want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next(left).await {
            Some(Frame::Json(f)) if f["op"] == "event" => {
                let c = f["channel"].as_str().unwrap_or("?").to_string();
                got.push((c, f["id"].as_u64().unwrap_or(0)));
                frames.push(f);
            }
            None => break,
            other => panic!("{what}: an unexpected frame {other:?} after {got:?}"),
        }
    }
    (got, frames)
}

/// `got` sorted by channel then id (arrival order across channels is not specified; within one
/// channel it must be id order, checked first).
fn by_channel(got: &[(String, u64)], what: &str) -> Pairs {
    let mut sorted = got.to_vec();
    sorted.sort();
    for c in got.iter().map(|p| &p.0) {
        let ids: Vec<u64> = got.iter().filter(|p| &p.0 == c).map(|p| p.1).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{what}: {c} in order: {got:?}"
        );
    }
    sorted
}

/// Nothing more arrives on `ws` within `QUIET`.
async fn ws_nothing_more(ws: &mut WsClient, what: &str) {
    assert_eq!(ws.next(QUIET).await, None, "{what}: nothing more");
}

/// GET with the admin token; the answer must be 200 JSON.
async fn poll_page(api: &Api, path: &str) -> Value {
    let r = api.get(path, Some(&admin())).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// A poll page's events as `(channel, id)` (a single-channel page's events name it too).
fn page_pairs(page: &Value) -> Pairs {
    let events = page["events"].as_array().cloned().unwrap_or_default();
    let pair = |e: &Value| {
        (
            e["channel"].as_str().unwrap_or("?").to_string(),
            e["id"].as_u64().unwrap_or(0),
        )
    };
    events.iter().map(pair).collect()
}

/// GET `path` with the admin token and `If-None-Match: etag`.
async fn get_if_none_match(api: &Api, path: &str, etag: &str) -> Resp {
    let req = client()
        .get(format!("{}{path}", api.base))
        .bearer_auth(admin());
    api.send(req.header("if-none-match", etag)).await
}

/// `path` opened as a poll, SSE or WebSocket client opens it: a refusal whole, a success as a
/// bare 200 or 101 (so `assert_problem` reports it).
async fn answer(api: &Api, path: &str) -> Resp {
    let opened = |status| Resp {
        status,
        headers: reqwest::header::HeaderMap::new(),
        body: b"(opened)".to_vec(),
    };
    let auth = format!("Bearer {}", admin());
    if path.starts_with("/sse") {
        let headers = [("authorization", auth.as_str())];
        SseStream::open(api, path, &headers)
            .await
            .map_or_else(|r| r, |_| opened(200))
    } else if path.starts_with("/ws") {
        let ws = WsClient::open(api, path, Some(&admin())).await;
        ws.map_or_else(|r| r, |_| opened(101))
    } else {
        api.get(path, Some(&admin())).await
    }
}

/// `n` distinct `topic=` matchers.
fn exact_matchers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("topic=t{i}")).collect()
}

/// `n` distinct `topic_pattern=` matchers.
fn pattern_matchers(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| fq(&[], &[&format!("https://e.com/{i}/:x")]))
        .collect()
}

/// Filters every route must refuse with 400: the query and what it is.
fn bad_filters() -> Vec<(String, &'static str)> {
    let mixed = [exact_matchers(17), pattern_matchers(16)].concat();
    let heavy: Vec<String> = (0..9)
        .map(|i| format!("topic={i}{}", "x".repeat(1000)))
        .collect();
    vec![
        (fq(&[], &["/books/:id"]), "a relative pattern"),
        (fq(&[], &["https://e.com/(a"]), "an unclosed group"),
        (fq(&[], &["https://e.com/:"]), "a group without a name"),
        (
            fq(&["ok"], &["books/:id"]),
            "a good topic and a relative pattern",
        ),
        ("topic=".to_string(), "an empty topic"),
        ("topic_pattern=".to_string(), "an empty pattern"),
        (
            fq(&["x".repeat(1025).as_str()], &[]),
            "a topic of 1,025 bytes",
        ),
        (
            fq(&["é".repeat(513).as_str()], &[]),
            "a topic of 1,026 bytes of UTF-8",
        ),
        (
            fq(
                &[],
                &[format!("https://e.com/{}", "x".repeat(1011)).as_str()],
            ),
            "a pattern of 1,025 bytes",
        ),
        (fq(&["a\nb"], &[]), "a topic with a line feed"),
        (fq(&["a\u{7f}"], &[]), "a topic with DEL"),
        (fq(&["a\u{85}"], &[]), "a topic with U+0085"),
        (fq(&[], &["https://e.com/\t:id"]), "a pattern with a tab"),
        (exact_matchers(33).join("&"), "33 exact matchers"),
        (mixed.join("&"), "33 matchers of both kinds"),
        (heavy.join("&"), "9 matchers of 9,009 bytes together"),
        ("topic=%ZZ".to_string(), "a topic badly percent-encoded"),
    ]
}

/// Filters at the limits, which every route must accept: the query and what it is.
fn filters_at_the_limits() -> Vec<(String, &'static str)> {
    let mixed = [exact_matchers(16), pattern_matchers(16)].concat();
    let full: Vec<String> = (0..8)
        .map(|i| format!("topic={i}{}", "x".repeat(1023)))
        .collect();
    vec![
        (mixed.join("&"), "32 matchers"),
        (full.join("&"), "8 matchers of 8,192 bytes together"),
        (
            fq(&["é".repeat(512).as_str()], &[]),
            "a topic of 1,024 bytes of UTF-8",
        ),
        (
            fq(
                &[],
                &[format!("https://e.com/{}", "x".repeat(1010)).as_str()],
            ),
            "a pattern of 1,024 bytes",
        ),
    ]
}

/// Publishing over HTTP: `topics` must be 1-16 strings of 1-1,024 bytes without control
/// characters; anything else (`[]`, 17, 1,025 bytes, a control character, `null`, a string, a
/// number, an empty string) is a 400, and a batch with one bad event stores none of its events.
/// The limits themselves are accepted.
async fn topics_http_publish_refuses_bad_topics_and_stores_nothing_of_the_batch(api: Api) {
    let c = channel("tpub");
    let seventeen: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    let bad = [
        (json!([]), "[]"),
        (json!(seventeen), "17 topics"),
        (json!(["x".repeat(1025)]), "a topic of 1,025 bytes"),
        (json!(["é".repeat(513)]), "a topic of 1,026 bytes of UTF-8"),
        (json!(["ok", "a\nb"]), "a topic with a line feed"),
        (json!(["a\u{0}"]), "a topic with NUL"),
        (json!(["\t"]), "a tab"),
        (json!(["a\u{1f}"]), "U+001F"),
        (json!(["a\u{7f}"]), "DEL"),
        (json!(["a\u{85}b"]), "U+0085"),
        (json!(["\u{9f}"]), "U+009F"),
        (json!([""]), "an empty topic"),
        (Value::Null, "topics: null"),
        (json!("x"), "topics: a string"),
        (json!([1]), "topics: [1]"),
        (json!({"a": 1}), "topics: an object"),
    ];
    for (topics, what) in &bad {
        let one = json!({"data": 1, "topics": topics});
        publish_refused(&api, &c, &one, what).await;
        let batch = json!([{"data": 1, "topics": ["good"]}, {"data": 2}, one]);
        publish_refused(&api, &c, &batch, &format!("a batch whose third has {what}")).await;
    }
    assert_eq!(
        head(&api, &c).await,
        0,
        "nothing of any refused batch is stored"
    );

    let sixteen: Vec<String> = (0..16).map(|i| format!("t{i}")).collect();
    let good = [
        json!(sixteen),
        json!(["x".repeat(1024)]),
        json!(["é".repeat(512)]),
        json!([
            "\u{a0}",
            "🦀",
            "https://example.com/a b?c=d#e",
            "b \"q\" \\"
        ]),
    ];
    let batch: Vec<Value> = good
        .iter()
        .map(|t| json!({"data": 0, "topics": t}))
        .collect();
    let r = api.publish(&c, &Value::Array(batch), &admin()).await;
    assert_eq!(r.status, 201, "topics at the limits: {}", r.text());
    assert_eq!(
        ids(&r.json()),
        vec![1, 2, 3, 4],
        "the first ids: nothing before them"
    );
    assert_eq!(api.await_mirror(&c, 4).await, 4, "the mirror of {c}");
    let (events, _) = api.poll_all(&c, 0, 10, 2).await;
    let stored: Vec<&Value> = events.iter().map(|e| &e["topics"]).collect();
    assert_eq!(
        stored,
        good.iter().collect::<Vec<_>>(),
        "stored as published, in order"
    );
}

/// Publishing over a WebSocket (`/ws/{c}`): a bad `topics` gets an `error` frame (400,
/// `bad_request`, the `ref` echoed), the socket stays open, nothing is stored; a good one gets
/// the publisher's own event frame with its topics, then the ack, and a filtered watcher gets it.
async fn topics_ws_publish_with_a_bad_topic_is_an_error_frame_and_the_socket_stays_open(api: Api) {
    let c = channel("twspub");
    let mut ws = open_ws(&api, &format!("/ws/{c}")).await;
    let mut watcher = open_ws(&api, &format!("/ws/{c}?{}", fq(&["b"], &[]))).await;
    let seventeen: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    let bad = [
        json!([]),
        json!(seventeen),
        json!(["x".repeat(1025)]),
        json!(["a\nb"]),
        json!(["a\u{85}"]),
        json!([""]),
        Value::Null,
        json!("x"),
        json!([1]),
    ];
    for (n, topics) in bad.iter().enumerate() {
        let frame = json!({"op": "publish", "data": n, "topics": topics, "ref": n});
        ws.send_json(&frame).await;
        let e = ws.next_json(WAIT).await;
        let got = (&e["op"], &e["status"], &e["code"], &e["ref"]);
        let want = (
            &json!("error"),
            &json!(400),
            &json!("bad_request"),
            &json!(n),
        );
        assert_eq!(got, want, "topics {topics}: {e}");
        assert!(
            ws.ping(WAIT).await,
            "topics {topics}: the socket must stay open"
        );
    }
    assert_eq!(head(&api, &c).await, 0, "no refused frame stores anything");

    let (data, topics) = (json!({"n": 1}), json!(["a", "b"]));
    let frame =
        json!({"op": "publish", "type": "t.ws", "data": data, "topics": topics, "ref": "ok"});
    ws.send_json(&frame).await;
    let own = ws.next_json(WAIT).await;
    let got = (
        &own["op"],
        &own["id"],
        &own["type"],
        &own["topics"],
        &own["data"],
    );
    let want = (
        &json!("event"),
        &json!(1),
        &json!("t.ws"),
        &json!(["a", "b"]),
        &json!({"n": 1}),
    );
    assert_eq!(got, want, "the publisher's own event frame: {own}");
    let ack = ws.next_json(WAIT).await;
    assert_eq!(ack, json!({"op": "ack", "ref": "ok", "id": 1}));
    let seen = ws_events(&mut watcher, 1, "the watcher of b").await;
    assert_eq!(seen, vec![own], "the filtered watcher gets the same frame");
    ws.close().await;
    watcher.close().await;
}

/// Every envelope of an event with topics carries `"topics":[…]` right after `"type"`, byte for
/// byte, and one without topics has no `topics` key: on a WebSocket, as a multi-channel SSE
/// event's data, and in a poll page. A single-channel SSE event's data is the event's data only.
/// HTTP and WS publishes both.
async fn topics_envelopes_carry_topics_after_type_on_ws_multi_sse_and_poll(api: Api) {
    let c = channel("tenv");
    let mut raw = open_ws(&api, &format!("/ws/{c}")).await;
    raw.set_raw(true);
    let mut many = open_sse(&api, &format!("/sse?channel={c}"), None).await;
    // The opening block: every lane is up, so the stream from now has what follows.
    let opening = many.next_id_only_block(WAIT).await;
    assert_eq!(opening, Some(format!("{c}=0")), "the opening block");
    let mut single = open_sse(&api, &format!("/sse/{c}"), None).await;
    let topics = json!([BOOK_1, "b \"q\" \\ é"]);
    let batch = json!([
        {"type": "t.x", "data": {"n": 1}, "topics": topics},
        {"data": {"n": 2}},
    ]);
    let r = api.publish(&c, &batch, &admin()).await;
    assert_eq!(
        (r.status, ids(&r.json())),
        (201, vec![1, 2]),
        "{}",
        r.text()
    );
    let mut publisher = open_ws(&api, &format!("/ws/{c}")).await;
    let frame = json!({"op": "publish", "data": {"n": 3}, "topics": ["ws"]});
    publisher.send_json(&frame).await;
    let own = publisher.next_json(WAIT).await;
    assert_eq!(own["id"], json!(3), "{own}");
    publisher.close().await;

    // The envelopes as the hub encodes them, given each event's time as the WS frame shows it.
    let mut texts = Vec::new();
    for _ in 0..3 {
        match raw.next(WAIT).await {
            Some(Frame::Text(t)) => texts.push(t),
            other => panic!("a WS event frame's text, got {other:?} after {texts:?}"),
        }
    }
    let frames: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap_or_default())
        .collect();
    let envelope = |id: u64, kind: &str, topics: Option<&Value>| {
        let time = &frames[id as usize - 1]["time"];
        let channel = json!(c);
        let topics = topics.map_or_else(String::new, |t| format!(r#","topics":{t}"#));
        let head = format!(r#"{{"id":{id},"channel":{channel},"type":"{kind}"{topics}"#);
        format!(r#"{head},"data":{{"n":{id}}},"time":{time}}}"#)
    };
    let envelopes = [
        envelope(1, "t.x", Some(&topics)),
        envelope(2, "message", None),
        envelope(3, "message", Some(&json!(["ws"]))),
    ];
    for (text, envelope) in texts.iter().zip(&envelopes) {
        let want = format!(r#"{{"op":"event",{}"#, &envelope[1..]);
        assert_eq!(text, &want, "the WS frame's bytes");
    }
    assert!(
        frames[1].get("topics").is_none(),
        "no topics, no key: {}",
        texts[1]
    );

    for envelope in &envelopes {
        let e = many.next_event(WAIT).await;
        let data = e.map(|e| e.data).unwrap_or_default();
        assert_eq!(
            &data, envelope,
            "a multi-channel SSE event's data is the envelope"
        );
    }
    let events = single.events_through(3, WAIT).await;
    let datas: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(
        datas,
        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#],
        "single-channel SSE: data only"
    );

    assert_eq!(api.await_mirror(&c, 3).await, 3, "the mirror of {c}");
    let r = api.poll(&c, Some(0), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.text();
    for envelope in &envelopes {
        assert!(
            body.contains(envelope.as_str()),
            "the poll page holds {envelope}: {body}"
        );
    }
    let polled: Vec<Value> = r.json()["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(polled.len(), frames.len(), "{body}");
    for (envelope, frame) in polled.iter().zip(&frames) {
        let mut frame = frame.clone();
        if let Some(o) = frame.as_object_mut() {
            o.remove("op");
        }
        assert_eq!(
            envelope, &frame,
            "a poll envelope is the WS frame without op"
        );
    }
    raw.close().await;
}

/// The events of the filtering test, in publish order (ids 1..=11): each one's topics. The last
/// matches every filter of `catalogue_filters`, so a reader that has it has everything before.
const CATALOGUE: [&[&str]; 11] = [
    &[],
    &[BOOK_1],
    &["https://example.com/books/1/chapters/2"],
    &["plain", "https://shop.example/orders/7/lines"],
    &["https://example.com/books/1/"],
    &["https://example.com/books/abc?x=1#h"],
    &["books/1"],
    &["http://example.com/books/1"],
    &["Plain", "other"],
    &[BOOK_1, "plain"],
    &[BOOK_1, "plain", "other", "https://x.example/orders/1"],
];
/// Events 1..=SPLIT are published before the subscribers open, the rest after.
const SPLIT: usize = 6;

/// Each filter of the filtering test: its query, what it is, and the ids it lets through.
fn catalogue_filters() -> Vec<(String, &'static str, Vec<u64>)> {
    vec![
        (fq(&[BOOK_1], &[]), "exact, byte for byte", vec![2, 10, 11]),
        (
            fq(&["plain"], &[]),
            "exact, case-sensitive",
            vec![4, 10, 11],
        ),
        // Not 3 (a segment more), 5 (a trailing slash), 7 (not a URL), 8 (http); 6: search
        // and hash are wildcards when the pattern leaves them out.
        (fq(&[], &[BOOKS]), "pattern /books/:id", vec![2, 6, 10, 11]),
        (fq(&[], &[ORDERS]), "pattern *://*/orders/*", vec![4, 11]),
        (
            fq(&["other"], &[BOOKS]),
            "union of exact and pattern",
            vec![2, 6, 9, 10, 11],
        ),
    ]
}

/// Exact (byte for byte), pattern (URL Pattern: what it leaves out is a wildcard, a topic that
/// is not an absolute URL matches none) and union filters on single-channel SSE and WS, each
/// with a replay from 0 and live, and from now (live only). An event without topics matches no
/// filter; skipped ids are not gaps.
async fn topics_exact_pattern_and_union_filters_on_sse_and_ws_live_and_replay(api: Api) {
    let c = channel("tfilter");
    publish_topics(&api, &c, 1, &CATALOGUE[..SPLIT]).await;
    let mut subscribers = Vec::new();
    for (q, what, want) in catalogue_filters() {
        let replay = open_sse(&api, &format!("/sse/{c}?since=0&{q}"), None).await;
        let live = open_sse(&api, &format!("/sse/{c}?{q}"), None).await;
        let ws_replay = open_ws(&api, &format!("/ws/{c}?since=0&{q}")).await;
        let ws_live = open_ws(&api, &format!("/ws/{c}?{q}")).await;
        subscribers.push((what, want, [replay, live], [ws_replay, ws_live]));
    }
    publish_topics(&api, &c, SPLIT as u64 + 1, &CATALOGUE[SPLIT..]).await;
    let last = CATALOGUE.len() as u64;
    for (what, want, sse, ws) in &mut subscribers {
        let from_now: Vec<u64> = want.iter().copied().filter(|&i| i > SPLIT as u64).collect();
        for (s, (since, want)) in sse.iter_mut().zip([("0", &*want), ("now", &from_now)]) {
            let what = format!("SSE {what}, since {since}");
            assert_eq!(&sse_ids(s, last, &what).await, want, "{what}");
        }
        for (w, (since, want)) in ws.iter_mut().zip([("0", &*want), ("now", &from_now)]) {
            let what = format!("WS {what}, since {since}");
            let frames = ws_events(w, last, &what).await;
            assert_eq!(&frame_ids(&frames), want, "{what}");
            for f in &frames {
                let id = f["id"].as_u64().unwrap_or(0) as usize;
                let topics = json!(CATALOGUE[id - 1]);
                assert_eq!(
                    (&f["topics"], &f["channel"]),
                    (&topics, &json!(c)),
                    "{what}: {f}"
                );
            }
        }
    }
    for (_, _, _, ws) in subscribers {
        for w in ws {
            w.close().await;
        }
    }
}

/// A multi-channel SSE stream and WebSocket with a filter: it applies to every channel, in
/// replay and live, and (on the WebSocket) to a channel added with a `subscribe` frame, in its
/// replay and live. Each SSE `id:` is the stream cursor, which skips what does not match (no
/// gap); the union of `topic=` and `topic_pattern=` holds on the WebSocket.
async fn topics_multi_channel_sse_and_ws_filter_every_channel_even_one_added_later(api: Api) {
    let chans: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| channel(&format!("tmulti{n}")))
        .collect();
    let (a, b, c) = (&chans[0], &chans[1], &chans[2]);
    let (hot, cold, order) = (
        &["hot"][..],
        &["cold"][..],
        &["https://s.example/orders/3"][..],
    );
    publish_topics(&api, a, 1, &[hot, cold, order, &["hot", "cold"]]).await;
    publish_topics(&api, b, 1, &[cold, hot]).await;
    publish_topics(&api, c, 1, &[cold, &["https://s.example/orders/9"], &[]]).await;
    let ab = &chans[..2];
    let since = enc(&cursor(&[(a, 0), (b, 0)]));
    let q = chans_query(ab);
    let path = format!("/sse?{q}&since={since}&{}", fq(&["hot"], &[]));
    let mut sse = open_sse(&api, &path, None).await;
    let opening = sse.next_id_only_block(WAIT).await;
    assert_eq!(
        opening,
        Some(cursor(&[(a, 0), (b, 0)])),
        "the opening block"
    );
    let path = format!("/ws?{q}&since={since}&{}", fq(&["hot"], &[ORDERS]));
    let mut ws = open_ws(&api, &path).await;

    let mut at: BTreeMap<String, u64> = ab.iter().map(|c| (c.clone(), 0)).collect();
    let want = [on(a, &[1, 4]), on(b, &[2])].concat();
    let (got, envelopes) = sse_many(&mut sse, &mut at, ab, &want, "SSE replay").await;
    assert_eq!(by_channel(&got, "SSE replay"), want, "SSE replay");
    for env in &envelopes {
        let has = env["topics"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("hot")));
        assert!(has, "SSE: only events with a matching topic: {env}");
    }
    let want = [on(a, &[1, 3, 4]), on(b, &[2])].concat();
    let (got, _) = ws_many(&mut ws, &want, "WS replay").await;
    assert_eq!(
        by_channel(&got, "WS replay"),
        want,
        "WS replay, hot or an order"
    );

    publish_topics(&api, a, 5, &[cold, hot]).await;
    publish_topics(&api, b, 3, &[&[], hot]).await;
    let want = [on(a, &[6]), on(b, &[4])].concat();
    let (got, _) = sse_many(&mut sse, &mut at, ab, &want, "SSE live").await;
    assert_eq!(by_channel(&got, "SSE live"), want, "SSE live");
    let (got, _) = ws_many(&mut ws, &want, "WS live").await;
    assert_eq!(by_channel(&got, "WS live"), want, "WS live");

    // c joins the WebSocket from 0: its replay and its live events are filtered too.
    ws.send_json(&json!({"op": "subscribe", "channel": c, "since": 0}))
        .await;
    let f = ws.next_json(WAIT).await;
    assert_eq!(
        (&f["op"], &f["channel"]),
        (&json!("subscribed"), &json!(c)),
        "{f}"
    );
    let (got, _) = ws_many(&mut ws, &on(c, &[2]), "c's replay").await;
    assert_eq!(got, on(c, &[2]), "c's replay: only the order");
    publish_topics(&api, c, 4, &[hot, cold, &["https://s.example/order/1"]]).await;
    publish_topics(&api, a, 7, &[cold]).await;
    let (got, _) = ws_many(&mut ws, &on(c, &[4]), "c live").await;
    assert_eq!(got, on(c, &[4]), "c live: only hot");
    ws_nothing_more(&mut ws, "WS").await;
    assert_eq!(
        sse.next_event(QUIET).await,
        None,
        "SSE: nothing of a's cold 7"
    );
    assert_eq!(
        sse.parser.last_event_id,
        cursor(&[(a, 6), (b, 4)]),
        "the SSE cursor"
    );
    ws.close().await;
}

/// A filtered SSE stream resumed with `Last-Event-ID` = the last id it got delivers exactly
/// the later matching events, none twice and none lost (the header wins over `since`); then
/// live ones. Single-channel, then multi-channel with the stream cursor.
async fn topics_a_filtered_sse_resumes_from_last_event_id_exactly_once(api: Api) {
    let (x, y) = (&["x"][..], &["y"][..]);
    let c = channel("tresume");
    let q = fq(&["x"], &[]);
    publish_topics(&api, &c, 1, &[x, y, x, y]).await;
    let mut s = open_sse(&api, &format!("/sse/{c}?since=0&{q}"), None).await;
    assert_eq!(sse_ids(&mut s, 3, "before").await, vec![1, 3], "before");
    let last = s.parser.last_event_id.clone();
    assert_eq!(last, "3");
    drop(s);
    publish_topics(&api, &c, 5, &[y, x, &[], x, y]).await;
    let mut s = open_sse(&api, &format!("/sse/{c}?since=0&{q}"), Some(&last)).await;
    assert_eq!(
        sse_ids(&mut s, 8, "resumed").await,
        vec![6, 8],
        "resumed after 3"
    );
    assert_eq!(
        s.next_event(QUIET).await,
        None,
        "nothing more: 9 does not match"
    );
    publish_topics(&api, &c, 10, &[y, x]).await;
    assert_eq!(sse_ids(&mut s, 11, "live").await, vec![11], "then live");

    let chans: Vec<String> = ["p", "q"]
        .iter()
        .map(|n| channel(&format!("tresume{n}")))
        .collect();
    let (p, r) = (&chans[0], &chans[1]);
    publish_topics(&api, p, 1, &[x, y]).await;
    publish_topics(&api, r, 1, &[y, x]).await;
    let since = enc(&cursor(&[(p, 0), (r, 0)]));
    let path = format!("/sse?{}&since={since}&{q}", chans_query(&chans));
    let mut s = open_sse(&api, &path, None).await;
    let mut at: BTreeMap<String, u64> = chans.iter().map(|c| (c.clone(), 0)).collect();
    let want = [on(p, &[1]), on(r, &[2])].concat();
    let (got, _) = sse_many(&mut s, &mut at, &chans, &want, "multi before").await;
    assert_eq!(by_channel(&got, "multi before"), want, "multi before");
    let last = s.parser.last_event_id.clone();
    assert_eq!(last, cursor(&[(p, 1), (r, 2)]), "the stream cursor");
    drop(s);
    publish_topics(&api, p, 3, &[x, y]).await;
    publish_topics(&api, r, 3, &[y, x, y]).await;
    let mut s = open_sse(&api, &path, Some(&last)).await;
    assert_eq!(
        s.next_id_only_block(WAIT).await,
        Some(last.clone()),
        "resumed opening"
    );
    let want = [on(p, &[3]), on(r, &[4])].concat();
    let (got, _) = sse_many(&mut s, &mut at, &chans, &want, "multi resumed").await;
    assert_eq!(by_channel(&got, "multi resumed"), want, "multi resumed");
    assert_eq!(s.next_event(QUIET).await, None, "nothing more");
}

/// Flow control owes nothing for what a filter kept back. On a hub with the smallest window,
/// WebSockets filtering on a topic no event has (single-channel and multi-channel) stay open
/// while the channel carries megabytes of other events, with silences of over a second, and
/// get the one matching event that follows; a non-reporting unfiltered WebSocket, the control,
/// is closed with 4001. Filtered replays from 0 over all of it (WS single and multi, SSE) get
/// the matching event and no 4001.
async fn topics_a_filtered_ws_owes_nothing_for_events_its_filter_kept_from_it(_: Api) {
    use crate::slow::{own_hub, LIMIT, PAD, RETAIN_ALL};
    const ROUNDS: u64 = 6;
    const PER_ROUND: u64 = 64;
    let hub = own_hub(RETAIN_ALL).await;
    let api = Api::new(hub.base());
    let c = channel("tflow");
    let q = fq(&["wanted"], &[]);
    let mut single = open_ws(&api, &format!("/ws/{c}?{q}")).await;
    let mut many = open_ws(&api, &format!("/ws?channel={c}&{q}")).await;
    let mut sse = open_sse(&api, &format!("/sse/{c}?{q}"), None).await;
    let mut control = open_ws(&api, &format!("/ws/{c}")).await;
    control.set_reporting(false);
    control.set_raw(true);

    let pad = "x".repeat(PAD);
    for round in 0..ROUNDS {
        let first = round * PER_ROUND + 1;
        let batch: Vec<Value> = (first..first + PER_ROUND)
            .map(|k| match k % 2 {
                0 => json!({"data": {"k": k, "pad": pad}, "topics": ["unwanted"]}),
                _ => json!({"data": {"k": k, "pad": pad}}),
            })
            .collect();
        let r = api.publish(&c, &Value::Array(batch), &admin()).await;
        assert_eq!(r.status, 201, "round {round}: {}", r.text());
        assert_eq!(ids(&r.json()).first(), Some(&first), "round {round}");
        // More than a second of silence, so a client owing a window would be let go.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    let last = ROUNDS * PER_ROUND + 1;
    let body = json!({"data": {"n": last}, "topics": ["other", "wanted"]});
    let r = api.publish(&c, &body, &admin()).await;
    assert_eq!(
        ids(&r.json()),
        vec![last],
        "the matching event: {}",
        r.text()
    );
    let bytes = ROUNDS * PER_ROUND * PAD as u64;
    eprintln!("e2e: topics: {bytes} B of other events on a hub with a {LIMIT} B window");

    let frames = ws_events(&mut single, last, "the filtered WS").await;
    assert_eq!(
        frame_ids(&frames),
        vec![last],
        "the filtered WS, still open"
    );
    assert!(single.ping(WAIT).await, "the filtered WS stays open");
    let (got, _) = ws_many(&mut many, &on(&c, &[last]), "the filtered multi WS").await;
    assert_eq!(
        got,
        on(&c, &[last]),
        "the filtered multi-channel WS, still open"
    );
    assert!(
        many.ping(WAIT).await,
        "the filtered multi-channel WS stays open"
    );
    let events = sse.events_through(last, WAIT).await;
    assert_eq!(
        events.iter().filter_map(SseEvent::id).collect::<Vec<_>>(),
        vec![last],
        "SSE"
    );

    let (mut close, started) = (None, Instant::now());
    for _ in 0..2 * last {
        match control.next(Duration::from_secs(5)).await {
            Some(Frame::Closed(c)) => {
                close = Some(c);
                break;
            }
            None if started.elapsed() > Duration::from_secs(60) => break,
            _ => {}
        }
    }
    let code = close.flatten().map(|(code, _)| code);
    assert_eq!(
        code,
        Some(4001),
        "the unfiltered control that never reports is let go"
    );

    let mut replay = open_ws(&api, &format!("/ws/{c}?since=0&{q}")).await;
    replay.set_reporting(false);
    let frames = ws_events(&mut replay, last, "the filtered WS replay").await;
    assert_eq!(
        frame_ids(&frames),
        vec![last],
        "the filtered WS replay from 0"
    );
    assert!(replay.ping(WAIT).await, "the filtered WS replay stays open");
    let mut replay_many = open_ws(&api, &format!("/ws?channel={c}&since=0&{q}")).await;
    let (got, _) = ws_many(&mut replay_many, &on(&c, &[last]), "the multi replay").await;
    assert_eq!(
        got,
        on(&c, &[last]),
        "the filtered multi-channel WS replay from 0"
    );
    assert!(
        replay_many.ping(WAIT).await,
        "the multi-channel replay stays open"
    );
    let mut sse_replay = open_sse(&api, &format!("/sse/{c}?since=0&{q}"), None).await;
    assert_eq!(
        sse_ids(&mut sse_replay, last, "SSE replay").await,
        vec![last],
        "SSE replay"
    );
    for ws in [single, many, replay, replay_many] {
        ws.close().await;
    }
    hub.cleanup().await;
}

/// Every bad filter (a relative or broken pattern, an empty, too long or control-character
/// matcher, more than 32 matchers or 8,192 bytes of them, bad percent-encoding) is a 400
/// problem on `/sse/{c}`, `/ws/{c}`, `/sse?channel=…` and `/ws?channel=…`; filters at the
/// limits open.
async fn topics_bad_filters_are_400_on_sse_and_ws_single_and_multi(api: Api) {
    let (c, d) = (channel("tbad"), channel("tbad"));
    let routes = [
        format!("/sse/{c}?"),
        format!("/ws/{c}?"),
        format!("/sse?channel={c}&channel={d}&"),
        format!("/ws?channel={c}&channel={d}&"),
    ];
    for route in &routes {
        for (q, what) in bad_filters() {
            let r = answer(&api, &format!("{route}{q}")).await;
            assert_problem(&r, 400, "bad_request", &format!("{route}: {what}"));
        }
        for (q, what) in filters_at_the_limits() {
            let r = answer(&api, &format!("{route}{q}")).await;
            let want = if route.starts_with("/ws") { 101 } else { 200 };
            assert_eq!(r.status, want, "{route}: {what}: {}", r.text());
        }
    }
}

/// The same bad filters are a 400 problem on `/poll/{c}` and `/poll?channel=…`, and filters at
/// the limits are answered.
async fn topics_bad_filters_are_400_on_poll_single_and_multi(api: Api) {
    let (c, d) = (channel("tbadpoll"), channel("tbadpoll"));
    let routes = [
        format!("/poll/{c}?since=0&"),
        format!("/poll?channel={c}&channel={d}&since=0&"),
    ];
    for route in &routes {
        for (q, what) in bad_filters() {
            let r = answer(&api, &format!("{route}{q}")).await;
            assert_problem(&r, 400, "bad_request", &format!("{route}: {what}"));
        }
        for (q, what) in filters_at_the_limits() {
            let r = answer(&api, &format!("{route}{q}")).await;
            assert_eq!(r.status, 200, "{route}: {what}: {}", r.text());
        }
    }
}

/// Follows a filtered single-channel poll (`q`) from `since` at `limit` until `more` is false
/// (bounded). Each page holds exactly the matching ids (`matching`) after its cursor up to its
/// `next`, which is at most `head`, with `more` true just when `next` is below it; `next`
/// never goes back. Returns every page.
async fn walk_poll(
    api: &Api,
    c: &str,
    q: &str,
    since: u64,
    limit: u32,
    matching: &[u64],
    head: u64,
) -> Vec<Value> {
    let (mut at, mut pages) = (since, Vec::new());
    for _ in 0..=head {
        let page = poll_page(api, &format!("/poll/{c}?since={at}&limit={limit}&{q}")).await;
        let what = format!("{q} since {at} limit {limit}: {page}");
        let next = page["next"].as_u64().unwrap_or(0);
        assert!(at <= next && next <= head, "`next` of {what}");
        let want: Vec<u64> = matching
            .iter()
            .copied()
            .filter(|&i| i > at && i <= next)
            .collect();
        assert_eq!(
            page_pairs(&page),
            on(c, &want),
            "the matching events up to `next`: {what}"
        );
        assert!(want.len() <= limit as usize, "{what}");
        assert_eq!(page["more"], json!(next < head), "`more` of {what}");
        let more = next < head;
        pages.push(page);
        at = next;
        if !more {
            break;
        }
    }
    pages
}

/// A filtered single-channel poll returns only matching events (exact, pattern, union); its
/// `next` is the last id it examined, so once the matching events are consumed it is the head
/// even when the last events do not match, and `more` is false; with `limit`, following `next`
/// walks every matching event exactly once.
async fn topics_poll_returns_matching_events_and_next_is_the_last_id_examined(api: Api) {
    let c = channel("tpoll");
    let (x, y) = (&["x"][..], &["y"][..]);
    let book = &[BOOK_1][..];
    publish_topics(&api, &c, 1, &[y, x, &[], book, x, x, y, &[], book, y]).await;
    assert_eq!(api.await_mirror(&c, 10).await, 10, "the mirror of {c}");
    let cases = [
        (fq(&["x"], &[]), vec![2, 5, 6]),
        (fq(&[], &[BOOKS]), vec![4, 9]),
        (fq(&["x"], &[BOOKS]), vec![2, 4, 5, 6, 9]),
        (fq(&["none"], &[]), vec![]),
    ];
    for (q, matching) in &cases {
        let page = poll_page(&api, &format!("/poll/{c}?since=0&{q}")).await;
        assert_eq!(page_pairs(&page), on(&c, matching), "{q}: {page}");
        let got = (&page["next"], &page["more"], &page["head"]);
        assert_eq!(got, (&json!(10), &json!(false), &json!(10)), "{q}: {page}");
        for e in page["events"].as_array().into_iter().flatten() {
            assert_eq!(e["data"], json!({"n": e["id"]}), "{q}: {e}");
        }
        for limit in [1, 2] {
            let pages = walk_poll(&api, &c, q, 0, limit, matching, 10).await;
            let walked: Pairs = pages.iter().flat_map(page_pairs).collect();
            assert_eq!(
                walked,
                on(&c, matching),
                "{q} at limit {limit}: every match once"
            );
            let last = pages.last().map(|p| p["next"].clone());
            assert_eq!(
                last,
                Some(json!(10)),
                "{q} at limit {limit}: the walk ends at the head"
            );
        }
    }
    // Past the last match, the answer is empty and moves the cursor to the head.
    let page = poll_page(&api, &format!("/poll/{c}?since=6&{}", fq(&["x"], &[]))).await;
    let got = (page_pairs(&page), &page["next"], &page["more"]);
    assert_eq!(got, (vec![], &json!(10), &json!(false)), "since 6: {page}");
    let page = poll_page(
        &api,
        &format!("/poll/{c}?since=0&limit=1&{}", fq(&["x"], &[])),
    )
    .await;
    assert_eq!(page_pairs(&page), on(&c, &[2]), "{page}");
    assert_eq!(page["more"], json!(true), "stopped below the head: {page}");
}

/// A filtered multi-channel poll returns only matching events of every channel; its `next`
/// moves each channel to the last id examined there (the head once its matches are consumed);
/// with `limit`, following `next` walks every matching event exactly once.
async fn topics_multi_channel_poll_filters_every_channel_and_next_is_examined(api: Api) {
    let chans: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| channel(&format!("tmpoll{n}")))
        .collect();
    let (a, b) = (&chans[0], &chans[1]);
    let (x, y) = (&["x"][..], &["y"][..]);
    publish_topics(&api, a, 1, &[x, y, x, y]).await;
    publish_topics(&api, b, 1, &[y, &[], x]).await;
    assert_eq!(api.await_mirror(a, 4).await, 4, "the mirror of {a}");
    assert_eq!(api.await_mirror(b, 3).await, 3, "the mirror of {b}");
    let (q, f) = (chans_query(&chans), fq(&["x"], &[]));
    let heads = cursor(&[(a, 4), (b, 3)]);
    let want = [on(a, &[1, 3]), on(b, &[3])].concat();

    let zero = enc(&cursor(&[(a, 0), (b, 0)]));
    let page = poll_page(&api, &format!("/poll?{q}&since={zero}&{f}")).await;
    assert_eq!(
        by_channel(&page_pairs(&page), "since 0"),
        want,
        "since 0: {page}"
    );
    assert_eq!(
        (&page["next"], &page["more"]),
        (&json!(heads), &json!(false)),
        "{page}"
    );
    let past = enc(&cursor(&[(a, 3), (b, 3)]));
    let page = poll_page(&api, &format!("/poll?{q}&since={past}&{f}")).await;
    let got = (page_pairs(&page), &page["next"], &page["more"]);
    assert_eq!(
        got,
        (vec![], &json!(heads), &json!(false)),
        "past every match: {page}"
    );

    let (mut at, mut walked) = (cursor(&[(a, 0), (b, 0)]), Vec::new());
    for _ in 0..10 {
        let page = poll_page(&api, &format!("/poll?{q}&since={}&limit=1&{f}", enc(&at))).await;
        let got = page_pairs(&page);
        assert!(got.len() <= 1, "limit 1: {page}");
        let next = page["next"].as_str().unwrap_or_default().to_string();
        let ids: BTreeMap<&str, u64> = next
            .split(',')
            .filter_map(|p| p.rsplit_once('='))
            .map(|(c, id)| (c, id.parse().unwrap_or(u64::MAX)))
            .collect();
        let below = ids.get(a.as_str()) < Some(&4) || ids.get(b.as_str()) < Some(&3);
        assert!(
            ids.get(a.as_str()) <= Some(&4) && ids.get(b.as_str()) <= Some(&3),
            "{page}"
        );
        assert_eq!(
            page["more"],
            json!(below),
            "`more` is true just below a head: {page}"
        );
        walked.extend(got);
        at = next;
        if !below {
            break;
        }
    }
    assert_eq!(
        by_channel(&walked, "walk"),
        want,
        "limit 1: every match exactly once"
    );
    assert_eq!(at, heads, "the walk ends at the heads");
}

/// A poll's `ETag` differs with its filter (none, exact, another exact, a pattern), single and
/// multi-channel: another filter's tag never gets a 304, the same filter's does.
async fn topics_poll_etag_differs_with_the_filter(api: Api) {
    let chans: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| channel(&format!("tetag{n}")))
        .collect();
    let (a, b) = (&chans[0], &chans[1]);
    publish_topics(&api, a, 1, &[&["x"], &["y"], &[BOOK_1]]).await;
    publish_topics(&api, b, 1, &[&["y"]]).await;
    assert_eq!(api.await_mirror(a, 3).await, 3, "the mirror of {a}");
    assert_eq!(api.await_mirror(b, 1).await, 1, "the mirror of {b}");
    let filters = [
        "".to_string(),
        fq(&["x"], &[]),
        fq(&["y"], &[]),
        fq(&[], &[BOOKS]),
    ];
    let zero = enc(&cursor(&[(a, 0), (b, 0)]));
    let bases = [
        format!("/poll/{a}?since=0"),
        format!("/poll?{}&since={zero}", chans_query(&chans)),
    ];
    for base in &bases {
        let mut tags = Vec::new();
        for f in &filters {
            let path = match f.is_empty() {
                true => base.clone(),
                false => format!("{base}&{f}"),
            };
            let r = api.get(&path, Some(&admin())).await;
            let etag = r.header("etag").unwrap_or_default();
            assert!(
                r.status == 200 && !etag.is_empty(),
                "{path}: {} {etag:?}",
                r.status
            );
            let again = get_if_none_match(&api, &path, &etag).await;
            assert_eq!(
                again.status,
                304,
                "{path} with its own ETag: {}",
                again.text()
            );
            tags.push((path, etag));
        }
        for (i, (path, etag)) in tags.iter().enumerate() {
            for (other, theirs) in tags.iter().skip(i + 1) {
                assert_ne!(etag, theirs, "{path} and {other} have one ETag");
                let r = get_if_none_match(&api, other, etag).await;
                assert_eq!(
                    r.status,
                    200,
                    "{other} with the ETag of {path}: {}",
                    r.text()
                );
            }
        }
    }
}
