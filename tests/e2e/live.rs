//! Live delivery across transports: order under concurrency for subscribers joining mid-publish,
//! one cursor resuming poll, SSE and WebSocket alike, gaps for a cursor ahead of the head,
//! subscriber counts as clients come and go, and idle subscribers surviving hibernation.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use serde_json::{json, Value};

use crate::api::{admin, channel, ids, Api};
use crate::harness::SHARED_HEARTBEAT_SECONDS;
use crate::sse_client::{event_ids, sse_path, SseStream};
use crate::ws_client::{frame_ids, WsClient};
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(order_holds_for_40_subscribers_joining_during_300_publishes),
        case!(one_cursor_resumes_poll_sse_and_ws),
        case!(a_cursor_ahead_of_the_head_is_a_gap_on_sse_and_ws),
        case!(subscriber_counts_fall_when_sse_and_ws_clients_leave),
        case!(idle_subscribers_survive_hibernation_of_the_channel_object),
    ]
}

const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(700);

async fn publish(api: &Api, c: &str, body: Value) -> Vec<u64> {
    let r = api.publish(c, &body, &admin()).await;
    assert_eq!(r.status, 201, "publish {body}: {}", r.text());
    ids(&r.json())
}

/// `GET /channels/{c}`, read whole.
pub async fn info(api: &Api, c: &str) -> Value {
    let r = api.info(c).await;
    assert_eq!(r.status, 200, "GET /channels/{c}: {}", r.text());
    r.json()
}

/// A small xorshift generator: random join moments without another dependency.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }
    /// A number from `lo` to `hi`, both included.
    pub fn within(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo + 1)
    }
}

async fn order_holds_for_40_subscribers_joining_during_300_publishes(api: Api) {
    const EVENTS: u64 = 300;
    const PER_TRANSPORT: usize = 20;
    let c = channel("order");
    let mut rng = Rng::seeded();
    let seed = rng.0;
    let (published, watch) = tokio::sync::watch::channel(0u64);
    let mut subscribers = Vec::new();
    for n in 0..2 * PER_TRANSPORT {
        // Each joins once the publisher has reached its random moment.
        let moment = rng.within(0, EVENTS - 1);
        let (api, c, mut watch) = (api.clone(), c.clone(), watch.clone());
        subscribers.push(tokio::spawn(async move {
            // Generous: under a loaded runtime 300 publishes can take a while.
            let publishing = Duration::from_secs(240);
            let reached = tokio::time::timeout(publishing, watch.wait_for(|p| *p >= moment))
                .await
                .is_ok_and(|r| r.is_ok());
            assert!(reached, "the publisher never reached {moment}");
            let tok = admin();
            let read = Duration::from_secs(120);
            let (kind, joined_at, ids) = if n % 2 == 0 {
                let mut s = SseStream::subscribe(&api, &c, Some(0), Some(&tok)).await;
                let joined_at = *watch.borrow();
                (
                    "sse",
                    joined_at,
                    event_ids(&s.events_through(EVENTS, read).await),
                )
            } else {
                let (mut ws, head) = WsClient::subscribe(&api, &c, Some(0), Some(&tok)).await;
                (
                    "ws",
                    head,
                    frame_ids(&ws.frames_through(EVENTS, read).await),
                )
            };
            (kind, joined_at, ids)
        }));
    }
    for i in 1..=EVENTS {
        assert_eq!(publish(&api, &c, json!({"data": {"i": i}})).await, vec![i]);
        let _ = published.send(i);
    }
    let want: Vec<u64> = (1..=EVENTS).collect();
    let mut during = 0;
    for joined in join_all(subscribers).await {
        let (kind, joined_at, got) = joined.expect("a subscriber task failed");
        assert_eq!(
            got, want,
            "{kind} subscriber that joined at head {joined_at} (seed {seed})"
        );
        during += usize::from(joined_at < EVENTS);
    }
    // Joins are spread over the publishing; most must land before its end to test anything.
    eprintln!(
        "e2e: order: {during} of {} subscribers joined mid-publish",
        2 * PER_TRANSPORT
    );
    assert!(
        during >= PER_TRANSPORT / 2,
        "only {during} joined mid-publish (seed {seed})"
    );
}

async fn one_cursor_resumes_poll_sse_and_ws(api: Api) {
    let c = channel("cursor");
    let tok = admin();
    let batch: Vec<Value> = (1..=20)
        .map(|i| json!({"type": "n", "data": {"i": i}}))
        .collect();
    assert_eq!(publish(&api, &c, json!(batch)).await.len(), 20);
    assert_eq!(api.await_mirror(&c, 20).await, 20);
    let page = api.poll(&c, Some(0), Some(7)).await.json();
    let cursor = page["next"].as_u64().expect("a poll cursor");
    assert_eq!(cursor, 7);
    let (polled, _) = api.poll_all(&c, 0, 100, 2).await;
    let want: Vec<u64> = (cursor + 1..=20).collect();

    let bearer = format!("Bearer {tok}");
    let by_header = [("authorization", bearer.as_str()), ("last-event-id", "7")];
    let mut sse_header = SseStream::open(&api, &sse_path(&c, None), &by_header)
        .await
        .expect("SSE with Last-Event-ID");
    let mut sse_since = SseStream::subscribe(&api, &c, Some(cursor), Some(&tok)).await;
    let (mut ws, head) = WsClient::subscribe(&api, &c, Some(cursor), Some(&tok)).await;
    assert_eq!(head, 20);
    for (what, s) in [
        ("SSE Last-Event-ID", &mut sse_header),
        ("SSE ?since", &mut sse_since),
    ] {
        let got = s.events_through(20, WAIT).await;
        assert_eq!(event_ids(&got), want, "{what} from the poll's cursor");
        for e in &got {
            let id = e.id().unwrap_or(0) as usize;
            assert_eq!(e.json(), polled[id - 1]["data"], "{what}: data of {id}");
            assert_eq!(e.kind, "n");
        }
        assert_eq!(s.next_event(QUIET).await, None, "{what}: nothing more");
    }
    let frames = ws.frames_through(20, WAIT).await;
    assert_eq!(frame_ids(&frames), want, "WS ?since from the poll's cursor");
    for f in &frames {
        let mut envelope = polled[f["id"].as_u64().unwrap_or(0) as usize - 1].clone();
        envelope["op"] = json!("event");
        assert_eq!(f, &envelope);
    }
    assert_eq!(ws.next(QUIET).await, None, "WS: nothing more");

    // An id read from SSE resumes a WebSocket and a poll; an id from a WebSocket resumes SSE.
    let mut sse = SseStream::subscribe(&api, &c, Some(15), Some(&tok)).await;
    let first = sse.next_event(WAIT).await.expect("an SSE event after 15");
    let sse_id: u64 = first.last_event_id.parse().expect("a numeric SSE id");
    assert_eq!(sse_id, 16);
    let (mut ws2, _) = WsClient::subscribe(&api, &c, Some(sse_id), Some(&tok)).await;
    let frames = ws2.frames_through(20, WAIT).await;
    assert_eq!(
        frame_ids(&frames),
        vec![17, 18, 19, 20],
        "WS from an SSE id"
    );
    let (tail, _) = api.poll_all(&c, sse_id, 100, 2).await;
    let polled_ids: Vec<u64> = tail.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(polled_ids, vec![17, 18, 19, 20], "poll from an SSE id");
    let ws_id = frames[1]["id"].as_u64().expect("a WS id");
    let last = ws_id.to_string();
    let headers = [
        ("authorization", bearer.as_str()),
        ("last-event-id", last.as_str()),
    ];
    let mut sse2 = SseStream::open(&api, &sse_path(&c, None), &headers)
        .await
        .expect("SSE from a WS id");
    assert_eq!(
        event_ids(&sse2.events_through(20, WAIT).await),
        vec![19, 20],
        "SSE from a WS id"
    );
    ws.close().await;
    ws2.close().await;
}

async fn a_cursor_ahead_of_the_head_is_a_gap_on_sse_and_ws(api: Api) {
    let c = channel("ahead");
    let tok = admin();
    assert_eq!(
        publish(&api, &c, json!([{"data": 1}, {"data": 2}, {"data": 3}])).await,
        vec![1, 2, 3]
    );
    let (mut ws, head) = WsClient::subscribe(&api, &c, Some(10), Some(&tok)).await;
    assert_eq!(head, 3);
    let frames = ws.frames_through(3, WAIT).await;
    assert_eq!(
        frames.first(),
        Some(&json!({"op": "gap", "requested": 10, "earliest": 1})),
        "{frames:?}"
    );
    assert_eq!(
        frame_ids(&frames),
        vec![1, 2, 3],
        "after the gap, what is retained"
    );

    let bearer = format!("Bearer {tok}");
    let by_header = [("authorization", bearer.as_str()), ("last-event-id", "10")];
    let mut by_id = SseStream::open(&api, &sse_path(&c, None), &by_header)
        .await
        .expect("SSE");
    let mut by_since = SseStream::subscribe(&api, &c, Some(10), Some(&tok)).await;
    for (what, s) in [
        ("Last-Event-ID: 10", &mut by_id),
        ("?since=10", &mut by_since),
    ] {
        let got = s.events_through(3, WAIT).await;
        let gap = got.first().expect("a gap event");
        assert_eq!(
            (gap.kind.as_str(), gap.json()),
            ("gap", json!({"requested": 10, "earliest": 1})),
            "{what}"
        );
        assert_eq!(gap.last_event_id, "", "{what}: a gap carries no id");
        assert_eq!(event_ids(&got), vec![1, 2, 3], "{what}");
        let wire = String::from_utf8_lossy(&s.raw).into_owned();
        assert!(
            wire.contains("\n\nevent: gap\ndata: {\"requested\":10,\"earliest\":1}\n\nid: 1\n"),
            "{what}: gap framing {wire:?}"
        );
    }
    assert_eq!(publish(&api, &c, json!({"data": 4})).await, vec![4]);
    assert_eq!(frame_ids(&ws.frames_through(4, WAIT).await), vec![4]);
    assert_eq!(event_ids(&by_since.events_through(4, WAIT).await), vec![4]);
    // A poll cannot tell the future from mirror lag: no gap there, and `next` stays.
    assert_eq!(api.await_mirror(&c, 4).await, 4);
    let page = api.poll(&c, Some(10), None).await.json();
    assert_eq!(
        (&page["events"], &page["next"], page.get("gap")),
        (&json!([]), &json!(10), None)
    );
    ws.close().await;
}

/// Polls the channel's subscriber counts until they equal `want` or `limit` passes; returns the
/// time it took, or `None` with the last counts.
async fn await_counts(api: &Api, c: &str, want: Value, limit: Duration) -> Result<Duration, Value> {
    let started = Instant::now();
    let mut last = Value::Null;
    for _ in 0..400 {
        last = info(api, c).await["subscribers"].clone();
        if last == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

async fn subscriber_counts_fall_when_sse_and_ws_clients_leave(api: Api) {
    let c = format!("public:{}", channel("counts"));
    let counts = |sse: u64, ws: u64| json!({"sse": sse, "ws": ws});
    assert_eq!(info(&api, &c).await["subscribers"], counts(0, 0));
    let mut sse = Vec::new();
    for _ in 0..3 {
        sse.push(SseStream::subscribe(&api, &c, None, None).await);
    }
    let (clean, _) = WsClient::subscribe(&api, &c, None, None).await;
    let (abrupt, _) = WsClient::subscribe(&api, &c, None, None).await;
    let up = await_counts(&api, &c, counts(3, 2), Duration::from_secs(10)).await;
    assert!(up.is_ok(), "counts after 3 SSE and 2 WS joined: {up:?}");

    clean.close().await;
    drop(abrupt);
    let ws_gone = await_counts(&api, &c, counts(3, 0), Duration::from_secs(5)).await;
    assert!(
        ws_gone.is_ok(),
        "WS clients that left must leave at once: {ws_gone:?}"
    );

    drop(sse);
    // The bridge learns a client has gone when a heartbeat write fails; docs/API.md#sse promises
    // within one HEARTBEAT_SECONDS. Regression guard: with one write per heartbeat period this
    // took three periods under `wrangler dev` (5-6 s at 2 s). One period plus 1.5 s of slack.
    let limit = Duration::from_millis(SHARED_HEARTBEAT_SECONDS * 1000 + 1500);
    let sse_gone = await_counts(&api, &c, counts(0, 0), limit).await;
    assert!(
        sse_gone.is_ok(),
        "SSE clients gone: counts after {limit:?}: {sse_gone:?}"
    );
    eprintln!(
        "e2e: counts fell after WS close in {ws_gone:?}, after SSE disconnect in {sse_gone:?}"
    );
}

/// Hibernation is real. Found empirically on wrangler 4.86 (workerd 2026-04-26): the local
/// runtime evicts an idle channel object, hibernatable SSE-bridge and WS sockets attached, about
/// 10 s after its last request (idle 9.5 s: same instance; 9.8 s and more: a new one). So the
/// first try idles 15 s; the longer ones are a bounded fallback for a slower runtime.
/// `GET /channels` wakes the object, so the instance is read once before the idle time and once
/// after the publish that ends it.
async fn idle_subscribers_survive_hibernation_of_the_channel_object(api: Api) {
    const IDLE_TRIES: [u64; 3] = [15, 30, 75];
    let c = format!("public:{}", channel("hibernate"));
    let mut before = info(&api, &c).await["object"]["instance"].clone();
    let mut sse = SseStream::subscribe(&api, &c, None, None).await;
    let (mut ws, _) = WsClient::subscribe(&api, &c, None, None).await;
    let mut evicted_after = None;
    for (n, idle) in IDLE_TRIES.into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(idle)).await;
        let id = n as u64 + 1;
        assert_eq!(
            publish(&api, &c, json!({"data": {"after_idle_s": idle}})).await,
            vec![id]
        );
        let got = sse.events_through(id, WAIT).await;
        assert_eq!(event_ids(&got), vec![id], "SSE after {idle} s idle");
        assert_eq!(
            frame_ids(&ws.frames_through(id, WAIT).await),
            vec![id],
            "WS after {idle} s idle"
        );
        let now = info(&api, &c).await;
        assert_eq!(
            now["subscribers"],
            json!({"sse": 1, "ws": 1}),
            "after {idle} s idle"
        );
        let after = now["object"]["instance"].clone();
        eprintln!("e2e: hibernation: idle {idle} s: instance {before} -> {after}");
        if after != before {
            evicted_after = Some(idle);
            break;
        }
        before = after;
    }
    assert!(
        evicted_after.is_some(),
        "the object was never evicted, even after {IDLE_TRIES:?} s idle"
    );
    assert!(
        ws.ping(WAIT).await,
        "the WebSocket still answers after hibernation"
    );
    ws.close().await;
}
