//! Scenario 4: polling throughput. `poll_concurrency` pollers, each one request after the
//! other on a kept-alive connection, for `poll_seconds` per path: the no-op Worker (`GET /`,
//! the runtime's own ceiling), a poll answered 200 (a page of 10 small events, read from D1),
//! and the same poll with its `If-None-Match` answered 304. Each path gets a short warm-up.

use std::time::{Duration, Instant};

use super::{Plan, Setup};
use crate::client;
use crate::stats::{percentile_ms, Figures, Target, Unit};

const SCENARIO: &str = "polling";
const PAGE: usize = 10;
const WARM_UP: Duration = Duration::from_millis(500);
const MIRROR_WAIT: Duration = Duration::from_secs(30);

/// One path's load result.
pub(super) struct Load {
    pub per_s: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: u64,
}

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
    let noop_url = format!("{}/", setup.noop);
    let seconds = Duration::from_secs_f64(plan.poll_seconds);

    let n = plan.poll_concurrency;
    let noop = load(n, &noop_url, None, 200, seconds).await;
    let full = load(n, &url, None, 200, seconds).await;
    let not_modified = load(n, &url, Some(&etag), 304, seconds).await;

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
    add("200", "poll answered 200", &full);
    add("304", "poll answered 304", &not_modified);
    let ratio = |l: &Load| {
        if noop.per_s > 0.0 {
            100.0 * l.per_s / noop.per_s
        } else {
            0.0
        }
    };
    f.add(
        SCENARIO,
        "polling.200.vs_noop",
        "poll 200 vs no-op requests per second",
        Unit::Percent,
        None,
        ratio(&full),
    );
    f.add(
        SCENARIO,
        "polling.304.vs_noop",
        "poll 304 vs no-op requests per second",
        Unit::Percent,
        Some(Target::AtLeast(50.0)),
        ratio(&not_modified),
    );
    let errors = noop.errors + full.errors + not_modified.errors;
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
    Ok(f)
}

async fn etag(url: &str) -> Result<String, String> {
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
    let _ = r.bytes().await;
    match (status, tag) {
        (200, Some(t)) => Ok(t),
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
    let (mut times, errors) = hammer(concurrency, url, etag, want, seconds).await;
    let elapsed = started.elapsed().as_secs_f64();
    times.sort();
    Load {
        per_s: times.len() as f64 / elapsed.max(1e-3),
        p50: percentile_ms(&times, 0.5),
        p99: percentile_ms(&times, 0.99),
        errors,
    }
}

/// The request times of the answers with status `want`, and how many had another status.
async fn hammer(
    concurrency: usize,
    url: &str,
    etag: Option<&str>,
    want: u16,
    seconds: Duration,
) -> (Vec<Duration>, u64) {
    let stop = Instant::now() + seconds;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (url, etag) = (url.to_string(), etag.map(str::to_string));
            tokio::spawn(async move {
                let (mut times, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < stop {
                    let mut req = client::http()
                        .get(&url)
                        .header("authorization", client::bearer());
                    if let Some(tag) = &etag {
                        req = req.header("if-none-match", tag);
                    }
                    let asked = Instant::now();
                    let ok = match req.send().await {
                        Ok(r) => r.status().as_u16() == want && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    match ok {
                        true => times.push(asked.elapsed()),
                        false => errors += 1,
                    }
                }
                (times, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((times, e)) = t.await {
            all.extend(times);
            errors += e;
        }
    }
    (all, errors)
}
