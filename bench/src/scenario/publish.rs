//! Scenario 5: publish throughput. `publish_concurrency` publishers, each one request after the
//! other, for `publish_seconds`: into one channel and spread over `publish_channels` channels,
//! one event per request and batches of 100. Events stored per second (201 answers × events
//! per request). Between variants the D1 mirror is let catch up, so no backlog carries over.
//! The ceiling for a publish is a request that reaches a Durable Object and does nothing there:
//! the no-op Worker's `/do/{name}`, loaded the same way, and the single publishes into one
//! channel as a share of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{polling, Plan, Setup};
use crate::client;
use crate::stats::{percentile_ms, Figures, Target, Unit};

const SCENARIO: &str = "publish";
const BATCH: usize = 100;
/// The most requests one variant may send, whatever the time.
const MAX_REQUESTS: u64 = 200_000;
const MIRROR_WAIT: Duration = Duration::from_secs(60);

/// One variant's result.
struct Load {
    events_per_s: f64,
    p99: f64,
    errors: u64,
}

pub async fn run(plan: &Plan, setup: &Setup) -> Result<Figures, String> {
    let mut f = Figures::default();
    let seconds = Duration::from_secs_f64(plan.publish_seconds);
    let object_url = format!("{}/do/ceiling", setup.noop);
    let ceiling = polling::load(plan.publish_concurrency, &object_url, None, 200, seconds).await;
    f.add(
        SCENARIO,
        "publish.noop_object.per_s",
        "no-op Durable Object round trip (the ceiling): requests/s",
        Unit::PerSec,
        None,
        ceiling.per_s,
    );
    f.add(
        SCENARIO,
        "publish.noop_object.p99",
        "no-op Durable Object round trip: p99",
        Unit::Ms,
        None,
        ceiling.p99,
    );
    let mut errors = ceiling.errors;
    let mut lagging = 0;
    for (spread, channels) in [("one", 1), ("many", plan.publish_channels)] {
        for (size, label, per_request) in [
            ("single", "one event per request", 1),
            ("batched", "100 per request", BATCH),
        ] {
            let names: Vec<String> = (0..channels).map(|_| client::channel("pub")).collect();
            let load = publish(plan, setup, &names, per_request).await;
            errors += load.errors;
            for c in &names {
                if !client::await_mirrored(&setup.hub, c, MIRROR_WAIT).await {
                    lagging += 1;
                }
            }
            let target = match (spread, size) {
                ("one", "single") => Some(Target::AtLeast(500.0)),
                ("one", "batched") => Some(Target::AtLeast(2000.0)),
                _ => None,
            };
            let into = match spread {
                "one" => "into one channel".to_string(),
                _ => format!("across {channels} channels"),
            };
            f.add(
                SCENARIO,
                &format!("publish.{spread}.{size}"),
                &format!("events/s {into}, {label}"),
                Unit::PerSec,
                target,
                load.events_per_s,
            );
            if (spread, size) == ("one", "single") && ceiling.per_s > 0.0 {
                f.add(
                    SCENARIO,
                    "publish.one.single.vs_noop_object",
                    "single publishes into one channel vs the no-op object round trip",
                    Unit::Percent,
                    None,
                    100.0 * load.events_per_s / ceiling.per_s,
                );
            }
            f.add(
                SCENARIO,
                &format!("publish.{spread}.{size}.p99"),
                &format!("request p99 {into}, {label}"),
                Unit::Ms,
                None,
                load.p99,
            );
        }
    }
    f.note(format!(
        "publish: {} concurrent publishers, {} s per variant, each on fresh channels{}{}",
        plan.publish_concurrency,
        plan.publish_seconds,
        match errors {
            0 => String::new(),
            n => format!("; {n} publishes were refused or failed (in the last run that had any)"),
        },
        match lagging {
            0 => String::new(),
            n => format!("; {n} channels' mirrors had not caught up {MIRROR_WAIT:?} after"),
        }
    ));
    Ok(f)
}

/// `plan.publish_concurrency` loops of publishes to `channels` in turn, `per_request` events
/// each, for `plan.publish_seconds`.
async fn publish(plan: &Plan, setup: &Setup, channels: &[String], per_request: usize) -> Load {
    let one = r#"{"data":{"n":1}}"#;
    let body = match per_request {
        1 => one.to_string(),
        n => format!("[{}]", vec![one; n].join(",")),
    };
    let next = Arc::new(AtomicU64::new(0));
    let channels = Arc::new(channels.to_vec());
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(plan.publish_seconds);
    let tasks: Vec<_> = (0..plan.publish_concurrency)
        .map(|_| {
            let (hub, body, next, channels) = (
                setup.hub.clone(),
                body.clone(),
                next.clone(),
                channels.clone(),
            );
            tokio::spawn(async move {
                let (mut stored, mut errors, mut times) = (0u64, 0u64, Vec::new());
                while Instant::now() < stop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= MAX_REQUESTS {
                        break;
                    }
                    let c = channels
                        .get(k as usize % channels.len().max(1))
                        .cloned()
                        .unwrap_or_default();
                    let asked = Instant::now();
                    match client::publish(&hub, &c, body.clone().into_bytes()).await {
                        Ok(ids) => {
                            stored += ids.len() as u64;
                            times.push(asked.elapsed());
                        }
                        Err(_) => errors += 1,
                    }
                }
                (stored, errors, times)
            })
        })
        .collect();
    let (mut stored, mut errors, mut times) = (0, 0, Vec::new());
    for t in tasks {
        if let Ok((s, e, ts)) = t.await {
            stored += s;
            errors += e;
            times.extend(ts);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort();
    Load {
        events_per_s: stored as f64 / elapsed.max(1e-3),
        p99: percentile_ms(&times, 0.99),
        errors,
    }
}
