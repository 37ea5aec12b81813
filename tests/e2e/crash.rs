//! Crash safety: 2,000 keyed publishes while the runtime is SIGKILLed three times at random
//! moments and restarted on the same persist dir (on new ports, which every client follows).
//! Every acknowledged event is stored exactly once with ids 1..=N, the same on poll, SSE and
//! WebSocket replay, and an SSE and a WebSocket subscriber that resume with their cursor after
//! each kill hold the whole sequence exactly once (nothing is deduplicated here).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{admin, channel, Api};
use crate::harness::{Hub, HubOptions};
use crate::idempotency::publish_keyed;
use crate::live::{info, Rng};
use crate::sse_client::SseStream;
use crate::sse_parser::Item;
use crate::ws_client::{ws_path, Frame, WsClient};
use crate::{case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![case_own_hub!(
        crash_2000_keyed_publishes_through_three_sigkills_are_stored_and_delivered_once
    )]
}

const EVENTS: u64 = 2000;
/// The kills land after this many acknowledged publishes, somewhere within each range.
const KILL_WINDOWS: [(u64, u64); 3] = [(100, 600), (700, 1200), (1300, 1800)];
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TRIES: u32 = 300;
/// The whole run (publishing, kills, restarts) must end within this.
const BUDGET: Duration = Duration::from_secs(300);
const CATCH_UP: Duration = Duration::from_secs(60);
const PAUSE: Duration = Duration::from_millis(50);

/// The hub's current base URL, `None` while it is down; every client reads it before each try.
type Base = Arc<RwLock<Option<String>>>;

fn current(base: &Base) -> Option<Api> {
    base.read().ok()?.as_deref().map(Api::new)
}

/// What the publisher saw: the id each `i` was acknowledged with, and how hard it was.
#[derive(Debug, Default)]
struct Published {
    ids: Vec<u64>,
    attempts: u64,
    failed: u64,
    replayed: u64,
    most_tries: u32,
}

/// What a live subscriber received, across every reconnect, in order.
#[derive(Debug, Default)]
struct Received {
    ids: Vec<u64>,
    connections: u64,
    anomalies: Vec<String>,
}

impl Received {
    /// True once it holds `target` (0: not known yet).
    fn holds(&self, target: &AtomicU64) -> bool {
        let t = target.load(Ordering::SeqCst);
        t > 0 && self.ids.last().is_some_and(|&l| l >= t)
    }
}

/// Publishes `{"i": i}` for i in 1..=EVENTS, one at a time, each under its own key; retries a
/// failure or timeout with the same key until it is acknowledged (201, or 200 for a replay).
async fn publish_all(base: Base, c: String, run: String, acked: Arc<AtomicU64>) -> Published {
    let (started, tok) = (Instant::now(), admin());
    let mut out = Published::default();
    for i in 1..=EVENTS {
        let (key, body) = (format!("{run}-{i}"), json!({"data": {"i": i}}).to_string());
        let mut tries = 0;
        let id = loop {
            assert!(
                tries < MAX_TRIES && started.elapsed() < BUDGET,
                "publish {i}: no acknowledgement after {tries} tries, {:.0?}",
                started.elapsed()
            );
            let Some(api) = current(&base) else {
                tokio::time::sleep(PAUSE).await;
                continue;
            };
            tries += 1;
            out.attempts += 1;
            let sent = publish_keyed(&api, &c, &body, &key, &tok);
            match tokio::time::timeout(ATTEMPT_TIMEOUT, sent).await {
                Ok(r) if r.status == 201 || r.status == 200 => {
                    out.replayed += u64::from(r.status == 200);
                    break r.json()["events"][0]["id"].as_u64().unwrap_or(0);
                }
                Ok(r) if (400..500).contains(&r.status) => {
                    panic!("publish {i} (try {tries}): {} {}", r.status, r.text())
                }
                _ => {
                    out.failed += 1;
                    tokio::time::sleep(PAUSE).await;
                }
            }
        };
        out.most_tries = out.most_tries.max(tries);
        out.ids.push(id);
        acked.store(i, Ordering::SeqCst);
    }
    out
}

/// An SSE subscriber that resumes with `Last-Event-ID` after every disconnect, until it holds
/// `target` (0: not known yet) or the budget is spent.
async fn follow_sse(base: Base, c: String, target: Arc<AtomicU64>) -> Received {
    let (started, tok) = (Instant::now(), admin());
    let auth = format!("Bearer {tok}");
    let mut got = Received::default();
    while !got.holds(&target) && started.elapsed() < BUDGET + CATCH_UP {
        let Some(api) = current(&base) else {
            tokio::time::sleep(PAUSE).await;
            continue;
        };
        let cursor = got.ids.last().copied().unwrap_or(0).to_string();
        let headers = [("authorization", auth.as_str()), ("last-event-id", &cursor)];
        let Ok(mut s) = SseStream::open(&api, &format!("/sse/{c}"), &headers).await else {
            tokio::time::sleep(PAUSE).await;
            continue;
        };
        got.connections += 1;
        while !got.holds(&target) {
            match s.next_item(Duration::from_millis(500)).await {
                Some(Item::Event(e)) if e.kind == "gap" => {
                    got.anomalies
                        .push(format!("SSE gap from {cursor}: {}", e.data));
                }
                Some(Item::Event(e)) => match e.id() {
                    Some(id) => got.ids.push(id),
                    None => got.anomalies.push(format!("SSE event without id: {e:?}")),
                },
                Some(Item::Comment(_)) => {}
                None if s.ended() => break,
                None => {}
            }
        }
    }
    got
}

/// A WebSocket subscriber that reconnects with `?since=` its last id after every close.
async fn follow_ws(base: Base, c: String, target: Arc<AtomicU64>) -> Received {
    let (started, tok) = (Instant::now(), admin());
    let mut got = Received::default();
    while !got.holds(&target) && started.elapsed() < BUDGET + CATCH_UP {
        let Some(api) = current(&base) else {
            tokio::time::sleep(PAUSE).await;
            continue;
        };
        let cursor = got.ids.last().copied().unwrap_or(0);
        let Ok(mut ws) = WsClient::open(&api, &ws_path(&c, Some(cursor)), Some(&tok)).await else {
            tokio::time::sleep(PAUSE).await;
            continue;
        };
        got.connections += 1;
        let mut first = true;
        while !got.holds(&target) {
            let frame = match ws.next(Duration::from_millis(500)).await {
                None => continue,
                Some(Frame::Json(v)) => v,
                Some(Frame::Closed(_)) => break,
                Some(other) => {
                    got.anomalies.push(format!("WS frame {other:?}"));
                    continue;
                }
            };
            match frame["op"].as_str() {
                Some("ready") if first => {}
                Some("event") => got.ids.push(frame["id"].as_u64().unwrap_or(0)),
                _ => got.anomalies.push(format!("WS from {cursor}: {frame}")),
            }
            first = false;
        }
    }
    got
}

/// Asserts `got` is exactly 1..=n, naming the first place it is not.
fn assert_exactly_once(what: &str, got: &[u64], n: u64) {
    let want: Vec<u64> = (1..=n).collect();
    if got != want.as_slice() {
        let at = got.iter().zip(&want).position(|(g, w)| g != w);
        let at = at.unwrap_or(got.len().min(want.len()));
        let around = &got[at.saturating_sub(3)..(at + 3).min(got.len())];
        panic!(
            "{what}: {} ids, want 1..={n} exactly once; first difference at index {at}: {around:?}",
            got.len()
        );
    }
}

async fn crash_2000_keyed_publishes_through_three_sigkills_are_stored_and_delivered_once(_: Api) {
    let opts = HubOptions::with_vars(&[("RETAIN_EVENTS", "100000")]);
    let started = Hub::start(opts).await;
    let mut hub = started.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"));
    let base: Base = Arc::new(RwLock::new(Some(hub.base().to_string())));
    let c = channel("crash");
    let (acked, target) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let began = Instant::now();
    let sse = tokio::spawn(follow_sse(base.clone(), c.clone(), target.clone()));
    let ws = tokio::spawn(follow_ws(base.clone(), c.clone(), target.clone()));
    let run = format!("{:x}", Rng::seeded().within(0, u64::MAX - 1));
    let publisher = tokio::spawn(publish_all(base.clone(), c.clone(), run, acked.clone()));

    let mut rng = Rng::seeded();
    let mut downtimes = Vec::new();
    for (lo, hi) in KILL_WINDOWS {
        let at = rng.within(lo, hi);
        while acked.load(Ordering::SeqCst) < at {
            assert!(began.elapsed() < BUDGET, "publishing stalled before {at}");
            assert!(!publisher.is_finished(), "the publisher ended early");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.within(0, 40))).await;
        let down = Instant::now();
        *base.write().expect("base lock") = None;
        hub.kill9().await;
        let restarted = hub.restart().await;
        let url = restarted.unwrap_or_else(|why| panic!("restart after SIGKILL: {why}"));
        *base.write().expect("base lock") = Some(url);
        downtimes.push((at, down.elapsed()));
    }
    let published = publisher.await.expect("the publisher");
    let api = current(&base).expect("the hub is up");
    let n = info(&api, &c).await["head"].as_u64().unwrap_or(0);
    target.store(n, Ordering::SeqCst);
    let publish_time = began.elapsed();

    // Every acknowledged publish is one stored event: distinct ids, exactly 1..=N, N = 2000.
    let mut acked_ids = published.ids.clone();
    acked_ids.sort_unstable();
    assert_exactly_once("acknowledged ids (sorted)", &acked_ids, n);
    assert_eq!(n, EVENTS, "keyed retries must not store an event twice");

    let (sse, ws) = (
        sse.await.expect("SSE follower"),
        ws.await.expect("WS follower"),
    );
    for (what, got) in [("live SSE subscriber", &sse), ("live WS subscriber", &ws)] {
        assert!(got.anomalies.is_empty(), "{what}: {:?}", got.anomalies);
        assert_exactly_once(what, &got.ids, n);
    }

    // The mirror catches up; poll, SSE replay and WebSocket replay hold the same N events.
    assert_eq!(
        api.await_mirror(&c, n).await,
        n,
        "the mirror never caught up"
    );
    let (polled, _) = api.poll_all(&c, 0, 1000, 10).await;
    let ids: Vec<u64> = polled.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_exactly_once("poll from 0", &ids, n);
    let by_i: Vec<(u64, u64)> = polled
        .iter()
        .map(|e| {
            (
                e["data"]["i"].as_u64().unwrap_or(0),
                e["id"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let acked_by_i: Vec<(u64, u64)> = (1..=EVENTS).zip(published.ids.iter().copied()).collect();
    let mut by_i = by_i;
    by_i.sort_unstable();
    assert!(
        by_i == acked_by_i,
        "each i is stored once, under the id it was acked with"
    );

    let tok = admin();
    let mut replay = SseStream::subscribe(&api, &c, Some(0), Some(&tok)).await;
    let events = replay.events_through(n, CATCH_UP).await;
    let sse_view: Vec<(Option<u64>, String, Value)> = events
        .iter()
        .map(|e| (e.id(), e.kind.clone(), e.json()))
        .collect();
    let poll_view: Vec<(Option<u64>, String, Value)> = polled
        .iter()
        .map(|e| {
            (
                e["id"].as_u64(),
                e["type"].as_str().unwrap_or("").to_string(),
                e["data"].clone(),
            )
        })
        .collect();
    assert!(
        sse_view == poll_view,
        "SSE replay from 0 differs from the poll ({} events)",
        sse_view.len()
    );
    let (mut wsr, _) = WsClient::subscribe(&api, &c, Some(0), Some(&tok)).await;
    let frames = wsr.frames_through(n, CATCH_UP).await;
    let ws_view: Vec<Value> = frames
        .into_iter()
        .map(|mut f| {
            f.as_object_mut().map(|o| o.remove("op"));
            f
        })
        .collect();
    assert!(
        ws_view == polled,
        "WS replay from 0 differs from the poll ({} frames)",
        ws_view.len()
    );
    wsr.close().await;
    let i = info(&api, &c).await;
    let window = (&i["head"], &i["mirrored"], &i["earliest"], &i["retained"]);
    assert_eq!(window, (&json!(n), &json!(n), &json!(1), &json!(n)), "{i}");

    eprintln!(
        "e2e: crash: {} kills (after acks {:?}; down {:?}); {} attempts, {} failed or timed out, \
         {} answered 200 (stored before a kill, replayed by key); most tries for one event {}; \
         N = {n}; SSE connections {}, WS connections {}; publishing took {publish_time:.1?}, \
         whole test {:.1?}",
        downtimes.len(),
        downtimes.iter().map(|d| d.0).collect::<Vec<_>>(),
        downtimes.iter().map(|d| d.1).collect::<Vec<_>>(),
        published.attempts,
        published.failed,
        published.replayed,
        published.most_tries,
        sse.connections,
        ws.connections,
        began.elapsed()
    );
    hub.cleanup().await;
}
