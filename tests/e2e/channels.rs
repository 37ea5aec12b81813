//! Many channels: 1,000 channels (1,000 channel objects) with a few events each, published
//! with bounded concurrency, some as batches; every channel's poll, channel info and D1 rows
//! are its own and complete.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::api::{admin, channel, ids, Api};
use crate::harness::{Hub, HubOptions};
use crate::idempotency::publish_keyed_retrying;
use crate::live::info;
use crate::{case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![case_own_hub!(
        channels_1000_each_poll_and_info_show_their_own_events
    )]
}

const CHANNELS: u64 = 1000;
const CONCURRENCY: usize = 16;
const MIRROR_WAIT: Duration = Duration::from_secs(60);

/// Channel `k` gets 1 to 4 events; every third publishes them as one batch.
fn events_of(k: u64) -> u64 {
    1 + k % 4
}

fn data(k: u64, j: u64) -> Value {
    json!({"k": k, "j": j})
}

/// Publishes channel `k`'s events; returns how often the dev proxy's 503 was retried. Each
/// publish has an idempotency key, so a retry stores nothing twice (and the checks below would
/// see a doubled event).
async fn publish_channel(api: &Api, name: &str, k: u64) -> usize {
    let n = events_of(k);
    let tok = admin();
    if k.is_multiple_of(3) {
        let batch: Vec<Value> = (1..=n).map(|j| json!({"data": data(k, j)})).collect();
        let body = json!(batch).to_string();
        let (r, retries) = publish_keyed_retrying(api, name, &body, "batch", &tok).await;
        assert_eq!(r.status, 201, "{name}: {}", r.text());
        assert_eq!(ids(&r.json()), (1..=n).collect::<Vec<_>>(), "{name}");
        retries
    } else {
        let mut retries = 0;
        for j in 1..=n {
            let body = json!({"data": data(k, j)}).to_string();
            let key = format!("event-{j}");
            let (r, again) = publish_keyed_retrying(api, name, &body, &key, &tok).await;
            assert_eq!(r.status, 201, "{name} #{j}: {}", r.text());
            assert_eq!(ids(&r.json()), vec![j], "{name}");
            retries += again;
        }
        retries
    }
}

/// Polls `name` from 0 until the mirror holds its events, then checks page, window and info.
async fn check_channel(api: &Api, name: &str, k: u64) {
    let n = events_of(k);
    let started = Instant::now();
    let page = loop {
        let r = api.poll(name, Some(0), Some(100)).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let page = r.json();
        if page["head"] == json!(n) || started.elapsed() > MIRROR_WAIT {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let got: Vec<(Value, Value)> = page["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| (e["id"].clone(), e["data"].clone()))
                .collect()
        })
        .unwrap_or_default();
    let want: Vec<(Value, Value)> = (1..=n).map(|j| (json!(j), data(k, j))).collect();
    assert_eq!(got, want, "{name}: its own events, in order");
    assert!(
        page["events"]
            .as_array()
            .is_some_and(|a| a.iter().all(|e| e["channel"] == json!(name))),
        "{name}: every envelope names its channel"
    );
    let shape = (&page["head"], &page["next"], &page["more"], page.get("gap"));
    assert_eq!(shape, (&json!(n), &json!(n), &json!(false), None), "{name}");
    let i = info(api, name).await;
    let window = (&i["head"], &i["earliest"], &i["retained"], &i["mirrored"]);
    assert_eq!(
        window,
        (&json!(n), &json!(1), &json!(n), &json!(n)),
        "{name}: {i}"
    );
    assert_eq!(i["subscribers"], json!({"sse": 0, "ws": 0}), "{name}: {i}");
}

async fn channels_1000_each_poll_and_info_show_their_own_events(_: Api) {
    let started = Hub::start(HubOptions::default()).await;
    let hub = started.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"));
    let api = Api::new(hub.base());
    let prefix = channel("many");
    let name = |k: u64| format!("{prefix}-{k}");

    let began = Instant::now();
    let retries: usize = stream::iter(1..=CHANNELS)
        .map(|k| {
            let (api, name) = (api.clone(), name(k));
            async move { publish_channel(&api, &name, k).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<usize>>()
        .await
        .into_iter()
        .sum();
    let published = began.elapsed();
    if retries > 0 {
        eprintln!("e2e: channels: the dev proxy lost {retries} publishes; each was retried");
    }
    stream::iter(1..=CHANNELS)
        .map(|k| {
            let (api, name) = (api.clone(), name(k));
            async move { check_channel(&api, &name, k).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let checked = began.elapsed();

    // D1's own rows: one `channels` row and exactly the published events per channel.
    let total: u64 = (1..=CHANNELS).map(events_of).sum();
    let like = format!("{prefix}-%");
    let rows = hub
        .d1(&format!(
            "SELECT (SELECT count(*) FROM channels WHERE channel LIKE '{like}') AS channels, \
             (SELECT count(*) FROM events WHERE channel LIKE '{like}') AS events, \
             (SELECT count(DISTINCT channel) FROM events WHERE channel LIKE '{like}') AS with_events"
        ))
        .await
        .unwrap_or_else(|why| panic!("reading D1: {why}"));
    assert_eq!(
        rows,
        vec![json!({"channels": CHANNELS, "events": total, "with_events": CHANNELS})],
        "D1 rows"
    );
    eprintln!(
        "e2e: channels: {CHANNELS} channels, {total} events published in {published:.1?} \
         ({CONCURRENCY} at a time); polls and infos checked by {checked:.1?}; hub RSS {} KiB",
        hub.rss_kib()
    );
    hub.cleanup().await;
}
