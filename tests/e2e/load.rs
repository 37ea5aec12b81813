//! Load: 500 SSE and 500 WebSocket subscribers on one channel all get 100 events in order; and a
//! latency report (ignored by default: `cargo test --test e2e -- --ignored latency`) that times
//! publish → delivery per transport and publish → visible in a poll. It asserts delivery only.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::api::{admin, channel, ids, token, Api};
use crate::idempotency::publish_keyed_retrying;
use crate::live::info;
use crate::sse_client::{event_ids, SseStream};
use crate::ws_client::{frame_ids, WsClient};
use crate::{case, case_ignored, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(scale_500_sse_and_500_ws_subscribers_get_100_events_in_order),
        case_ignored!(latency_report_publish_to_delivery_per_transport),
    ]
}

const SUBSCRIBERS: usize = 500;
const EVENTS: u64 = 100;
/// Connections opened at once.
const CONNECT_CONCURRENCY: usize = 25;
const DELIVERY_WAIT: Duration = Duration::from_secs(240);

enum Subscriber {
    Sse(SseStream),
    Ws(WsClient),
}

async fn scale_500_sse_and_500_ws_subscribers_get_100_events_in_order(api: Api) {
    let c = channel("scale");
    let tok = token(&[], &[&c], 3600);
    let started = Instant::now();
    let opened: Vec<Subscriber> = stream::iter(0..2 * SUBSCRIBERS)
        .map(|n| {
            let (api, c, tok) = (api.clone(), c.clone(), tok.clone());
            async move {
                if n % 2 == 0 {
                    Subscriber::Sse(SseStream::subscribe(&api, &c, None, Some(&tok)).await)
                } else {
                    Subscriber::Ws(WsClient::subscribe(&api, &c, None, Some(&tok)).await.0)
                }
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let connected = started.elapsed();
    let counts = info(&api, &c).await["subscribers"].clone();
    assert_eq!(
        counts,
        json!({"sse": SUBSCRIBERS, "ws": SUBSCRIBERS}),
        "after connecting"
    );

    let readers: Vec<_> = opened
        .into_iter()
        .map(|sub| {
            tokio::spawn(async move {
                match sub {
                    Subscriber::Sse(mut s) => (
                        "sse",
                        event_ids(&s.events_through(EVENTS, DELIVERY_WAIT).await),
                    ),
                    Subscriber::Ws(mut ws) => (
                        "ws",
                        frame_ids(&ws.frames_through(EVENTS, DELIVERY_WAIT).await),
                    ),
                }
            })
        })
        .collect();
    // Each publish carries an idempotency key and is sent again, with it, if it got no
    // answer: the local runtime closes a kept-alive connection whose next request it has not
    // read within 5 s (kj's pipeline timeout), and a runtime swamped by this fan-out (or
    // stalled beside it on two busy cores, the front in scripts/serve.mjs included) sometimes
    // reads late. A retry returns the first answer (200) if the first try was stored.
    let publishing = Instant::now();
    let mut retried = 0;
    for i in 1..=EVENTS {
        let body = json!({"data": {"i": i}}).to_string();
        let key = format!("scale-{i}");
        let (r, retries) = publish_keyed_retrying(&api, &c, &body, &key, &admin()).await;
        assert!(
            matches!(r.status, 200 | 201),
            "publish {i}: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(ids(&r.json()), vec![i]);
        retried += retries;
    }
    let published = publishing.elapsed();
    let want: Vec<u64> = (1..=EVENTS).collect();
    let mut delivered = 0;
    for (n, reader) in futures::future::join_all(readers)
        .await
        .into_iter()
        .enumerate()
    {
        let (kind, got) = reader.expect("a reader task failed");
        assert_eq!(got, want, "{kind} subscriber #{n}");
        delivered += 1;
    }
    eprintln!(
        "e2e: scale: {delivered} subscribers connected in {connected:.1?}; 100 publishes took \
         {published:.1?} ({retried} sent again); all delivered {:.1?} after the first publish",
        publishing.elapsed()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    eprintln!(
        "e2e: latency {what:<22} n={} median {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or_default()
    );
}

/// Polls `since = id - 1` until event `id` shows; the time it first did. Bounded.
async fn poll_until(api: &Api, c: &str, id: u64) -> Option<Instant> {
    for _ in 0..2000 {
        let page = api.poll(c, Some(id - 1), Some(1)).await.json();
        if page["events"][0]["id"] == json!(id) {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Every `POLL_EVERY`th round measures the poll instead of the live transports: polling
/// alongside would load the same two cores and inflate the live figures.
async fn latency_report_publish_to_delivery_per_transport(api: Api) {
    const ROUNDS: u64 = 1000;
    const POLL_EVERY: u64 = 4;
    let c = channel("latency");
    let tok = admin();
    let mut sse = SseStream::subscribe(&api, &c, None, Some(&tok)).await;
    let (mut ws, _) = WsClient::subscribe(&api, &c, None, Some(&tok)).await;
    let (mut to_sse, mut to_ws, mut to_poll, mut acked) = (vec![], vec![], vec![], vec![]);
    for i in 1..=ROUNDS {
        let body: Value = json!({"data": {"i": i}});
        let polling = i % POLL_EVERY == 0;
        let sent = Instant::now();
        let (answer, sse_at, ws_at, poll_at) = tokio::join!(
            async {
                let r = api.publish(&c, &body, &tok).await;
                (r, Instant::now())
            },
            async {
                let got = sse.events_through(i, Duration::from_secs(30)).await;
                (event_ids(&got), Instant::now())
            },
            async {
                let got = ws.frames_through(i, Duration::from_secs(30)).await;
                (frame_ids(&got), Instant::now())
            },
            async {
                match polling {
                    true => poll_until(&api, &c, i).await,
                    false => None,
                }
            },
        );
        assert_eq!(answer.0.status, 201, "publish {i}: {}", answer.0.text());
        assert_eq!(sse_at.0, vec![i], "SSE delivery of {i}");
        assert_eq!(ws_at.0, vec![i], "WS delivery of {i}");
        if polling {
            let at = poll_at.unwrap_or_else(|| panic!("event {i} never showed in a poll"));
            to_poll.push(at - sent);
        } else {
            acked.push(answer.1 - sent);
            to_sse.push(sse_at.1 - sent);
            to_ws.push(ws_at.1 - sent);
        }
    }
    eprintln!(
        "e2e: latency, {ROUNDS} sequential publishes, each after the last was delivered; \
         from the publish's send (poll: every {POLL_EVERY}th round, the others without polling):"
    );
    report("publish answered", acked);
    report("SSE delivered", to_sse);
    report("WS delivered", to_ws);
    report("visible in a poll", to_poll);
    ws.close().await;
}
