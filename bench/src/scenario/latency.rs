//! Scenario 1: publish → deliver latency with one subscriber, one event at a time (the next is
//! published once the last was delivered and answered). Passes on fresh channels: an SSE
//! subscriber, then one SSE connection over `MANY` channels each (`GET /sse?channel=…`, events
//! published round-robin over its channels), the same for WebSocket, and a poller that polls
//! `since = id − 1` until the event shows (1 ms between polls). Times run from just before the
//! publish is sent; a many-channel figure is also given as a share of the single-channel one of
//! the same run. For the floor, the same number of requests one at a time to the no-op Worker,
//! and to its no-op Durable Object (`/do/{name}`): a delivery takes at least a request into an
//! object. With `--nchan`, the SSE pass's rounds also against nchan, after the hub's SSE
//! passes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Plan, Setup};
use crate::client;
use crate::nchan::{self, Endpoint};
use crate::stats::{percentile_ms, ratio, Figures, Target, Unit};
use crate::streams::{cursor_id, Kind, Next, SseSub, Sub};

const SCENARIO: &str = "latency";
/// The most one round may wait for its delivery.
const ROUND_WAIT: Duration = Duration::from_secs(10);
/// The most one pass may take, however many rounds are left.
const PASS_BUDGET: Duration = Duration::from_secs(240);
const POLL_PAUSE: Duration = Duration::from_millis(1);
/// The channel counts of the many-channel passes: one connection over each.
const MANY: [usize; 2] = [10, 100];
/// The cold rounds' medians are printed for each stretch of this many.
const COLD_STRETCH: usize = 500;

/// Whether the fresh hub's cold rounds were run (before the first run only).
static WARMED: AtomicBool = AtomicBool::new(false);

pub async fn run(plan: &Plan, setup: &Setup) -> Result<Figures, String> {
    let mut f = Figures::default();
    if !WARMED.swap(true, Ordering::SeqCst) {
        cold(plan, setup, &mut f).await?;
    }
    // The many-channel figures go below the single-channel ones, though measured beside them.
    let mut many = Figures::default();
    // So do nchan's, and the ratios to them.
    let mut beside = Figures::default();
    // Each transport's p99, for its ratio to the no-op object's round trip of the same run.
    let mut p99s = Vec::new();
    for kind in [Kind::Sse, Kind::Ws] {
        let (mut delivered, mut answered) =
            live_pass(setup, kind, plan.latency_warmup, plan.latency_events).await?;
        delivered.sort();
        answered.sort();
        let one = [0.5, 0.99].map(|q| percentile_ms(&delivered, q));
        p99s.push((kind, one[1]));
        for n in MANY {
            let (opened, mut times) = many_pass(plan, setup, kind, n).await?;
            times.sort();
            add_many(&mut many, kind, n, one, &times, opened);
        }
        let (p50, p99) = (Target::AtMost(1.0), Target::AtMost(3.0));
        let id = |q: &str| format!("latency.{}.{q}", kind.name());
        let label = |q: &str| format!("{} publish → deliver {q}", kind.label());
        f.add(
            SCENARIO,
            &id("p50"),
            &label("p50"),
            Unit::Ms,
            Some(p50),
            percentile_ms(&delivered, 0.5),
        );
        f.add(
            SCENARIO,
            &id("p99"),
            &label("p99"),
            Unit::Ms,
            Some(p99),
            percentile_ms(&delivered, 0.99),
        );
        if let (Kind::Sse, Some(n)) = (kind, &setup.nchan) {
            // After the hub's SSE passes, the same rounds against nchan.
            let began = Instant::now();
            let pass = nchan_pass(plan, n).await;
            eprintln!("    (nchan pass: {:.1?})", began.elapsed());
            match pass {
                Ok((d, a)) => add_nchan(&mut beside, d, a, one),
                Err(why) => beside.note(format!("latency, nchan: the pass failed: {why}")),
            }
        }
        if kind == Kind::Sse {
            let p = |q| percentile_ms(&answered, q);
            f.add(
                SCENARIO,
                "latency.publish.p50",
                "publish answered (201) p50",
                Unit::Ms,
                None,
                p(0.5),
            );
            f.add(
                SCENARIO,
                "latency.publish.p99",
                "publish answered (201) p99",
                Unit::Ms,
                None,
                p(0.99),
            );
        }
    }
    let (mut visible, mut request) = poll_pass(plan, setup).await?;
    visible.sort();
    request.sort();
    let (v, r) = (
        |q| percentile_ms(&visible, q),
        |q| percentile_ms(&request, q),
    );
    f.add(
        SCENARIO,
        "latency.poll.p50",
        "poll: publish → returned by a poll p50",
        Unit::Ms,
        None,
        v(0.5),
    );
    f.add(
        SCENARIO,
        "latency.poll.p99",
        "poll: publish → returned by a poll p99",
        Unit::Ms,
        None,
        v(0.99),
    );
    f.add(
        SCENARIO,
        "latency.poll_request.p50",
        "poll: that poll request's own time p50",
        Unit::Ms,
        None,
        r(0.5),
    );
    f.add(
        SCENARIO,
        "latency.poll_request.p99",
        "poll: that poll request's own time p99",
        Unit::Ms,
        None,
        r(0.99),
    );
    for (id, label, path) in [
        ("noop", "floor: no-op Worker, one request at a time", "/"),
        (
            "noop_object",
            "floor: no-op Durable Object round trip, one at a time",
            "/do/latency",
        ),
    ] {
        let url = format!("{}{path}", setup.noop);
        let mut times = sequential(&url, plan.latency_warmup, plan.latency_events).await?;
        times.sort();
        if id == "noop_object" {
            let floor = percentile_ms(&times, 0.99);
            for (kind, p99) in &p99s {
                f.add(
                    SCENARIO,
                    &format!("latency.{}.p99.vs_noop_object", kind.name()),
                    &format!(
                        "{} publish → deliver p99 ÷ the no-op object round trip p99",
                        kind.label()
                    ),
                    Unit::Ratio,
                    Some(Target::AtMost(1.5)),
                    ratio(*p99, floor),
                );
            }
        }
        for (q, at) in [("p50", 0.5), ("p99", 0.99)] {
            f.add(
                SCENARIO,
                &format!("latency.{id}.{q}"),
                &format!("{label} {q}"),
                Unit::Ms,
                None,
                percentile_ms(&times, at),
            );
        }
    }
    f.extend(many);
    f.extend(beside);
    f.note(format!(
        "latency: {} sequential events per pass after {} unmeasured warm-up events; one \
         subscriber per pass (SSE, WebSocket, poller), each on a fresh channel. Before the \
         first run, {} rounds of each of SSE and WebSocket on the fresh hub, the \
         \"fresh hub\" figures (a fresh local runtime is slower for its first seconds of load)",
        plan.latency_events, plan.latency_warmup, plan.latency_cold
    ));
    f.note(format!(
        "latency, many channels: for each transport, right after its single-channel pass, one \
         connection over {} fresh channels, then one over {} (`GET /sse?channel=…&since=0`, \
         `GET /ws?channel=…&since=0`), each with {} measured events published round-robin over \
         its channels, one at a time as above, after max({}, channels) unmeasured ones (so \
         every channel has had one); each delivery is checked for its channel and id (SSE: and \
         its `id:` cursor). \"vs one channel\" is the many-channel figure as a share of the \
         same transport's single-channel figure in the same run (100 % = as fast; 200 % = twice \
         the time). Time to open: from the request to the `id:`-only block (SSE) or `ready` \
         (WebSocket), both sent once every channel's subscription is live",
        MANY[0], MANY[1], plan.latency_events, plan.latency_warmup
    ));
    Ok(f)
}

/// The figures of one many-channel pass: its p50 and p99, each as a share of the single-channel
/// `one` (p50, p99) of the same transport and run, and its time to open.
fn add_many(
    f: &mut Figures,
    kind: Kind,
    n: usize,
    one: [f64; 2],
    sorted: &[Duration],
    opened: Duration,
) {
    let id = |q: &str| format!("latency.{}.ch{n}.{q}", kind.name());
    let who = format!("{} over {n} channels", kind.label());
    for ((q, at), single) in [("p50", 0.5), ("p99", 0.99)].into_iter().zip(one) {
        let v = percentile_ms(sorted, at);
        f.add(
            SCENARIO,
            &id(q),
            &format!("{who}, one connection: publish → deliver {q}"),
            Unit::Ms,
            None,
            v,
        );
        f.add(
            SCENARIO,
            &id(&format!("{q}_vs_one")),
            &format!("{who} vs one channel: {q}"),
            Unit::Percent,
            None,
            if single > 0.0 {
                100.0 * v / single
            } else {
                f64::NAN
            },
        );
    }
    f.add(
        SCENARIO,
        &id("open"),
        &format!("{who}: time to open (every subscription live)"),
        Unit::Ms,
        None,
        opened.as_secs_f64() * 1000.0,
    );
}

/// nchan's figures beside the hub's SSE ones, and the hub's `one` (p50, p99) ÷ nchan's.
fn add_nchan(
    f: &mut Figures,
    mut delivered: Vec<Duration>,
    mut answered: Vec<Duration>,
    one: [f64; 2],
) {
    delivered.sort();
    answered.sort();
    for ((q, at), hub) in [("p50", 0.5), ("p99", 0.99)].into_iter().zip(one) {
        let v = percentile_ms(&delivered, at);
        f.add(
            SCENARIO,
            &format!("latency.nchan.sse.{q}"),
            &format!("nchan: SSE publish → deliver {q}"),
            Unit::Ms,
            None,
            v,
        );
        f.add(
            SCENARIO,
            &format!("latency.nchan.publish.{q}"),
            &format!("nchan: publish answered (201) {q}"),
            Unit::Ms,
            None,
            percentile_ms(&answered, at),
        );
        f.add(
            SCENARIO,
            &format!("latency.sse.{q}.vs_nchan"),
            &format!("SSE publish → deliver {q}, edgehub ÷ nchan"),
            Unit::Ratio,
            None,
            ratio(hub, v),
        );
    }
    f.note(
        "latency, nchan: the SSE pass's rounds against nchan (docs/benchmarks.md#nchan), after \
         the hub's SSE passes, on a fresh channel: each message `{\"i\":N,\"t\":T}` POSTed to \
         `/pub/{c}`, read from `/sse/{c}` (`nchan_subscriber eventsource`) by the same SSE \
         reader, checked by its `t`; \"edgehub ÷ nchan\" is the hub's SSE figure over nchan's, \
         per run"
            .to_string(),
    );
}

/// The first rounds on the fresh hub, before the first run, as figures of their own
/// (`latency.{sse,ws}.cold.*`) and a note with the p50/p99 of each stretch of `COLD_STRETCH`
/// rounds. A fresh local runtime is slower for its first seconds of load (its isolate's code
/// not yet optimized, its heap not yet grown; the SSE p99 fell from about 6 to 3 ms only after
/// some 8,000 rounds, docs/benchmarks.md#publish-path), which would otherwise be the first
/// run's figures and not the others'.
async fn cold(plan: &Plan, setup: &Setup, f: &mut Figures) -> Result<(), String> {
    let mut curves = Vec::new();
    for kind in [Kind::Sse, Kind::Ws] {
        let (mut delivered, _) = live_pass(setup, kind, 0, plan.latency_cold).await?;
        let stretches: Vec<String> = delivered
            .chunks(COLD_STRETCH)
            .map(|c| {
                let mut c = c.to_vec();
                c.sort();
                format!(
                    "{:.2}/{:.1}",
                    percentile_ms(&c, 0.5),
                    percentile_ms(&c, 0.99)
                )
            })
            .collect();
        eprintln!(
            "    ({} on the fresh hub, ms, p50/p99 of each {COLD_STRETCH} rounds: {})",
            kind.label(),
            stretches.join(" ")
        );
        curves.push(format!("{}: {}", kind.label(), stretches.join(" ")));
        delivered.sort();
        for (q, at) in [("p50", 0.5), ("p99", 0.99)] {
            f.add(
                SCENARIO,
                &format!("latency.{}.cold.{q}", kind.name()),
                &format!(
                    "{} publish → deliver on the fresh hub, its first {} rounds, {q}",
                    kind.label(),
                    plan.latency_cold
                ),
                Unit::Ms,
                None,
                percentile_ms(&delivered, at),
            );
        }
    }
    f.note(format!(
        "latency, fresh hub: publish → deliver p50/p99 in ms of each {COLD_STRETCH} of the {} \
         rounds before the first run, in order. {}",
        plan.latency_cold,
        curves.join("; ")
    ));
    Ok(())
}

/// One SSE subscriber of nchan, the rounds of `live_pass`: each message carries its send time
/// `t`, by which its delivery is checked. Returns (publish → delivered, publish → answered).
async fn nchan_pass(plan: &Plan, n: &Endpoint) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let c = client::channel("lat-nchan");
    let mut sub = SseSub::open(&n.base, &c, None).await?;
    let (mut delivered, mut answered) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 1..=plan.latency_warmup + plan.latency_events {
        if started.elapsed() > PASS_BUDGET {
            return Err(format!("nchan pass: over {PASS_BUDGET:?} after {i} events"));
        }
        let t = client::micros();
        let body = format!(r#"{{"i":{i},"t":{t}}}"#).into_bytes();
        let deadline = tokio::time::Instant::now() + ROUND_WAIT;
        let sent = Instant::now();
        let (publish, got) = tokio::join!(
            async { (nchan::publish(&n.base, &c, body).await, Instant::now()) },
            async { (sub.next_event(deadline).await, Instant::now()) },
        );
        publish.0?;
        match got.0 {
            Next::Event(e) if !e.gap && e.sent_us == Some(t) => {}
            other => return Err(format!("nchan event {i}: published t={t}, got {other:?}")),
        }
        if i > plan.latency_warmup {
            delivered.push(got.1 - sent);
            answered.push(publish.1 - sent);
        }
    }
    Ok((delivered, answered))
}

/// `warmup` unmeasured GETs of `url`, then `n` measured ones, one after the other.
async fn sequential(url: &str, warmup: u64, n: u64) -> Result<Vec<Duration>, String> {
    let mut times = Vec::new();
    let started = Instant::now();
    for i in 0..warmup + n {
        if started.elapsed() > PASS_BUDGET {
            return Err(format!(
                "GET {url}: over {PASS_BUDGET:?} after {i} requests"
            ));
        }
        let asked = Instant::now();
        let r = client::http()
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = r.status().as_u16();
        r.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        if status != 200 {
            return Err(format!("GET {url}: {status}"));
        }
        if i >= warmup {
            times.push(asked.elapsed());
        }
    }
    Ok(times)
}

/// One subscriber of `kind`, `warmup` unmeasured events then `events` measured ones; returns
/// (publish → delivered, publish → answered) per measured event.
async fn live_pass(
    setup: &Setup,
    kind: Kind,
    warmup: u64,
    events: u64,
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let c = client::channel(&format!("lat-{}", kind.name()));
    let mut sub = Sub::open(kind, &setup.hub, setup.hub_port, &c, Some(0)).await?;
    let (mut delivered, mut answered) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 1..=warmup + events {
        if started.elapsed() > PASS_BUDGET {
            return Err(format!(
                "{} pass: over {PASS_BUDGET:?} after {i} events",
                kind.label()
            ));
        }
        let body = format!(r#"{{"data":{{"i":{i}}}}}"#).into_bytes();
        let deadline = tokio::time::Instant::now() + ROUND_WAIT;
        let sent = Instant::now();
        let (publish, got) = tokio::join!(
            async { (client::publish(&setup.hub, &c, body).await, Instant::now()) },
            async { (sub.next_event(deadline).await, Instant::now()) },
        );
        let ids = publish.0?;
        match got.0 {
            Next::Event(e) if !e.gap && e.id.is_some() && e.id == ids.first().copied() => {}
            other => {
                return Err(format!(
                    "{} event {i}: published {ids:?}, got {other:?}",
                    kind.label()
                ))
            }
        }
        if i > warmup {
            delivered.push(got.1 - sent);
            answered.push(publish.1 - sent);
        }
    }
    Ok((delivered, answered))
}

/// One connection of `kind` over `n` fresh channels, from `since=0`; events published one at a
/// time, round-robin over the channels. Returns how long it took to open (until every
/// subscription was live) and publish → delivered per measured event.
async fn many_pass(
    plan: &Plan,
    setup: &Setup,
    kind: Kind,
    n: usize,
) -> Result<(Duration, Vec<Duration>), String> {
    let prefix = client::channel(&format!("lat{n}-{}", kind.name()));
    let channels: Vec<String> = (0..n).map(|k| format!("{prefix}-{k}")).collect();
    let what = format!("{} over {n} channels", kind.label());
    let opening = Instant::now();
    let mut sub = Sub::open_many(kind, &setup.hub, setup.hub_port, &channels, Some("0")).await?;
    let opened = opening.elapsed();
    let warmup = plan.latency_warmup.max(n as u64);
    let mut delivered = Vec::new();
    let started = Instant::now();
    for (i, c) in (1..=warmup + plan.latency_events).zip(channels.iter().cycle()) {
        if started.elapsed() > PASS_BUDGET {
            return Err(format!("{what}: over {PASS_BUDGET:?} after {i} events"));
        }
        let body = format!(r#"{{"data":{{"i":{i}}}}}"#).into_bytes();
        let deadline = tokio::time::Instant::now() + ROUND_WAIT;
        let sent = Instant::now();
        let (publish, got) = tokio::join!(
            async { (client::publish(&setup.hub, c, body).await, Instant::now()) },
            async { (sub.next_event(deadline).await, Instant::now()) },
        );
        let ids = publish.0?;
        let want = ids.first().copied();
        match got.0 {
            Next::Event(e)
                if !e.gap
                    && e.id.is_some()
                    && e.id == want
                    && e.channel.as_deref() == Some(c.as_str())
                    && (kind == Kind::Ws
                        || e.cursor.as_deref().and_then(|cur| cursor_id(cur, c)) == want) => {}
            other => {
                return Err(format!(
                    "{what}, event {i}: published {ids:?} on {c}, got {other:?}"
                ))
            }
        }
        if i > warmup {
            delivered.push(got.1 - sent);
        }
    }
    Ok((opened, delivered))
}

/// One poller; returns (publish → returned by a poll, that poll's own time) per event.
async fn poll_pass(plan: &Plan, setup: &Setup) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let c = client::channel("lat-poll");
    let (mut visible, mut request) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for i in 1..=plan.latency_warmup + plan.latency_events {
        if started.elapsed() > PASS_BUDGET {
            return Err(format!("poll pass: over {PASS_BUDGET:?} after {i} events"));
        }
        let body = format!(r#"{{"data":{{"i":{i}}}}}"#).into_bytes();
        let sent = Instant::now();
        let (publish, seen) = tokio::join!(
            client::publish(&setup.hub, &c, body),
            poll_until(&setup.hub, &c, i),
        );
        if publish? != vec![i] {
            return Err(format!("poll pass: event {i} got another id"));
        }
        let (at, took) = seen?;
        if i > plan.latency_warmup {
            visible.push(at - sent);
            request.push(took);
        }
    }
    Ok((visible, request))
}

/// Polls `since = id − 1` until event `id` is returned: when that poll ended, and how long it
/// took. Bounded by `ROUND_WAIT`.
async fn poll_until(base: &str, c: &str, id: u64) -> Result<(Instant, Duration), String> {
    let url = format!("{base}/poll/{c}?since={}&limit=1", id - 1);
    let started = Instant::now();
    while started.elapsed() < ROUND_WAIT {
        let asked = Instant::now();
        let r = client::http()
            .get(&url)
            .header("authorization", client::bearer())
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = r.status().as_u16();
        let body = r.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        let done = Instant::now();
        if status != 200 {
            return Err(format!("GET {url}: {status}"));
        }
        let page: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if page["events"][0]["id"].as_u64() == Some(id) {
            return Ok((done, done - asked));
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    Err(format!(
        "event {id} not returned by a poll within {ROUND_WAIT:?}"
    ))
}
