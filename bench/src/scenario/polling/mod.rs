//! Scenario 4: polling throughput. `poll_concurrency` pollers, each one request after the
//! other on a kept-alive connection, for `poll_seconds` per path: the no-op Worker (`GET /`,
//! the runtime's own ceiling), a poll answered 200 (a page of 10 small events; every poller
//! asks the same, so the isolate answers most from the page it made, docs/API.md#poll-cache),
//! the same with every request another one (its `limit` varies, so each is read from D1), and
//! the same poll with its `If-None-Match` answered 304; then both again as one poll over
//! `MANY` channels (`/poll?channel=…&since=<stream cursor>`, docs/API.md#stream-poll) that
//! answers the same 10 events, as a share of the one-channel poll. Each path gets a short
//! warm-up.
//! Then the largest page the limits allow: 5 anonymous pollers of a public channel asking for
//! `limit=1000` of 60 KB events, with the worker workerd's memory sampled while they poll; and,
//! as the runtime's own floor, 5 pollers of a no-op Worker path that answers a body as large.
//! With `--nchan`, the one-channel 200 again against nchan: its interval-poll subscriber
//! answering the same page's bytes as its one message.

mod catch_up;

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::Value;

use super::{Plan, Setup};
use crate::client;
use crate::nchan::{self, Endpoint};
use crate::procfs;
use crate::stats::{self, percent_of, percentile_ms, Figures, Target, Unit};
use crate::streams::channel_query;

const SCENARIO: &str = "polling";
const PAGE: usize = 10;
const WARM_UP: Duration = Duration::from_millis(500);
const MIRROR_WAIT: Duration = Duration::from_secs(30);
/// The channels of the many-channel poll (`MAX_STREAM_CHANNELS`, the most one poll may name).
const MANY: usize = 100;
/// The pollers of the crowd load: all on one cursor, each one request after the other.
const CROWD: usize = 100;
/// The hub's `POLL_CACHE_MS` (its default; the bench sets no other): how long the isolate uses
/// a window it read, so the crowd's D1 reads are counted per such window.
const POLL_CACHE_MS: f64 = 250.0;
/// Publishes in flight while the many-channel poll's channels are filled.
const FILL_CONCURRENCY: usize = 10;

/// One path's load result.
pub(super) struct Load {
    pub per_s: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: u64,
    /// Answers that said `x-edgehub-cache: hit` (made by the isolate without D1).
    pub hits: u64,
    /// Answers that said `x-edgehub-cache: miss` (the poll's own D1 read).
    pub misses: u64,
    pub answers: u64,
}

/// In a load's URL, `limit=` this: each request asks another limit (10 to 999, all holding the
/// same 10 events), so no two requests within the isolate's `POLL_CACHE_MS` are the same poll
/// and every answer is read from D1.
const VARY: &str = "limit=VARY";
/// The requests of `VARY` loads so far, across loads (warm-ups included), so that no limit comes
/// back within 990 requests.
static VARIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub async fn run(plan: &Plan, setup: &Setup) -> Result<Figures, String> {
    let c = client::channel("poll");
    let batch: Vec<String> = (0..PAGE)
        .map(|i| format!(r#"{{"data":{{"n":{i}}}}}"#))
        .collect();
    client::publish(
        &setup.hub,
        &c,
        format!("[{}]", batch.join(",")).into_bytes(),
    )
    .await?;
    if !client::await_mirrored(&setup.hub, &c, MIRROR_WAIT).await {
        return Err(format!(
            "the mirror did not catch up within {MIRROR_WAIT:?}"
        ));
    }
    let url = format!("{}/poll/{c}?since=0&limit={PAGE}", setup.hub);
    let etag = etag(&url).await?;
    let many_url = many_channels(setup).await?;
    let many_etag = etag_of(&many_url, |page| {
        let events = page["events"].as_array().map_or(0, Vec::len);
        match (events, &page["more"]) {
            (PAGE, Value::Bool(false)) => Ok(()),
            _ => Err(format!("{events} events, more {}", page["more"])),
        }
    })
    .await?;
    let noop_url = format!("{}/", setup.noop);
    let seconds = Duration::from_secs_f64(plan.poll_seconds);

    let n = plan.poll_concurrency;
    let noop = load(n, &noop_url, None, 200, seconds).await;
    let full = load(n, &url, None, 200, seconds).await;
    let distinct_url = url.replacen(&format!("limit={PAGE}"), VARY, 1);
    let distinct = load(n, &distinct_url, None, 200, seconds).await;
    let not_modified = load(n, &url, Some(&etag), 304, seconds).await;
    let crowd = load(CROWD, &url, None, 200, seconds).await;
    let catching_up = catch_up::run(&setup.hub, seconds).await?;
    let many_full = load(n, &many_url, None, 200, seconds).await;
    let many_not_modified = load(n, &many_url, Some(&many_etag), 304, seconds).await;
    // The runtime's own cost of a request that long: the no-op Worker, the same path and query.
    let many_noop_url = many_url.replacen(&setup.hub, &setup.noop, 1);
    let many_noop = load(n, &many_noop_url, None, 200, seconds).await;
    let beside = match &setup.nchan {
        Some(nchan) => {
            let began = Instant::now();
            let load = nchan_poll(plan, nchan, &url).await;
            eprintln!("    (nchan load: {:.1?})", began.elapsed());
            Some(load)
        }
        None => None,
    };

    let big = big_pages(plan, setup).await?;

    let mut f = Figures::default();
    let mut add = |path: &str, label: &str, l: &Load| {
        f.add(
            SCENARIO,
            &format!("polling.{path}.per_s"),
            &format!("{label}: requests per second"),
            Unit::PerSec,
            None,
            l.per_s,
        );
        f.add(
            SCENARIO,
            &format!("polling.{path}.p50"),
            &format!("{label}: p50"),
            Unit::Ms,
            None,
            l.p50,
        );
        f.add(
            SCENARIO,
            &format!("polling.{path}.p99"),
            &format!("{label}: p99"),
            Unit::Ms,
            None,
            l.p99,
        );
    };
    add("noop", "no-op Worker", &noop);
    add("200", "poll answered 200 (pollers on one cursor)", &full);
    add(
        "200.d1",
        "poll answered 200, every request another (from D1)",
        &distinct,
    );
    add("304", "poll answered 304", &not_modified);
    add(
        &format!("200.c{CROWD}"),
        &format!("poll answered 200, {CROWD} pollers on one cursor"),
        &crowd,
    );
    add(
        &format!("ch{MANY}.200"),
        &format!("poll over {MANY} channels answered 200"),
        &many_full,
    );
    add(
        &format!("ch{MANY}.304"),
        &format!("poll over {MANY} channels answered 304"),
        &many_not_modified,
    );
    add(
        &format!("ch{MANY}.noop"),
        &format!("no-op Worker, the {MANY}-channel poll's URL"),
        &many_noop,
    );
    if let Some(Ok(nchan)) = &beside {
        add(
            "nchan.200",
            "nchan: interval poll answered 200 (the same page)",
            nchan,
        );
    }
    let ratio = |l: &Load| percent_of(l.per_s, noop.per_s);
    f.add(
        SCENARIO,
        "polling.200.vs_noop",
        "poll 200 (pollers on one cursor) vs no-op requests per second",
        Unit::Percent,
        Some(Target::AtLeast(70.0)),
        ratio(&full),
    );
    match &beside {
        Some(Ok(nchan)) => {
            f.add(
                SCENARIO,
                "polling.200.per_s.vs_nchan",
                "poll 200 (pollers on one cursor), edgehub ÷ nchan: requests per second",
                Unit::Ratio,
                None,
                stats::ratio(full.per_s, nchan.per_s),
            );
            f.note(format!(
                "polling, nchan: the one-channel 200's page, its bytes as they came from the hub, \
                 published as one message to a fresh nchan channel, then the same {} pollers, \
                 connections and time asking nchan's interval-poll subscriber for it \
                 (`GET /poll/{{c}}`, `nchan_subscriber intervalpoll`, no message id: the oldest \
                 message retained, at once; docs/benchmarks.md#nchan), with the same headers; \
                 {} answers were not 200",
                plan.poll_concurrency, nchan.errors
            ));
        }
        Some(Err(why)) => f.note(format!("polling, nchan: the load failed: {why}")),
        None => {}
    }
    f.add(
        SCENARIO,
        "polling.200.d1.vs_noop",
        "poll 200, every request another (from D1), vs no-op requests per second",
        Unit::Percent,
        None,
        ratio(&distinct),
    );
    // How many of the pollers' answers came from the isolate, not D1 (issue 18: ≤ 1 D1 read per
    // window for pollers on one cursor).
    let share = |l: &Load| 100.0 * l.hits as f64 / (l.answers.max(1)) as f64;
    f.add(
        SCENARIO,
        "polling.200.hits",
        "poll 200 (pollers on one cursor): answers made by the isolate without D1",
        Unit::Percent,
        None,
        share(&full),
    );
    f.add(
        SCENARIO,
        "polling.200.d1.hits",
        "poll 200, every request another: answers made by the isolate without D1",
        Unit::Percent,
        Some(Target::AtMost(0.0)),
        share(&distinct),
    );
    // Issue 18: 100 pollers on one cursor ≤ 1 D1 read per window. The load runs `seconds`
    // after its warm-up; the isolate reads a window at most once per `POLL_CACHE_MS`.
    let windows = (seconds.as_secs_f64() * 1000.0 / POLL_CACHE_MS).max(1.0);
    f.add(
        SCENARIO,
        &format!("polling.200.c{CROWD}.d1_per_window"),
        &format!("poll 200, {CROWD} pollers on one cursor: D1 reads per {POLL_CACHE_MS} ms window"),
        Unit::Ratio,
        Some(Target::AtMost(1.0)),
        crowd.misses as f64 / windows,
    );
    f.add(
        SCENARIO,
        "polling.catchup.per_s",
        "readers catching up while published to: requests per second",
        Unit::PerSec,
        None,
        catching_up.per_s,
    );
    f.add(
        SCENARIO,
        "polling.catchup.spared",
        "readers catching up while published to: answers without a D1 read of their own",
        Unit::Percent,
        None,
        catching_up.spared(),
    );
    let s = catching_up.sources;
    f.note(format!(
        "polling, catch-up: 10 readers walk 500 events 10 at a time (from 10 places, following \
         `next`, then again from 0) while one event is published every 100 ms ({} published); \
         answers: {} hit, {} stored, {} shared, {} miss; {} failed",
        catching_up.published, s.hit, s.stored, s.shared, s.miss, catching_up.errors
    ));
    f.add(
        SCENARIO,
        "polling.304.vs_noop",
        "poll 304 vs no-op requests per second",
        Unit::Percent,
        Some(Target::AtLeast(50.0)),
        ratio(&not_modified),
    );
    for (status, one, many) in [
        ("200", &full, &many_full),
        ("304", &not_modified, &many_not_modified),
    ] {
        f.add(
            SCENARIO,
            &format!("polling.ch{MANY}.{status}.vs_one"),
            &format!(
                "poll over {MANY} channels vs one channel, answered {status}: requests per second"
            ),
            Unit::Percent,
            None,
            percent_of(many.per_s, one.per_s),
        );
    }
    f.add(
        SCENARIO,
        &format!("polling.ch{MANY}.304.vs_noop"),
        &format!("poll over {MANY} channels 304 vs no-op Worker with its URL: requests per second"),
        Unit::Percent,
        None,
        percent_of(many_not_modified.per_s, many_noop.per_s),
    );
    f.add(
        SCENARIO,
        "polling.big.page_kib",
        "largest page: bytes of one answer",
        Unit::Kib,
        Some(Target::AtMost(1025.0)),
        big.hub.page_bytes as f64 / 1024.0,
    );
    for (who, label, load) in [
        ("hub", "poll", &big.hub),
        ("noop", "no-op Worker", &big.noop),
    ] {
        f.add(
            SCENARIO,
            &format!("polling.big.{who}.per_s"),
            &format!("largest page, {BIG_POLLERS} pollers, {label}: answers per second"),
            Unit::PerSec,
            None,
            load.per_s,
        );
        f.add(
            SCENARIO,
            &format!("polling.big.{who}.growth_kib"),
            &format!("largest page, {BIG_POLLERS} pollers, {label}: worker memory growth"),
            Unit::Kib,
            None,
            load.peak_kib.saturating_sub(load.before_kib) as f64,
        );
    }
    f.note(format!(
        "polling: the largest page is {BIG_EVENTS} events of {BIG_DATA} bytes on a public \
         channel ({} KiB answered), polled with `?since=0&limit=1000` by {BIG_POLLERS} anonymous \
         pollers for {} s: the worker workerd's PSS went from {} KiB to a peak of {} KiB; the \
         no-op Worker answering bodies as large (`/big`) went from {} KiB to {} KiB. Growth is \
         the peak over the run (the runtime's heap grows until it collects)",
        big.hub.page_bytes / 1024,
        plan.poll_seconds,
        big.hub.before_kib,
        big.hub.peak_kib,
        big.noop.before_kib,
        big.noop.peak_kib
    ));
    let errors = noop.errors
        + full.errors
        + not_modified.errors
        + many_full.errors
        + many_not_modified.errors
        + many_noop.errors
        + big.hub.errors
        + big.noop.errors;
    f.note(format!(
        "polling: {} pollers, {} s per path after {WARM_UP:?} of warm-up, with the bench's bearer \
         token (the no-op Worker gets the same header); a poll returns a page of {PAGE} events \
         (`?since=0&limit={PAGE}`){}",
        plan.poll_concurrency,
        plan.poll_seconds,
        match errors {
            0 => String::new(),
            n => format!("; {n} answers were not the expected status (in the last run that had any)"),
        }
    ));
    f.note(format!(
        "polling, {MANY} channels: one event on each of {MANY} fresh channels, polled with one \
         request naming all {MANY} (`/poll?channel=…&since=<stream cursor>&limit={PAGE}`, a \
         {} KiB URL) whose cursor has every tenth channel one event behind: a 200 is the same \
         {PAGE} small events as the one-channel page (checked before the load), a 304 the same \
         request with its ETag; the same pollers, connections and time per path as the \
         one-channel poll, in the same run. \"vs one channel\" is its requests per second as a \
         share of the one-channel poll with the same answer; the no-op Worker gets the same \
         path and query, to show what a URL that long costs the runtime itself",
        many_url.len().div_ceil(1024)
    ));
    Ok(f)
}

/// The one-channel 200's page (`hub_url`), its bytes published to a fresh nchan channel as one
/// message, checked to come back from nchan's interval poll, then the same load against it.
async fn nchan_poll(plan: &Plan, n: &Endpoint, hub_url: &str) -> Result<Load, String> {
    let page = client::http()
        .get(hub_url)
        .header("authorization", client::bearer())
        .send()
        .await
        .map_err(|e| format!("GET {hub_url}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("GET {hub_url}: {e}"))?;
    let c = client::channel("poll-nchan");
    nchan::publish(&n.base, &c, page.to_vec()).await?;
    let url = format!("{}/poll/{c}", n.base);
    let r = client::http()
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status().as_u16();
    let body = r.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    if status != 200 || body != page {
        return Err(format!(
            "GET {url}: {status}, {} bytes, not the {} published",
            body.len(),
            page.len()
        ));
    }
    let seconds = Duration::from_secs_f64(plan.poll_seconds);
    let l = load(plan.poll_concurrency, &url, None, 200, seconds).await;
    match l.answers {
        0 => Err(format!(
            "GET {url}: no 200 in the load, {} errors",
            l.errors
        )),
        _ => Ok(l),
    }
}

/// Fills `MANY` fresh channels with one event each, waits (bounded) until the D1 mirror holds
/// all of them, and returns the many-channel poll's URL: every channel named, every tenth one
/// event behind in its stream cursor, so its page is `PAGE` events.
async fn many_channels(setup: &Setup) -> Result<String, String> {
    let prefix = client::channel("poll100");
    let channels: Vec<String> = (0..MANY).map(|k| format!("{prefix}-{k}")).collect();
    let published: Vec<Result<Vec<u64>, String>> = stream::iter(channels.iter().enumerate())
        .map(|(k, c)| {
            let body = format!(r#"{{"data":{{"n":{k}}}}}"#).into_bytes();
            client::publish(&setup.hub, c, body)
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .collect()
        .await;
    for p in published {
        if p? != vec![1] {
            return Err("a fresh channel's first event was not id 1".into());
        }
    }
    let query = channel_query(&channels);
    // The mirror holds them all once a poll from 0 over the set returns every one.
    let everything = format!("{}/poll?{query}&since=0&limit={MANY}", setup.hub);
    let started = Instant::now();
    loop {
        let page = get_json(&everything).await?;
        if page["events"].as_array().map_or(0, Vec::len) == MANY {
            break;
        }
        if started.elapsed() > MIRROR_WAIT {
            return Err(format!(
                "the mirror did not hold all {MANY} channels within {MIRROR_WAIT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cursor: Vec<String> = channels
        .iter()
        .enumerate()
        .map(|(k, c)| format!("{c}={}", u64::from(k % (MANY / PAGE) != 0)))
        .collect();
    Ok(format!(
        "{}/poll?{query}&since={}&limit={PAGE}",
        setup.hub,
        client::encode(&cursor.join(","))
    ))
}

async fn get_json(url: &str) -> Result<Value, String> {
    let r = client::http()
        .get(url)
        .header("authorization", client::bearer())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status().as_u16();
    let body = r.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    match status {
        200 => serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}")),
        s => Err(format!("GET {url}: {s} {}", String::from_utf8_lossy(&body))),
    }
}

const BIG_EVENTS: usize = 24;
const BIG_DATA: usize = 60_000;
const BIG_POLLERS: usize = 5;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What one largest-page load gave.
struct BigLoad {
    page_bytes: usize,
    per_s: f64,
    errors: u64,
    before_kib: u64,
    peak_kib: u64,
}

/// The hub's largest page, and the no-op Worker's body of the same size.
struct BigPages {
    hub: BigLoad,
    noop: BigLoad,
}

/// `BIG_EVENTS` events of `BIG_DATA` bytes (more than a page holds), then `BIG_POLLERS`
/// anonymous pollers asking for all of them at once while the worker's memory is sampled; then
/// the same against the no-op Worker's `/big`, answering as many bytes.
async fn big_pages(plan: &Plan, setup: &Setup) -> Result<BigPages, String> {
    let c = format!("public:{}", client::channel("bigpage"));
    let event = format!(r#"{{"data":"{}"}}"#, "x".repeat(BIG_DATA - 2));
    for _ in 0..2 {
        let batch = [event.as_str(); BIG_EVENTS / 2].join(",");
        client::publish(&setup.hub, &c, format!("[{batch}]").into_bytes()).await?;
    }
    if !client::await_mirrored(&setup.hub, &c, MIRROR_WAIT).await {
        return Err(format!(
            "the mirror did not catch up within {MIRROR_WAIT:?}"
        ));
    }
    let seconds = Duration::from_secs_f64(plan.poll_seconds);
    let url = format!("{}/poll/{c}?since=0&limit=1000", setup.hub);
    let hub = big_load(&url, (setup.hub_pgid, setup.hub_port), seconds).await?;
    let url = format!("{}/big?bytes={}", setup.noop, hub.page_bytes);
    let noop = big_load(&url, (setup.noop_pgid, setup.noop_port), seconds).await?;
    Ok(BigPages { hub, noop })
}

/// `BIG_POLLERS` anonymous loops of GETs to `url` for `seconds`, while the worker workerd of
/// the runtime `(pgid, port)` is sampled.
async fn big_load(url: &str, runtime: (u32, u16), seconds: Duration) -> Result<BigLoad, String> {
    let first = client::http()
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if first.status().as_u16() != 200 {
        return Err(format!("anonymous GET {url}: {}", first.status()));
    }
    let page_bytes = first.bytes().await.map_err(|e| e.to_string())?.len();
    let worker = move || procfs::memory(runtime.0, runtime.1).role("workerd (worker)");
    let before_kib = worker();
    let stop = Instant::now() + seconds;
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while Instant::now() < stop {
            peak = peak.max(worker());
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
        peak
    });
    let pollers: Vec<_> = (0..BIG_POLLERS)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u64, 0u64);
                while Instant::now() < stop {
                    let answered = match client::http().get(&url).send().await {
                        Ok(r) => r.status().as_u16() == 200 && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    match answered {
                        true => ok += 1,
                        false => errors += 1,
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    let (mut ok, mut errors) = (0, 0);
    for p in pollers {
        if let Ok((o, e)) = p.await {
            ok += o;
            errors += e;
        }
    }
    let peak_kib = sampler.await.unwrap_or(0).max(before_kib);
    Ok(BigLoad {
        page_bytes,
        per_s: ok as f64 / seconds.as_secs_f64().max(1e-3),
        errors,
        before_kib,
        peak_kib,
    })
}

async fn etag(url: &str) -> Result<String, String> {
    etag_of(url, |_| Ok(())).await
}

/// The ETag of a 200 to `url` whose page `check` accepts.
async fn etag_of(
    url: &str,
    check: impl Fn(&Value) -> Result<(), String>,
) -> Result<String, String> {
    let r = client::http()
        .get(url)
        .header("authorization", client::bearer())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let tag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    match (status, tag) {
        (200, Some(t)) => {
            let page: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            check(&page).map_err(|why| format!("GET {url}: {why}"))?;
            Ok(t)
        }
        (s, t) => Err(format!("GET {url}: {s}, etag {t:?}")),
    }
}

/// Warm-up, then `concurrency` loops of GETs to `url` for `seconds`.
pub(super) async fn load(
    concurrency: usize,
    url: &str,
    etag: Option<&str>,
    want: u16,
    seconds: Duration,
) -> Load {
    let _ = hammer(concurrency, url, etag, want, WARM_UP).await;
    let started = Instant::now();
    let (mut times, errors, sources) = hammer(concurrency, url, etag, want, seconds).await;
    let elapsed = started.elapsed().as_secs_f64();
    times.sort();
    Load {
        per_s: times.len() as f64 / elapsed.max(1e-3),
        p50: percentile_ms(&times, 0.5),
        p99: percentile_ms(&times, 0.99),
        errors,
        hits: sources.hit,
        misses: sources.miss,
        answers: times.len() as u64,
    }
}

/// How many answers said each `x-edgehub-cache` (docs/API.md#poll-cache).
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct Sources {
    pub hit: u64,
    pub stored: u64,
    pub shared: u64,
    pub miss: u64,
}

impl Sources {
    pub fn count(&mut self, header: Option<&reqwest::header::HeaderValue>) {
        match header.map(reqwest::header::HeaderValue::as_bytes) {
            Some(b"hit") => self.hit += 1,
            Some(b"stored") => self.stored += 1,
            Some(b"shared") => self.shared += 1,
            Some(b"miss") => self.miss += 1,
            _ => {}
        }
    }

    pub fn add(&mut self, other: Sources) {
        self.hit += other.hit;
        self.stored += other.stored;
        self.shared += other.shared;
        self.miss += other.miss;
    }
}

/// The request times of the answers with status `want`, how many had another status, and
/// where the answers came from.
async fn hammer(
    concurrency: usize,
    url: &str,
    etag: Option<&str>,
    want: u16,
    seconds: Duration,
) -> (Vec<Duration>, u64, Sources) {
    let stop = Instant::now() + seconds;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (url, etag) = (url.to_string(), etag.map(str::to_string));
            tokio::spawn(async move {
                let (mut times, mut errors) = (Vec::new(), 0u64);
                let mut sources = Sources::default();
                while Instant::now() < stop {
                    let url = match url.contains(VARY) {
                        true => {
                            let k = VARIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            url.replacen(VARY, &format!("limit={}", 10 + k % 990), 1)
                        }
                        false => url.clone(),
                    };
                    let mut req = client::http()
                        .get(&url)
                        .header("authorization", client::bearer());
                    if let Some(tag) = &etag {
                        req = req.header("if-none-match", tag);
                    }
                    let asked = Instant::now();
                    let ok = match req.send().await {
                        Ok(r) => {
                            let source = r.headers().get("x-edgehub-cache").cloned();
                            let ok = r.status().as_u16() == want && r.bytes().await.is_ok();
                            if ok {
                                sources.count(source.as_ref());
                            }
                            ok
                        }
                        Err(_) => false,
                    };
                    match ok {
                        true => times.push(asked.elapsed()),
                        false => errors += 1,
                    }
                }
                (times, errors, sources)
            })
        })
        .collect();
    let (mut all, mut errors, mut sources) = (Vec::new(), 0, Sources::default());
    for t in tasks {
        if let Ok((times, e, s)) = t.await {
            all.extend(times);
            errors += e;
            sources.add(s);
        }
    }
    (all, errors, sources)
}
