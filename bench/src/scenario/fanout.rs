//! Scenario 2: fan-out. Subscribers on one channel, half SSE and half WebSocket, all connected
//! (the channel's counts say so) before a paced publisher sends `fanout_rate` events a second
//! for `fanout_seconds`. Each event carries its send time; every subscriber times each
//! delivery. Delivered share, deliveries per second, p50 and p99 over all deliveries, and where
//! the CPU went. Then the same with `fanout_light_subscribers`, on a fresh channel: the latency
//! of the same path when the runtime is not saturated.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tokio::task::JoinHandle;

use super::{Plan, Setup};
use crate::client;
use crate::procfs;
use crate::stats::{percentile_ms, Figures, Target, Unit};
use crate::streams::{Kind, Next, Sub};

const SCENARIO: &str = "fanout";
const CONNECT_CONCURRENCY: usize = 50;
const CONNECT_BUDGET: Duration = Duration::from_secs(180);
const COUNTS_WAIT: Duration = Duration::from_secs(30);
/// How long after the last publish the subscribers may still be catching up.
const DRAIN: Duration = Duration::from_secs(15);

/// What one subscriber saw: deliveries, their latencies, when it got its last one.
struct Seen {
    delivered: u64,
    latencies: Vec<Duration>,
    last_at: Option<Instant>,
    /// Why the stream ended before the last event, if it did.
    ended: Option<String>,
}

pub async fn run(plan: &Plan, setup: &Setup) -> Result<Figures, String> {
    let mut f = measure(plan, setup, plan.fanout_subscribers, "").await?;
    let light = measure(plan, setup, plan.fanout_light_subscribers, "light").await?;
    let keep = [
        "fanout.light.delivered",
        "fanout.light.p50",
        "fanout.light.p99",
    ];
    f.list.extend(
        light
            .list
            .into_iter()
            .filter(|fig| keep.contains(&fig.id.as_str())),
    );
    f.notes.extend(light.notes);
    Ok(f)
}

/// One fan-out to `subscribers`; figure ids get `.{variant}` after `fanout` when it is not empty.
async fn measure(
    plan: &Plan,
    setup: &Setup,
    subscribers: usize,
    variant: &str,
) -> Result<Figures, String> {
    let c = client::channel("fan");
    let connecting = Instant::now();
    let subs = connect(subscribers, setup, &c).await;
    let connect_time = connecting.elapsed();
    let (mut sse, mut ws) = (0u64, 0u64);
    for (kind, _) in &subs {
        match kind {
            Kind::Sse => sse += 1,
            Kind::Ws => ws += 1,
        }
    }
    let connected = sse + ws;
    if connected == 0 {
        return Err("no subscriber could connect".into());
    }
    let counts = client::await_counts(&setup.hub, &c, (sse, ws), COUNTS_WAIT).await;
    if counts != (sse, ws) {
        return Err(format!(
            "the channel counts {counts:?} subscribers, {:?} connected",
            (sse, ws)
        ));
    }

    let events = plan.fanout_rate * plan.fanout_seconds;
    let before = Restarts::read(setup);
    let cpu_before = cpu_now(setup);
    let first_publish = Instant::now();
    let deadline = first_publish + Duration::from_secs(plan.fanout_seconds) + DRAIN;
    let readers: Vec<JoinHandle<Seen>> = subs
        .into_iter()
        .map(|(_, sub)| tokio::spawn(read(sub, events, deadline)))
        .collect();
    let (published, failures) = publish_paced(plan, setup, &c, events).await;
    let mut seen = Vec::with_capacity(readers.len());
    for r in readers {
        seen.push(
            r.await
                .map_err(|e| format!("a subscriber task failed: {e}"))?,
        );
    }

    let cpu_after = cpu_now(setup);
    let restarts = before.since(&Restarts::read(setup));
    let delivered: u64 = seen.iter().map(|s| s.delivered).sum();
    let ended: Vec<String> = seen.iter().filter_map(|s| s.ended.clone()).collect();
    let last = seen.iter().filter_map(|s| s.last_at).max();
    let mut latencies: Vec<Duration> = seen.into_iter().flat_map(|s| s.latencies).collect();
    latencies.sort();
    let want = connected * published;
    let share = if want == 0 {
        0.0
    } else {
        100.0 * delivered as f64 / want as f64
    };
    let span = last.map_or(0.0, |l| (l - first_publish).as_secs_f64());
    let rate = if span > 0.0 {
        delivered as f64 / span
    } else {
        0.0
    };

    let id = |x: &str| match variant {
        "" => format!("fanout.{x}"),
        v => format!("fanout.{v}.{x}"),
    };
    let label = |x: &str| match variant {
        "" => x.to_string(),
        _ => format!("{x}, {subscribers} subscribers"),
    };
    let main = variant.is_empty();
    let mut f = Figures::default();
    f.add(
        SCENARIO,
        &id("delivered"),
        &label("delivered share"),
        Unit::Percent,
        main.then_some(Target::AtLeast(100.0)),
        share,
    );
    f.add(
        SCENARIO,
        &id("deliveries_per_s"),
        &label("deliveries per second"),
        Unit::PerSec,
        None,
        rate,
    );
    f.add(
        SCENARIO,
        &id("p50"),
        &label("publish → deliver p50"),
        Unit::Ms,
        None,
        percentile_ms(&latencies, 0.5),
    );
    f.add(
        SCENARIO,
        &id("p99"),
        &label("publish → deliver p99"),
        Unit::Ms,
        main.then_some(Target::AtMost(25.0)),
        percentile_ms(&latencies, 0.99),
    );
    // Where the machine's CPU went while events were delivered (100 % is one core busy).
    for ((role, after), (_, before)) in cpu_after.iter().zip(&cpu_before) {
        let key: String = role.chars().filter(char::is_ascii_alphanumeric).collect();
        f.add(
            SCENARIO,
            &id(&format!("cpu.{key}")),
            &label(&format!("CPU while delivering: {role}")),
            Unit::Percent,
            None,
            // Over the delivering time: when a publish fails, the readers wait idle for it after.
            100.0 * (after - before) / span.max(1e-3),
        );
    }
    // Restarts are counted, not taken from the proxy's word: it answers "Your worker
    // restarted mid-request" for any failed fetch to the runtime. A restart of a runtime
    // process shows as a new pid, and drops the subscribers it holds (their streams end). The
    // object's instance id is no sign: it changes whenever the object hibernates.
    if main {
        f.add(
            SCENARIO,
            &id("restarts"),
            "restarts of a runtime process (a pid gone)",
            Unit::Count,
            Some(Target::AtMost(0.0)),
            restarts as f64,
        );
        f.add(
            SCENARIO,
            &id("ended_early"),
            "subscriber streams that ended before the last event",
            Unit::Count,
            Some(Target::AtMost(0.0)),
            ended.len() as f64,
        );
        f.add(
            SCENARIO,
            &id("publishes_failed"),
            "publishes that failed (the runtime closed their kept-alive connection unread)",
            Unit::Count,
            Some(Target::AtMost(0.0)),
            (events - published) as f64,
        );
    }
    let per_s = connected as f64 / connect_time.as_secs_f64().max(1e-3);
    f.add(
        SCENARIO,
        &id("connects_per_s"),
        &label("subscribers connected per second"),
        Unit::PerSec,
        None,
        per_s,
    );
    if let Some((why, after)) = failures.first() {
        let waited: Vec<String> = failures
            .iter()
            .map(|(_, after)| format!("{:.1}", after.as_secs_f64()))
            .collect();
        f.note(format!(
            "fanout: {} of {events} publishes failed, the first after {:.1} s: {why}; each \
             failed after (s): {}",
            events - published,
            after.as_secs_f64(),
            waited.join(" ")
        ));
    }
    if let Some(why) = ended.first() {
        f.note(format!(
            "fanout: {} subscribers' streams ended early, e.g. {why}",
            ended.len()
        ));
    }
    f.note(format!(
        "fanout: {connected} of {} subscribers connected ({sse} SSE, {ws} WebSocket) on one \
         channel, {CONNECT_CONCURRENCY} connecting at a time; {published} of {events} events \
         published ({} a second for {} s, each from its own task, not waiting for the last)",
        subscribers, plan.fanout_rate, plan.fanout_seconds
    ));
    Ok(f)
}

/// CPU seconds so far of the hub's processes by role, then of this bench (the load generator).
pub(super) fn cpu_now(setup: &Setup) -> Vec<(&'static str, f64)> {
    let mut roles: Vec<(&'static str, f64)> =
        procfs::ROLES.iter().map(|role| (*role, 0.0)).collect();
    for (role, secs) in procfs::cpu_by_role(setup.hub_pgid, setup.hub_port) {
        if let Some(slot) = roles.iter_mut().find(|(r, _)| *r == role) {
            slot.1 += secs;
        }
    }
    roles.push((
        "the load generator (this bench)",
        procfs::cpu_seconds("self").unwrap_or(0.0),
    ));
    roles
}

/// Opens `n` subscribers, alternating SSE and WebSocket, from the start of the (new) channel
/// so none misses an event; those that fail to open are left out.
async fn connect(n: usize, setup: &Setup, c: &str) -> Vec<(Kind, Sub)> {
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| async move {
            if started.elapsed() > CONNECT_BUDGET {
                return None;
            }
            let kind = if i % 2 == 0 { Kind::Sse } else { Kind::Ws };
            let sub = Sub::open(kind, &setup.hub, setup.hub_port, c, Some(0)).await;
            sub.ok().map(|s| (kind, s))
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .filter_map(|s| async move { s })
        .collect()
        .await
}

/// Reads until `events` events arrived, the stream ended, or `deadline`.
async fn read(mut sub: Sub, events: u64, deadline: Instant) -> Seen {
    let mut seen = Seen {
        delivered: 0,
        latencies: Vec::with_capacity(events as usize),
        last_at: None,
        ended: None,
    };
    while seen.delivered < events {
        match sub.next_event(deadline.into()).await {
            Next::Event(e) if !e.gap => {
                let now_us = client::micros();
                seen.delivered += 1;
                seen.last_at = Some(Instant::now());
                if let Some(sent) = e.sent_us {
                    seen.latencies
                        .push(Duration::from_micros(now_us.saturating_sub(sent)));
                }
            }
            Next::Event(_) => continue,
            Next::Timeout => break,
            Next::Closed(why) => {
                seen.ended = Some(why);
                break;
            }
        }
    }
    seen
}

/// Publishes `events` at `fanout_rate` a second, each in its own task; how many were stored,
/// and each failure with how long its publish had waited.
async fn publish_paced(
    plan: &Plan,
    setup: &Setup,
    c: &str,
    events: u64,
) -> (u64, Vec<(String, Duration)>) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.fanout_rate as f64));
    let mut sent = Vec::new();
    for k in 0..events {
        ticker.tick().await;
        let (hub, c) = (setup.hub.clone(), c.to_string());
        sent.push(tokio::spawn(async move {
            let body = format!(r#"{{"data":{{"t":{},"k":{k}}}}}"#, client::micros());
            let started = Instant::now();
            let result = client::publish(&hub, &c, body.into_bytes()).await;
            result.map_err(|why| (why, started.elapsed()))
        }));
    }
    let (mut ok, mut failures) = (0, Vec::new());
    for s in sent {
        match s.await {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(failed)) => failures.push(failed),
            Err(e) => failures.push((format!("a publish task failed: {e}"), Duration::ZERO)),
        }
    }
    (ok, failures)
}

/// What would show a restart: the runtime's process ids.
struct Restarts {
    pids: Vec<u32>,
}

impl Restarts {
    fn read(setup: &Setup) -> Restarts {
        let mut pids: Vec<u32> = procfs::group(setup.hub_pgid, setup.hub_port)
            .into_iter()
            .filter(|p| p.role.is_some())
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        Restarts { pids }
    }

    /// How many processes of `self` are gone in `later`.
    fn since(&self, later: &Restarts) -> u64 {
        self.pids.iter().filter(|p| !later.pids.contains(p)).count() as u64
    }
}
