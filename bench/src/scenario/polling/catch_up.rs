//! Readers catching up through a channel's history while it is published to: `READERS` pollers
//! each walk a history of `HISTORY` events `PAGE_LIMIT` at a time (following `next` while
//! `more`, then starting over from 0), while one event a `PUBLISH_EVERY` is published through
//! the same hub. Every publish moves the head (and drops the isolate's window), so without
//! still pages (docs/API.md#poll-cache) every page after it would be read from D1 again.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::Sources;
use crate::client;

/// Half the hub's `RETAIN_EVENTS` (1,000): the publishes of the run prune none of it.
const HISTORY: usize = 500;
const PAGE_LIMIT: u32 = 10;
const READERS: usize = 10;
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
const MIRROR_WAIT: Duration = Duration::from_secs(30);

pub struct CatchUp {
    pub per_s: f64,
    pub answers: u64,
    pub errors: u64,
    pub sources: Sources,
    pub published: u64,
}

impl CatchUp {
    /// The share of answers (%) that needed no D1 read of their own for the page.
    pub fn spared(&self) -> f64 {
        let s = self.sources;
        100.0 * (s.hit + s.stored + s.shared) as f64 / self.answers.max(1) as f64
    }
}

pub async fn run(hub: &str, seconds: Duration) -> Result<CatchUp, String> {
    let c = client::channel("catch-up");
    for start in (0..HISTORY).step_by(100) {
        let batch: Vec<String> = (start..start + 100)
            .map(|i| format!(r#"{{"data":{{"n":{i}}}}}"#))
            .collect();
        client::publish(hub, &c, format!("[{}]", batch.join(",")).into_bytes()).await?;
    }
    if !client::await_mirrored(hub, &c, MIRROR_WAIT).await {
        return Err(format!(
            "the mirror did not catch up within {MIRROR_WAIT:?}"
        ));
    }
    let started = Instant::now();
    let stop = started + seconds;
    let publisher = {
        let (hub, c) = (hub.to_string(), c.clone());
        tokio::spawn(async move {
            let mut published = 0u64;
            while Instant::now() < stop {
                let body = format!(r#"{{"data":{{"late":{published}}}}}"#).into_bytes();
                if client::publish(&hub, &c, body).await.is_ok() {
                    published += 1;
                }
                tokio::time::sleep(PUBLISH_EVERY).await;
            }
            published
        })
    };
    // Each reader starts at another place in the history, so that they seldom ask for a page
    // at the same moment.
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let url = format!("{hub}/poll/{c}?limit={PAGE_LIMIT}&since=");
            tokio::spawn(read_until(url, stop, (i * HISTORY / READERS) as u64))
        })
        .collect();
    let (mut answers, mut errors, mut sources) = (0, 0, Sources::default());
    for r in readers {
        let (a, e, s) = r.await.map_err(|e| format!("a reader: {e}"))?;
        answers += a;
        errors += e;
        sources.add(s);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let published = publisher.await.map_err(|e| format!("the publisher: {e}"))?;
    Ok(CatchUp {
        per_s: answers as f64 / elapsed.max(1e-3),
        answers,
        errors,
        sources,
        published,
    })
}

/// One reader's walks (the first from `from`) until `stop`: answers, failures, and where the answers came from.
async fn read_until(url: String, stop: Instant, from: u64) -> (u64, u64, Sources) {
    let (mut answers, mut errors, mut sources) = (0u64, 0u64, Sources::default());
    let mut cursor = from;
    while Instant::now() < stop {
        let asked = client::http()
            .get(format!("{url}{cursor}"))
            .header("authorization", client::bearer())
            .send()
            .await;
        let Ok(r) = asked else {
            errors += 1;
            continue;
        };
        let source = r.headers().get("x-edgehub-cache").cloned();
        let page: Option<Value> = match r.status().as_u16() {
            200 => r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            _ => None,
        };
        let Some(page) = page else {
            errors += 1;
            continue;
        };
        answers += 1;
        sources.count(source.as_ref());
        cursor = match (page["more"].as_bool(), page["next"].as_u64()) {
            (Some(true), Some(next)) => next,
            _ => 0,
        };
    }
    (answers, errors, sources)
}
