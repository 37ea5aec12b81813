//! The steady traffic under the storms: a publisher that publishes one small event every
//! `plan.presence_publish_every`, each from its own task, and the observers (plain subscribers)
//! that time each delivery; and the latencies of the events sent in a window.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::client;
use crate::streams::{Next, WsSub};

/// The most publishes in one run, whatever the time (ten minutes' worth at 50 a second).
const MAX_PUBLISHES: u64 = 30_000;
/// How long an observer may still be catching up after the last publish.
const DRAIN: Duration = Duration::from_secs(30);

/// One publish: when it was sent (`client::micros()`), how long its answer took, its id or why
/// it failed.
pub struct Sent {
    pub at_us: u64,
    pub took: Duration,
    pub outcome: Result<u64, String>,
}

/// One event at an observer: its id, when it was sent and received (`client::micros()`).
pub struct Delivery {
    pub id: u64,
    pub sent_us: u64,
    pub got_us: u64,
}

/// Publishes one small event every `every`, each from its own task (not waiting for the last),
/// until `stop`.
pub async fn publish_paced(
    hub: String,
    c: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Sent> {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tasks = Vec::new();
    for k in 0..MAX_PUBLISHES {
        ticker.tick().await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let (hub, c) = (hub.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let at_us = client::micros();
            let asked = Instant::now();
            let body = format!(r#"{{"data":{{"t":{at_us},"k":{k}}}}}"#);
            let outcome = client::publish(&hub, &c, body.into_bytes())
                .await
                .and_then(|ids| ids.first().copied().ok_or("no id in the answer".into()));
            Sent {
                at_us,
                took: asked.elapsed(),
                outcome,
            }
        }));
    }
    let mut sent = Vec::with_capacity(tasks.len());
    for t in tasks {
        sent.push(t.await.unwrap_or_else(|e| Sent {
            at_us: 0,
            took: Duration::ZERO,
            outcome: Err(format!("a publish task failed: {e}")),
        }));
    }
    sent
}

/// Reads an observer's events until it has read id `last` (`u64::MAX` until known),
/// then for at most `DRAIN` more, or until `deadline`; why it stopped early, if it did.
/// `read_up_to` is the latest send time (`client::micros()`) of the events read so far.
pub async fn read_plain(
    mut sub: WsSub,
    last: Arc<AtomicU64>,
    read_up_to: Arc<AtomicU64>,
    deadline: Instant,
) -> (Vec<Delivery>, Option<String>) {
    let (mut got, mut read, mut drain_until) = (Vec::new(), 0, None);
    let mut ended = None;
    loop {
        let want = last.load(Ordering::SeqCst);
        let now = Instant::now();
        if want != u64::MAX && read >= want {
            break;
        }
        if want != u64::MAX && now >= *drain_until.get_or_insert(now + DRAIN) {
            ended = Some(format!(
                "had read up to id {read} of {want} after {DRAIN:?}"
            ));
            break;
        }
        if now >= deadline {
            ended = Some("still reading at the scenario's deadline".into());
            break;
        }
        let wake = (now + Duration::from_millis(200)).min(deadline);
        match sub.next_event(wake).await {
            Next::Event(e) if !e.gap => {
                let got_us = client::micros();
                let id = e.id.unwrap_or(0);
                read = read.max(id);
                if let Some(sent_us) = e.sent_us {
                    read_up_to.fetch_max(sent_us, Ordering::SeqCst);
                    got.push(Delivery {
                        id,
                        sent_us,
                        got_us,
                    });
                }
            }
            Next::Event(_) => ended = Some("a gap".to_string()),
            Next::Timeout => {}
            Next::Closed(why) => {
                ended = Some(why);
                break;
            }
        }
    }
    (got, ended)
}

/// Publish → deliver of the events sent in `from..to` (`client::micros()`) to every
/// subscriber, sorted.
pub fn latencies(delivered: &[Vec<Delivery>], from: u64, to: u64) -> Vec<Duration> {
    let mut v: Vec<Duration> = delivered
        .iter()
        .flatten()
        .filter(|d| (from..to).contains(&d.sent_us))
        .map(|d| Duration::from_micros(d.got_us.saturating_sub(d.sent_us)))
        .collect();
    v.sort();
    v
}

/// The share (%) of ids 1..=`head` that reached each subscriber, each counted once.
pub fn delivered_share(delivered: &[Vec<Delivery>], head: u64) -> f64 {
    let got: usize = delivered
        .iter()
        .map(|one| {
            let ids: HashSet<u64> = one.iter().map(|d| d.id).collect();
            (1..=head).filter(|id| ids.contains(id)).count()
        })
        .sum();
    let want = head as f64 * delivered.len() as f64;
    crate::stats::percent_of(got as f64, want)
}
