//! Retention and purge on hubs of their own with small limits: `RETAIN_EVENTS` prunes on every
//! publish, `RETAIN_SECONDS` by the channel object's alarm; a cursor below what is retained gets
//! the gap on poll, SSE and WebSocket; D1 (read directly) and the object agree once mirrored;
//! `DELETE /channels/{c}/events` purges both, and ids are never reused.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{admin, channel, client, ids, token, Api};
use crate::harness::{Hub, HubOptions};
use crate::live::info;
use crate::publish::assert_problem;
use crate::sse_client::{event_ids, SseStream};
use crate::sse_parser::SseEvent;
use crate::ws_client::{frame_ids, Frame, WsClient};
use crate::{case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case_own_hub!(retention_by_count_prunes_on_publish_and_gaps_every_transport_then_purge),
        case_own_hub!(retention_by_age_prunes_by_alarm_and_d1_follows),
    ]
}

const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(700);
const RETAIN_EVENTS: u64 = 5;
const RETAIN_SECONDS: u64 = 4;
/// How long past its age an event may still be retained (the alarm's latency, a loaded box).
const AGE_SLACK: Duration = Duration::from_secs(20);
/// Pruning earlier than this before an event's age counts as too early (request latencies).
const EARLY_MARGIN: Duration = Duration::from_secs(1);

pub async fn own_hub(vars: &[(&str, &str)]) -> Hub {
    let started = Hub::start(HubOptions::with_vars(vars)).await;
    started.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"))
}

async fn publish(api: &Api, c: &str, body: Value) -> Vec<u64> {
    let r = api.publish(c, &body, &admin()).await;
    assert_eq!(r.status, 201, "publish {body}: {}", r.text());
    ids(&r.json())
}

/// The object's window from channel info: (earliest, head, retained).
async fn window(api: &Api, c: &str) -> (u64, u64, u64) {
    let i = info(api, c).await;
    let n = |k: &str| i[k].as_u64().unwrap_or(u64::MAX);
    (n("earliest"), n("head"), n("retained"))
}

/// Polls `since=0` until the mirror shows `earliest` and `head`; returns that page. Bounded.
async fn poll_window(api: &Api, c: &str, earliest: u64, head: u64) -> Value {
    let started = Instant::now();
    loop {
        let r = api.poll(c, Some(0), Some(1000)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        let shown = (
            page["earliest"].as_u64().unwrap_or(1),
            page["head"].as_u64(),
        );
        if shown == (earliest, Some(head)) {
            return page;
        }
        assert!(
            started.elapsed() < WAIT,
            "the mirror of {c} never showed earliest {earliest}, head {head}; last: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The D1 mirror's own rows for `c`, read directly: its event ids and its `channels` row.
async fn d1_rows(hub: &Hub, c: &str) -> (Vec<u64>, Value) {
    let seqs = hub
        .d1(&format!(
            "SELECT seq FROM events WHERE channel = '{c}' ORDER BY seq"
        ))
        .await
        .unwrap_or_else(|e| panic!("reading D1: {e}"));
    let row = hub
        .d1(&format!(
            "SELECT head, earliest FROM channels WHERE channel = '{c}'"
        ))
        .await
        .unwrap_or_else(|e| panic!("reading D1: {e}"));
    let seqs = seqs.iter().filter_map(|r| r["seq"].as_u64()).collect();
    (seqs, row.first().cloned().unwrap_or(Value::Null))
}

fn poll_ids(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// Asserts one poll: its gap fields (or their absence), its ids and `next`.
async fn assert_poll(api: &Api, c: &str, since: u64, gap: Option<u64>, want: &[u64], next: u64) {
    let r = api.poll(c, Some(since), Some(1000)).await;
    let page = r.json();
    assert_eq!(r.status, 200, "{}", r.text());
    let got = (page.get("gap").cloned(), page.get("earliest").cloned());
    let expected = match gap {
        Some(e) => (Some(json!(true)), Some(json!(e))),
        None => (None, None),
    };
    assert_eq!(got, expected, "poll since={since}: gap fields of {page}");
    assert_eq!(poll_ids(&page), want, "poll since={since}: {page}");
    assert_eq!(page["next"], json!(next), "poll since={since}: {page}");
}

/// SSE from `since` (sent as `Last-Event-ID`): the gap notice it must open with, then `want`.
async fn assert_sse(api: &Api, c: &str, since: u64, gap: Option<u64>, want: &[u64]) {
    let cursor = since.to_string();
    let opened = SseStream::open(api, &format!("/sse/{c}"), &[("last-event-id", &cursor)]).await;
    let mut s = opened.unwrap_or_else(|r| panic!("SSE {c}: {} {}", r.status, r.text()));
    let expected = want.len() + usize::from(gap.is_some());
    let mut got: Vec<SseEvent> = Vec::new();
    while got.len() < expected {
        match s.next_event(WAIT).await {
            Some(e) => got.push(e),
            None => break,
        }
    }
    if let Some(extra) = s.next_event(QUIET).await {
        got.push(extra);
    }
    if let Some(earliest) = gap {
        let first = got.first().map(|e| (e.kind.clone(), e.json()));
        let notice = json!({"requested": since, "earliest": earliest});
        assert_eq!(
            first,
            Some(("gap".into(), notice)),
            "SSE from {since}: {got:?}"
        );
    } else {
        assert!(
            got.iter().all(|e| e.kind != "gap"),
            "SSE from {since}: {got:?}"
        );
    }
    assert_eq!(event_ids(&got), want, "SSE from {since}: {got:?}");
}

/// WebSocket from `since`: `ready` with the head, the gap frame if any, then `want`.
async fn assert_ws(api: &Api, c: &str, since: u64, head: u64, gap: Option<u64>, want: &[u64]) {
    let (mut ws, ready) = WsClient::subscribe(api, c, Some(since), None).await;
    assert_eq!(ready, head, "WS ready head from {since}");
    let expected = want.len() + usize::from(gap.is_some());
    let mut got = Vec::new();
    while got.len() <= expected {
        let wait = if got.len() < expected { WAIT } else { QUIET };
        match ws.next(wait).await {
            Some(Frame::Json(v)) => got.push(v),
            other => {
                assert!(other.is_none(), "WS from {since}: {other:?} after {got:?}");
                break;
            }
        }
    }
    let gaps: Vec<&Value> = got.iter().filter(|f| f["op"] == "gap").collect();
    let want_gap: Vec<Value> = gap
        .map(|e| json!({"op": "gap", "requested": since, "earliest": e}))
        .into_iter()
        .collect();
    assert_eq!(
        gaps,
        want_gap.iter().collect::<Vec<_>>(),
        "WS from {since}: {got:?}"
    );
    if gap.is_some() {
        assert_eq!(
            got.first().map(|f| &f["op"]),
            Some(&json!("gap")),
            "gap first"
        );
    }
    assert_eq!(frame_ids(&got), want, "WS from {since}: {got:?}");
    ws.close().await;
}

async fn retention_by_count_prunes_on_publish_and_gaps_every_transport_then_purge(_: Api) {
    let retain = RETAIN_EVENTS.to_string();
    let hub = own_hub(&[("RETAIN_EVENTS", &retain), ("RETAIN_SECONDS", "3600")]).await;
    let api = Api::new(hub.base());
    let c = format!("public:{}", channel("count"));
    let (mut live, _) = WsClient::subscribe(&api, &c, None, None).await;

    for i in 1..=8 {
        assert_eq!(publish(&api, &c, json!({"data": i})).await, vec![i]);
    }
    assert_eq!(window(&api, &c).await, (4, 8, 5), "8 published, 5 retained");
    let batch: Vec<Value> = (9..=11).map(|i| json!({"data": i})).collect();
    assert_eq!(publish(&api, &c, json!(batch)).await, vec![9, 10, 11]);
    assert_eq!(window(&api, &c).await, (7, 11, 5));
    // A batch larger than the limit is stored whole and pruned in the same step.
    let batch: Vec<Value> = (12..=18).map(|i| json!({"data": i})).collect();
    assert_eq!(
        publish(&api, &c, json!(batch)).await,
        (12..=18).collect::<Vec<_>>()
    );
    assert_eq!(window(&api, &c).await, (14, 18, 5));
    let delivered = frame_ids(&live.frames_through(18, WAIT).await);
    assert_eq!(
        delivered,
        (1..=18).collect::<Vec<_>>(),
        "retention never trims live delivery"
    );

    let page = poll_window(&api, &c, 14, 18).await;
    assert_eq!(poll_ids(&page), vec![14, 15, 16, 17, 18], "{page}");
    assert_eq!(info(&api, &c).await["mirrored"], json!(18));
    assert_poll(&api, &c, 0, Some(14), &[14, 15, 16, 17, 18], 18).await;
    assert_poll(&api, &c, 12, Some(14), &[14, 15, 16, 17, 18], 18).await;
    assert_poll(&api, &c, 13, None, &[14, 15, 16, 17, 18], 18).await;
    assert_poll(&api, &c, 16, None, &[17, 18], 18).await;
    assert_poll(&api, &c, 18, None, &[], 18).await;
    assert_sse(&api, &c, 0, Some(14), &[14, 15, 16, 17, 18]).await;
    assert_sse(&api, &c, 5, Some(14), &[14, 15, 16, 17, 18]).await;
    assert_sse(&api, &c, 13, None, &[14, 15, 16, 17, 18]).await;
    assert_ws(&api, &c, 0, 18, Some(14), &[14, 15, 16, 17, 18]).await;
    assert_ws(&api, &c, 13, 18, None, &[14, 15, 16, 17, 18]).await;
    let (rows, row) = d1_rows(&hub, &c).await;
    assert_eq!(
        rows,
        vec![14, 15, 16, 17, 18],
        "D1 holds what the object retains"
    );
    assert_eq!(row, json!({"head": 18, "earliest": 14}), "D1's channel row");

    // Purge: publish right only, then 204; nothing retained, the head stays.
    let purge = |tok: Option<String>| {
        let mut req = client().delete(format!("{}/channels/{c}/events", api.base));
        if let Some(t) = tok {
            req = req.bearer_auth(t);
        }
        api.send(req)
    };
    assert_problem(
        &purge(None).await,
        401,
        "unauthorized",
        "purge without a token",
    );
    let reader = Some(token(&[], &[&c], 600));
    assert_problem(
        &purge(reader).await,
        403,
        "forbidden",
        "purge with subscribe only",
    );
    assert_eq!(
        window(&api, &c).await,
        (14, 18, 5),
        "refused purges change nothing"
    );
    let r = purge(Some(token(&[&c], &[], 600))).await;
    assert_eq!((r.status, r.body.len()), (204, 0), "purge: {}", r.text());
    assert_eq!(
        window(&api, &c).await,
        (19, 18, 0),
        "purged: earliest is head + 1"
    );
    let page = poll_window(&api, &c, 19, 18).await;
    assert_eq!(
        (poll_ids(&page), &page["next"]),
        (vec![], &json!(18)),
        "{page}"
    );
    assert_poll(&api, &c, 10, Some(19), &[], 18).await;
    assert_poll(&api, &c, 18, None, &[], 18).await;
    assert_sse(&api, &c, 10, Some(19), &[]).await;
    assert_ws(&api, &c, 10, 18, Some(19), &[]).await;
    assert_eq!(
        d1_rows(&hub, &c).await.0,
        Vec::<u64>::new(),
        "D1 purged too"
    );

    assert_eq!(
        publish(&api, &c, json!({"data": "after"})).await,
        vec![19],
        "ids not reused"
    );
    assert_eq!(
        frame_ids(&live.frames_through(19, WAIT).await),
        vec![19],
        "live after purge"
    );
    assert_eq!(window(&api, &c).await, (19, 19, 1));
    let page = poll_window(&api, &c, 19, 19).await;
    assert_eq!(poll_ids(&page), vec![19], "{page}");
    assert_poll(&api, &c, 18, None, &[19], 19).await;
    assert_sse(&api, &c, 3, Some(19), &[19]).await;
    assert_ws(&api, &c, 3, 19, Some(19), &[19]).await;
    assert_eq!(d1_rows(&hub, &c).await.0, vec![19]);

    // A channel that never had an event purges to nothing.
    let fresh = channel("purgefresh");
    let r = api
        .send(
            client()
                .delete(format!("{}/channels/{fresh}/events", api.base))
                .bearer_auth(admin()),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(window(&api, &fresh).await, (1, 0, 0));
    live.close().await;
    hub.cleanup().await;
}

async fn retention_by_age_prunes_by_alarm_and_d1_follows(_: Api) {
    let (retain, age) = (RETAIN_EVENTS.to_string(), RETAIN_SECONDS.to_string());
    let hub = own_hub(&[("RETAIN_EVENTS", &retain), ("RETAIN_SECONDS", &age)]).await;
    let api = Api::new(hub.base());
    let c = format!("public:{}", channel("age"));
    let max_age = Duration::from_secs(RETAIN_SECONDS);

    // Two events, then two more 2.5 s later: the alarm must prune them in two steps.
    let mut stored: Vec<(u64, Instant)> = Vec::new();
    for round in 0..2u64 {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        let got = publish(&api, &c, json!([{"data": round}, {"data": round}])).await;
        stored.extend(got.into_iter().map(|id| (id, Instant::now())));
    }
    let deadline = Instant::now() + max_age * 2 + AGE_SLACK;
    let mut seen: Vec<u64> = Vec::new();
    loop {
        let asked = Instant::now();
        let (earliest, head, retained) = window(&api, &c).await;
        assert_eq!(
            (head, retained),
            (4, 5 - earliest),
            "window {earliest}..{head}"
        );
        // Nothing younger than RETAIN_SECONDS (when the request was sent) may be gone.
        for &(id, at) in &stored {
            if asked < at + max_age - EARLY_MARGIN {
                assert!(
                    id >= earliest,
                    "event {id} pruned before it was {max_age:?} old"
                );
            }
        }
        if seen.last() != Some(&earliest) {
            seen.push(earliest);
        }
        if earliest == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "age pruning stalled: earliest seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, vec![1, 3, 5], "two alarm-driven prunes, oldest first");

    let page = poll_window(&api, &c, 5, 4).await;
    let i = info(&api, &c).await;
    assert_eq!(
        (&page["head"], &page["earliest"]),
        (&i["head"], &i["earliest"]),
        "{page} {i}"
    );
    assert_eq!(i["mirrored"], json!(4), "{i}");
    assert_poll(&api, &c, 0, Some(5), &[], 4).await;
    assert_poll(&api, &c, 4, None, &[], 4).await;
    assert_sse(&api, &c, 0, Some(5), &[]).await;
    assert_ws(&api, &c, 2, 4, Some(5), &[]).await;
    let (rows, row) = d1_rows(&hub, &c).await;
    assert_eq!(rows, Vec::<u64>::new(), "D1 pruned by age as well");
    assert_eq!(row, json!({"head": 4, "earliest": 5}));

    // The counter goes on; the new event ages out in turn.
    assert_eq!(publish(&api, &c, json!({"data": "late"})).await, vec![5]);
    let page = poll_window(&api, &c, 5, 5).await;
    assert_eq!(poll_ids(&page), vec![5], "{page}");
    assert_poll(&api, &c, 4, None, &[5], 5).await;
    assert_poll(&api, &c, 3, Some(5), &[5], 5).await;
    let page = poll_window(&api, &c, 6, 5).await;
    assert_eq!(poll_ids(&page), Vec::<u64>::new(), "{page}");
    assert_eq!(window(&api, &c).await, (6, 5, 0));
    hub.cleanup().await;
}
