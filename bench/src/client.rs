//! The bench's HTTP side: one pooled client for requests (plain HTTP to 127.0.0.1, never a
//! proxy from the environment), one unpooled client for SSE streams, the bench's token and
//! presence members' tokens, unique channel names, and the few hub calls the scenarios share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgehub::auth::{sign, Claims, Info, Rights};
use serde_json::Value;

use crate::runtime::SECRET;

/// How long the bench's token lives: longer than any run.
const TOKEN_TTL_SECONDS: i64 = 4 * 3600;

/// Requests: keep-alive, bounded in time.
pub fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// Streams: no overall timeout (every read is bounded by its caller) and no pooling, so
/// dropping a stream closes its connection.
pub fn streams() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// A token that may publish and subscribe everywhere, signed with the bench hub's secret.
pub fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let now = now_unix();
        let claims = Claims {
            exp: Some(now + TOKEN_TTL_SECONDS),
            iat: Some(now),
            nbf: None,
            sub: Some("edgehub-bench".into()),
            edgehub: Rights {
                publish: vec!["*".into()],
                subscribe: vec!["*".into()],
                info: None,
            },
        };
        sign(&claims, SECRET)
    })
}

/// A presence member's token (docs/API.md#presence): `sub` is who it is and `info` (one JSON
/// object) what it shows; it may subscribe everywhere and publish nowhere.
pub fn member_token(sub: &str, info: &str) -> Result<String, String> {
    let info = Info::parse(info).map_err(|e| format!("info {info}: {}", e.problem().detail))?;
    let now = now_unix();
    let claims = Claims {
        exp: Some(now + TOKEN_TTL_SECONDS),
        iat: Some(now),
        nbf: None,
        sub: Some(sub.into()),
        edgehub: Rights {
            publish: Vec::new(),
            subscribe: vec!["*".into()],
            info: Some(info),
        },
    };
    Ok(sign(&claims, SECRET))
}

/// `Bearer <token>`, for the `Authorization` header.
pub fn bearer() -> &'static str {
    static BEARER: OnceLock<String> = OnceLock::new();
    BEARER.get_or_init(|| format!("Bearer {}", token()))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A channel name no earlier run used: `bench-<what>-<unique>`.
pub fn channel(what: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("bench-{what}-{:x}-{seq}", nanos & 0xffff_ffff_ffff)
}

/// Microseconds since the bench's first call: a clock every task shares, for timestamps that
/// travel inside events.
pub fn micros() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// `POST /channels/{c}/events` with a ready JSON body; the status and the ids it got.
pub async fn publish(base: &str, channel: &str, body: Vec<u8>) -> Result<Vec<u64>, String> {
    let r = http()
        .post(format!("{base}/channels/{channel}/events"))
        .header("authorization", bearer())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("publish to {channel}: {e}"))?;
    let status = r.status().as_u16();
    let bytes = r
        .bytes()
        .await
        .map_err(|e| format!("publish to {channel}: {e}"))?;
    if status != 201 {
        return Err(format!(
            "publish to {channel}: {status} {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let ids = answer["events"].as_array().map_or_else(Vec::new, |events| {
        events.iter().filter_map(|e| e["id"].as_u64()).collect()
    });
    Ok(ids)
}

/// `GET /channels/{c}`: head, mirror, subscriber counts and the object's instance.
pub async fn info(base: &str, channel: &str) -> Result<Value, String> {
    let r = http()
        .get(format!("{base}/channels/{channel}"))
        .header("authorization", bearer())
        .send()
        .await
        .map_err(|e| format!("GET /channels/{channel}: {e}"))?;
    let status = r.status().as_u16();
    let bytes = r
        .bytes()
        .await
        .map_err(|e| format!("GET /channels/{channel}: {e}"))?;
    match status {
        200 => serde_json::from_slice(&bytes).map_err(|e| format!("GET /channels/{channel}: {e}")),
        s => Err(format!("GET /channels/{channel}: {s}")),
    }
}

/// `GET /channels/{c}/presence`: how many presence members the channel has
/// (docs/API.md#presence-listing).
pub async fn presence_count(base: &str, channel: &str) -> Result<u64, String> {
    let url = format!("{base}/channels/{channel}/presence");
    let r = http()
        .get(&url)
        .header("authorization", bearer())
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {url}: {status}"));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: {e}"))?;
    v["count"]
        .as_u64()
        .ok_or(format!("GET {url}: no count in {v}"))
}

/// Subscriber counts `(sse, ws)` of a channel.
pub async fn counts(base: &str, channel: &str) -> Result<(u64, u64), String> {
    let v = info(base, channel).await?;
    let n = |k: &str| v["subscribers"][k].as_u64().unwrap_or(0);
    Ok((n("sse"), n("ws")))
}

/// Waits (bounded) until the channel's counts are `want`; the last counts seen.
pub async fn await_counts(
    base: &str,
    channel: &str,
    want: (u64, u64),
    limit: Duration,
) -> (u64, u64) {
    let started = Instant::now();
    let mut last = (u64::MAX, u64::MAX);
    while started.elapsed() < limit {
        if let Ok(c) = counts(base, channel).await {
            last = c;
            if c == want {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last
}

/// Waits (bounded) until the D1 mirror holds the channel's head, so a scenario's mirror
/// backlog does not spill into the next one. True when it does.
pub async fn await_mirrored(base: &str, channel: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(v) = info(base, channel).await {
            if v["head"].as_u64().is_some() && v["mirrored"] == v["head"] {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Percent-encodes a query value: everything but `[A-Za-z0-9-._~]`.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("a-1=2,b:c=3"), "a-1%3D2%2Cb%3Ac%3D3");
        assert_eq!(encode("0"), "0");
    }
}
