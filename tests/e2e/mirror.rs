//! The D1 mirror heals itself. With the development fault switch every D1 write fails: publishes
//! still succeed and live subscribers still get every event, polls only lag (never a hole).
//! After a restart without the switch each channel object catches up, whether woken by a
//! publish, by a channel-info read, or by nothing but its pending retry alarm.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{admin, channel, ids, Api};
use crate::harness::{Hub, HubOptions};
use crate::live::info;
use crate::sse_client::{event_ids, SseStream};
use crate::ws_client::{frame_ids, WsClient};
use crate::{case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![case_own_hub!(
        mirror_heals_after_failed_d1_writes_woken_by_publish_info_or_alarm
    )]
}

const WAIT: Duration = Duration::from_secs(60);
/// The longest retry backoff is 60 s: a channel left alone catches up within it, plus slack.
const ALARM_WAIT: Duration = Duration::from_secs(100);
const DEV: (&str, &str) = ("EDGEHUB_DEV", "1");
/// Every event stays retained: this test is about the mirror, not about pruning.
const RETAIN: (&str, &str) = ("RETAIN_EVENTS", "100000");
const FAULT: (&str, &str) = ("EDGEHUB_FAULT_D1_WRITES", "1");
/// Batches of 100 published to A while D1 fails: six catch-up writes of 500 afterwards.
const BATCHES: u64 = 30;

async fn publish(api: &Api, c: &str, body: Value) -> Vec<u64> {
    let r = api.publish(c, &body, &admin()).await;
    assert_eq!(
        r.status,
        201,
        "publish to {c} with D1 failing: {}",
        r.text()
    );
    ids(&r.json())
}

/// `data` of event `id` on every channel of this test.
fn data(c: &str, id: u64) -> Value {
    json!({"c": c, "id": id})
}

/// Publishes ids `from..=to` of `c` as single events.
async fn publish_singles(api: &Api, c: &str, from: u64, to: u64) {
    for id in from..=to {
        assert_eq!(
            publish(api, c, json!({"data": data(c, id)})).await,
            vec![id]
        );
    }
}

/// A poll page's ids must run on from its cursor, without a hole, within the head it shows.
fn assert_contiguous(c: &str, since: u64, page: &Value) -> u64 {
    let got: Vec<u64> = page["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_u64()).collect())
        .unwrap_or_default();
    let want: Vec<u64> = (since + 1..).take(got.len()).collect();
    let head = page["head"].as_u64().unwrap_or(0);
    let shape = json!({"ids": got, "head": head, "gap": page["gap"], "next": page["next"]});
    assert!(
        got == want,
        "{c}: a poll from {since} must be contiguous: {shape}"
    );
    assert!(
        page.get("gap").is_none(),
        "{c}: no gap from {since}: {shape}"
    );
    assert!(
        got.last().is_none_or(|&l| l <= head),
        "{c}: beyond head: {shape}"
    );
    page["next"].as_u64().unwrap_or(since)
}

/// Follows `c` by polling from 0, checking every page, until the mirror reaches `head`.
/// Never wakes the channel's object. Returns the distinct mirror heads it saw.
async fn follow_until(api: &Api, c: &str, head: u64, wait: Duration) -> Vec<u64> {
    let started = Instant::now();
    let (mut cursor, mut heads) = (0, Vec::new());
    loop {
        let r = api.poll(c, Some(cursor), Some(100)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        cursor = assert_contiguous(c, cursor, &page);
        let shown = page["head"].as_u64().unwrap_or(0);
        if heads.last() != Some(&shown) {
            heads.push(shown);
        }
        if cursor >= head {
            return heads;
        }
        assert!(
            started.elapsed() < wait,
            "{c}: the mirror never caught up to {head} within {wait:?}; heads seen {heads:?}"
        );
        if page["more"] != json!(true) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Once caught up: the object says `mirrored == head`, and a poll holds 1..=head exactly.
async fn assert_healed(api: &Api, c: &str, head: u64) {
    let i = info(api, c).await;
    assert_eq!(
        (&i["head"], &i["mirrored"]),
        (&json!(head), &json!(head)),
        "{c}: {i}"
    );
    let (events, _) = api.poll_all(c, 0, 1000, 5).await;
    let got: Vec<(u64, Value)> = events
        .iter()
        .map(|e| (e["id"].as_u64().unwrap_or(0), e["data"].clone()))
        .collect();
    let want: Vec<(u64, Value)> = (1..=head).map(|id| (id, data(c, id))).collect();
    assert!(
        got == want,
        "{c}: the mirror must hold 1..={head} in order, once each"
    );
}

async fn mirror_heals_after_failed_d1_writes_woken_by_publish_info_or_alarm(_: Api) {
    // The fault switch is honoured only together with EDGEHUB_DEV=1.
    let started = Hub::start(HubOptions::with_vars(&[RETAIN, FAULT])).await;
    let mut hub = started.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"));
    let api = Api::new(hub.base());
    let [a, b, c, e] = ["mirrora", "mirrorb", "mirrorc", "mirrore"].map(channel);
    publish_singles(&api, &a, 1, 10).await;
    assert_eq!(
        api.await_mirror(&a, 10).await,
        10,
        "without EDGEHUB_DEV the switch is off"
    );

    let base = hub
        .restart_with(HubOptions::with_vars(&[RETAIN, DEV, FAULT]))
        .await;
    let api = Api::new(&base.unwrap_or_else(|why| panic!("restart with the fault: {why}")));
    let tok = admin();
    let mut sse = SseStream::subscribe(&api, &a, Some(10), Some(&tok)).await;
    let (mut ws, ready) = WsClient::subscribe(&api, &a, Some(10), Some(&tok)).await;
    assert_eq!(ready, 10);
    for batch in 0..BATCHES {
        let first = 11 + batch * 100;
        let body: Vec<Value> = (first..first + 100)
            .map(|id| json!({"data": data(&a, id)}))
            .collect();
        let want: Vec<u64> = (first..first + 100).collect();
        assert_eq!(publish(&api, &a, json!(body)).await, want);
    }
    let head_a = 10 + BATCHES * 100;
    publish_singles(&api, &b, 1, 20).await;
    publish_singles(&api, &c, 1, 20).await;
    publish_singles(&api, &e, 1, 1).await;
    let want: Vec<u64> = (11..=head_a).collect();
    let got = event_ids(&sse.events_through(head_a, WAIT).await);
    assert!(
        got == want,
        "SSE with D1 down: {} events, want 11..={head_a}",
        got.len()
    );
    let got = frame_ids(&ws.frames_through(head_a, WAIT).await);
    assert!(
        got == want,
        "WS with D1 down: {} events, want 11..={head_a}",
        got.len()
    );

    // Polls lag but stay whole: A's mirror holds 1..=10, the others nothing, and it stays so.
    for _ in 0..2 {
        let r = api.poll(&a, Some(0), Some(1000)).await;
        let page = r.json();
        assert_eq!(assert_contiguous(&a, 0, &page), 10, "A's mirror from 0");
        assert_eq!(page["head"], json!(10), "A's mirror head");
        let r = api.poll(&a, Some(3), Some(4)).await;
        assert_eq!(assert_contiguous(&a, 3, &r.json()), 7, "{}", r.text());
        for x in [&b, &c, &e] {
            let page = api.poll(x, Some(0), None).await.json();
            assert_eq!(
                (&page["head"], &page["events"]),
                (&json!(0), &json!([])),
                "{x}"
            );
        }
        let i = info(&api, &a).await;
        assert_eq!(
            (&i["head"], &i["mirrored"]),
            (&json!(head_a), &json!(10)),
            "{i}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    drop((sse, ws));

    // Without the fault: B is woken by a channel-info read, A by its next publish, and C and E
    // by nothing but their pending retry alarms (polls never wake an object).
    let base = hub
        .restart_with(HubOptions::with_vars(&[RETAIN, DEV]))
        .await;
    let api = Api::new(&base.unwrap_or_else(|why| panic!("restart without the fault: {why}")));
    let healing = Instant::now();
    assert_eq!(info(&api, &b).await["head"], json!(20));
    follow_until(&api, &b, 20, WAIT).await;
    let following = {
        let (api, a) = (api.clone(), a.clone());
        tokio::spawn(async move { follow_until(&api, &a, head_a + 1, WAIT).await })
    };
    publish_singles(&api, &a, head_a + 1, head_a + 1).await;
    let heads = following.await.expect("the poller of A");
    eprintln!("e2e: mirror: a poller of A saw the mirror's head at {heads:?}");
    follow_until(&api, &c, 20, ALARM_WAIT).await;
    eprintln!(
        "e2e: mirror: C, woken only by its retry alarm, caught up {:.1?} after the restart",
        healing.elapsed()
    );
    for (x, head) in [(&a, head_a + 1), (&b, 20), (&c, 20)] {
        assert_healed(&api, x, head).await;
    }

    // E had a single publish while D1 failed, and nothing since: only its retry alarm is left.
    let caught_up = tokio::spawn({
        let (api, e) = (api.clone(), e.clone());
        async move { follow_until(&api, &e, 1, ALARM_WAIT).await }
    });
    if let Err(why) = caught_up.await {
        panic!(
            "E (one publish while D1 failed, then left alone) never caught up: its retry alarm \
             is gone ({why}). Hub log tail:\n{}",
            hub.log_tail()
        );
    }
    assert_healed(&api, &e, 1).await;
    let rows = hub
        .d1(
            "SELECT channel, count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM events \
             GROUP BY channel ORDER BY channel",
        )
        .await
        .unwrap_or_else(|why| panic!("reading D1: {why}"));
    let want: Vec<Value> = [(&a, head_a + 1), (&b, 20), (&c, 20), (&e, 1)]
        .iter()
        .map(|(x, n)| json!({"channel": x, "n": n, "lo": 1, "hi": n}))
        .collect();
    assert_eq!(rows, want, "D1's own rows, once each");
    hub.cleanup().await;
}
