//! Scenario 2: fan-out. Subscribers on one channel, half SSE and half WebSocket, all connected
//! (the channel's counts say so) before a paced publisher sends `fanout_rate` events a second
//! for `fanout_seconds`. Each event carries its send time; every subscriber times each
//! delivery. Delivered share, deliveries per second, p50 and p99 over all deliveries, and where
//! the CPU went. Then the same with `fanout_light_subscribers`, on a fresh channel: the latency
//! of the same path when the runtime is not saturated. With `--nchan`, issue 18's comparison:
//! the same fan-out to `fanout_subscribers` SSE subscribers only, on the hub and then on nchan,
//! with the same readers and the same paced publisher.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tokio::task::JoinHandle;

use super::{Plan, Setup};
use crate::client;
use crate::nchan::{self, Endpoint};
use crate::procfs;
use crate::stats::{percentile_ms, ratio, Figures, Target, Unit};
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

/// Who one fan-out runs against, and with which subscribers.
#[derive(Clone, Copy)]
enum Crowd<'a> {
    /// The hub, half SSE and half WebSocket (the figures without a variant, and `light`).
    Mixed(&'a Setup),
    /// The hub, SSE only (`sse`): issue 18's fan-out, beside nchan's.
    Sse(&'a Setup),
    /// nchan, SSE only (`nchan`).
    Nchan(&'a Endpoint),
}

impl Crowd<'_> {
    fn kind(self, i: usize) -> Kind {
        match self {
            Crowd::Mixed(_) if i % 2 == 1 => Kind::Ws,
            _ => Kind::Sse,
        }
    }

    /// Where subscribers connect: base URL and port.
    fn server(self) -> (&'static str, String, u16) {
        match self {
            Crowd::Mixed(s) | Crowd::Sse(s) => ("hub", s.hub.clone(), s.hub_port),
            Crowd::Nchan(n) => ("nchan", n.base.clone(), n.port),
        }
    }
}

pub async fn run(plan: &Plan, setup: &Setup) -> Result<Figures, String> {
    let mut f = measure(plan, Crowd::Mixed(setup), plan.fanout_subscribers, "").await?;
    let light = measure(
        plan,
        Crowd::Mixed(setup),
        plan.fanout_light_subscribers,
        "light",
    )
    .await?;
    keep(&mut f, light, &["delivered", "p50", "p99"], "light");
    if let Some(n) = &setup.nchan {
        let began = Instant::now();
        beside_nchan(plan, setup, n, &mut f).await;
        eprintln!(
            "    (the hub's SSE-only pass and nchan's: {:.1?})",
            began.elapsed()
        );
    }
    Ok(f)
}

/// Adds the figures `ids` of a variant's fan-out, and its notes.
fn keep(f: &mut Figures, variant: Figures, ids: &[&str], name: &str) {
    let ids: Vec<String> = ids.iter().map(|i| format!("fanout.{name}.{i}")).collect();
    f.list
        .extend(variant.list.into_iter().filter(|fig| ids.contains(&fig.id)));
    f.notes.extend(variant.notes);
}

/// Issue 18's comparison: `fanout_subscribers` SSE subscribers on the hub, then on nchan, and
/// the hub's figures ÷ nchan's. A pass that fails becomes a note; the hub's figures stay.
async fn beside_nchan(plan: &Plan, setup: &Setup, n: &Endpoint, f: &mut Figures) {
    let n_subs = plan.fanout_subscribers;
    let wanted = [
        "delivered",
        "deliveries_per_s",
        "p50",
        "p99",
        "publishes_failed",
    ];
    let hub = match measure(plan, Crowd::Sse(setup), n_subs, "sse").await {
        Ok(hub) => hub,
        Err(why) => {
            f.note(format!("fanout, SSE only: the pass failed: {why}"));
            return;
        }
    };
    let nchan = match measure(plan, Crowd::Nchan(n), n_subs, "nchan").await {
        Ok(nchan) => nchan,
        Err(why) => {
            keep(f, hub, &wanted, "sse");
            f.note(format!("fanout, nchan: the pass failed: {why}"));
            return;
        }
    };
    let value = |figs: &Figures, id: &str| {
        figs.list
            .iter()
            .find(|fig| fig.id == id)
            .and_then(|fig| fig.values.last().copied())
            .unwrap_or(f64::NAN)
    };
    let mut ratios = Figures::default();
    for (x, label, target) in [
        ("deliveries_per_s", "deliveries per second", None),
        ("p50", "publish → deliver p50", None),
        ("p99", "publish → deliver p99", Some(Target::AtMost(2.0))),
    ] {
        ratios.add(
            SCENARIO,
            &format!("fanout.sse.{x}.vs_nchan"),
            &format!("{label}, {n_subs} SSE subscribers: edgehub ÷ nchan"),
            Unit::Ratio,
            target,
            ratio(
                value(&hub, &format!("fanout.sse.{x}")),
                value(&nchan, &format!("fanout.nchan.{x}")),
            ),
        );
    }
    keep(f, hub, &wanted, "sse");
    let mut nchan_ids = wanted.to_vec();
    nchan_ids.extend(["cpu.nginx", "cpu.theloadgeneratorthisbench"]);
    keep(f, nchan, &nchan_ids, "nchan");
    f.extend(ratios);
    f.note(format!(
        "fanout, nchan: after the hub's passes, {n_subs} SSE subscribers only on a fresh hub \
         channel (`GET /sse/{{c}}`), then as many on nchan (`GET /sse/{{c}}`, `nchan_subscriber \
         eventsource`, docs/benchmarks.md#nchan), each counted by its server before the first \
         publish; the same readers and the same paced publisher ({} a second for {} s), nchan's \
         messages `{{\"t\":T,\"k\":K}}` POSTed to `/pub/{{c}}`: the `data` the hub's events \
         carry. \"edgehub ÷ nchan\" is the hub's SSE-only figure over nchan's, per run",
        plan.fanout_rate, plan.fanout_seconds
    ));
}

/// One fan-out to `subscribers`; figure ids get `.{variant}` after `fanout` when it is not empty.
async fn measure(
    plan: &Plan,
    crowd: Crowd<'_>,
    subscribers: usize,
    variant: &str,
) -> Result<Figures, String> {
    let c = client::channel("fan");
    let connecting = Instant::now();
    let subs = connect(subscribers, crowd, &c).await;
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
    match crowd {
        Crowd::Mixed(setup) | Crowd::Sse(setup) => {
            let counts = client::await_counts(&setup.hub, &c, (sse, ws), COUNTS_WAIT).await;
            if counts != (sse, ws) {
                return Err(format!(
                    "the channel counts {counts:?} subscribers, {:?} connected",
                    (sse, ws)
                ));
            }
        }
        Crowd::Nchan(n) => {
            let counted = nchan::await_subscribers(&n.base, &c, sse, COUNTS_WAIT).await;
            if counted != sse {
                return Err(format!(
                    "nchan counts {counted} subscribers, {sse} connected"
                ));
            }
        }
    }

    let events = plan.fanout_rate * plan.fanout_seconds;
    let before = Restarts::read(crowd);
    let cpu_before = cpu_of(crowd);
    let first_publish = Instant::now();
    let deadline = first_publish + Duration::from_secs(plan.fanout_seconds) + DRAIN;
    let readers: Vec<JoinHandle<Seen>> = subs
        .into_iter()
        .map(|(_, sub)| tokio::spawn(read(sub, events, deadline)))
        .collect();
    let (published, failures) = publish_paced(plan, crowd, &c, events).await;
    let mut seen = Vec::with_capacity(readers.len());
    for r in readers {
        seen.push(
            r.await
                .map_err(|e| format!("a subscriber task failed: {e}"))?,
        );
    }

    let cpu_after = cpu_of(crowd);
    let restarts = before.since(&Restarts::read(crowd));
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
    let label = |x: &str| match (variant, crowd) {
        ("", _) => x.to_string(),
        (_, Crowd::Mixed(_)) => format!("{x}, {subscribers} subscribers"),
        (_, Crowd::Sse(_)) => format!("{x}, {subscribers} SSE subscribers only"),
        (_, Crowd::Nchan(_)) => format!("nchan: {x}, {subscribers} SSE subscribers"),
    };
    let main = variant.is_empty();
    // Issue 18's targets for the hub's SSE-only fan-out: all delivered, no publish lost.
    let judged = main || matches!(crowd, Crowd::Sse(_));
    let mut f = Figures::default();
    f.add(
        SCENARIO,
        &id("delivered"),
        &label("delivered share"),
        Unit::Percent,
        judged.then_some(Target::AtLeast(100.0)),
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
    }
    f.add(
        SCENARIO,
        &id("publishes_failed"),
        &match variant {
            "" => "publishes that failed (the runtime closed their kept-alive connection unread)"
                .to_string(),
            _ => label("publishes that failed"),
        },
        Unit::Count,
        judged.then_some(Target::AtMost(0.0)),
        (events - published) as f64,
    );
    let per_s = connected as f64 / connect_time.as_secs_f64().max(1e-3);
    f.add(
        SCENARIO,
        &id("connects_per_s"),
        &label("subscribers connected per second"),
        Unit::PerSec,
        None,
        per_s,
    );
    let (who, _, _) = crowd.server();
    let tag = match crowd {
        Crowd::Mixed(_) => String::new(),
        Crowd::Sse(_) => ", SSE only".to_string(),
        Crowd::Nchan(_) => ", nchan".to_string(),
    };
    if let Some((why, after)) = failures.first() {
        let waited: Vec<String> = failures
            .iter()
            .map(|(_, after)| format!("{:.1}", after.as_secs_f64()))
            .collect();
        f.note(format!(
            "fanout{tag}: {} of {events} publishes failed, the first after {:.1} s: {why}; each \
             failed after (s): {}",
            events - published,
            after.as_secs_f64(),
            waited.join(" ")
        ));
    }
    if let Some(why) = ended.first() {
        f.note(format!(
            "fanout{tag}: {} subscribers' streams ended early, e.g. {why}",
            ended.len()
        ));
    }
    f.note(format!(
        "fanout{tag}: {connected} of {} subscribers connected ({sse} SSE, {ws} WebSocket) on one \
         {who} channel, {CONNECT_CONCURRENCY} connecting at a time; {published} of {events} \
         events published ({} a second for {} s, each from its own task, not waiting for the \
         last)",
        subscribers, plan.fanout_rate, plan.fanout_seconds
    ));
    Ok(f)
}

/// CPU seconds so far of the server's processes (the hub's by role, nchan's nginx as one),
/// then of this bench (the load generator).
fn cpu_of(crowd: Crowd) -> Vec<(&'static str, f64)> {
    match crowd {
        Crowd::Mixed(setup) | Crowd::Sse(setup) => cpu_now(setup),
        Crowd::Nchan(n) => vec![
            ("nginx", procfs::group_cpu_seconds(n.pgid)),
            (
                "the load generator (this bench)",
                procfs::cpu_seconds("self").unwrap_or(0.0),
            ),
        ],
    }
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

/// Opens `n` subscribers (on the hub: alternating SSE and WebSocket, or SSE only) from the
/// start of the (new) channel so none misses an event; those that fail to open are left out.
async fn connect(n: usize, crowd: Crowd<'_>, c: &str) -> Vec<(Kind, Sub)> {
    let started = Instant::now();
    let (_, base, port) = crowd.server();
    let base = &base;
    stream::iter(0..n)
        .map(|i| async move {
            if started.elapsed() > CONNECT_BUDGET {
                return None;
            }
            let kind = crowd.kind(i);
            let sub = Sub::open(kind, base, port, c, Some(0)).await;
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
    crowd: Crowd<'_>,
    c: &str,
    events: u64,
) -> (u64, Vec<(String, Duration)>) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.fanout_rate as f64));
    let mut sent = Vec::new();
    let (_, base, _) = crowd.server();
    let to_nchan = matches!(crowd, Crowd::Nchan(_));
    for k in 0..events {
        ticker.tick().await;
        let (base, c) = (base.clone(), c.to_string());
        sent.push(tokio::spawn(async move {
            // nchan's message is the `data` a hub event carries: both read as `{"t":…,"k":…}`.
            let data = format!(r#"{{"t":{},"k":{k}}}"#, client::micros());
            let started = Instant::now();
            let result = match to_nchan {
                true => nchan::publish(&base, &c, data.into_bytes()).await,
                false => {
                    let body = format!(r#"{{"data":{data}}}"#).into_bytes();
                    client::publish(&base, &c, body).await.map(|_| ())
                }
            };
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
    fn read(crowd: Crowd) -> Restarts {
        let (pgid, port) = match crowd {
            Crowd::Mixed(setup) | Crowd::Sse(setup) => (setup.hub_pgid, setup.hub_port),
            Crowd::Nchan(n) => (n.pgid, n.port),
        };
        let mut pids: Vec<u32> = procfs::group(pgid, port)
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
