//! The client side of the suite: one HTTP client (loopback only, no proxy), tokens minted with
//! the crate's own `edgehub::auth::sign`, unique channel names, and thin request helpers that
//! return a `Resp` for the tests to assert on (the one check here: `poll_all` wants 200 pages).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgehub::auth::{sign, Claims, Rights};
use serde_json::Value;

use crate::harness::SECRET;

/// How long the D1 mirror may lag the channel's object before a test gives up on it.
pub const MIRROR_WAIT: Duration = Duration::from_secs(30);
const MIRROR_TRIES: u32 = 600;

/// The one runtime every trial blocks on (trials are plain threads).
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot build the tokio runtime: {e}");
                std::process::exit(2)
            }
        }
    })
}

/// The shared client: plain HTTP to 127.0.0.1, never through a proxy from the environment.
pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A token signed with the suite's secret, valid from now for `ttl_secs` (negative: expired).
pub fn token(publish: &[&str], subscribe: &[&str], ttl_secs: i64) -> String {
    let now = now_secs();
    sign(&claims(publish, subscribe, Some(now + ttl_secs)), SECRET)
}

/// The claims `token` signs; for tests that need to bend one (no `exp`, another secret).
pub fn claims(publish: &[&str], subscribe: &[&str], exp: Option<i64>) -> Claims {
    let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    Claims {
        exp,
        iat: Some(now_secs()),
        nbf: None,
        sub: Some("edgehub-e2e".to_string()),
        edgehub: Rights {
            publish: list(publish),
            subscribe: list(subscribe),
            info: None,
        },
    }
}

/// A token that may publish and subscribe everywhere, for tests that are not about auth.
pub fn admin() -> String {
    token(&["*"], &["*"], 3600)
}

/// A backend's token: every right, and the `*` sub that may mint tokens for any subject
/// (docs/API.md#minting).
pub fn backend() -> String {
    let mut c = claims(&["*"], &["*"], Some(now_secs() + 3600));
    c.sub = Some("*".to_string());
    sign(&c, SECRET)
}

/// A channel name no other test (or earlier run) uses: `e2e-<what>-<unique hex>`.
pub fn channel(what: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "e2e-{what}-{:x}{:x}-{seq}",
        nanos as u64,
        std::process::id()
    )
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
    pub fn content_type(&self) -> String {
        self.header("content-type").unwrap_or_default()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A hub's HTTP API at `base`.
#[derive(Clone, Debug)]
pub struct Api {
    pub base: String,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// Sends `req` and reads the whole body. A request that got no answer comes back as status 0
    /// with the transport error as its body, so the test's own status assertion reports it.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let what = format!("{req:?}");
        let no_answer = |e: reqwest::Error| Resp {
            status: 0,
            headers: reqwest::header::HeaderMap::new(),
            body: format!("no answer: {e} ({what})").into_bytes(),
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return no_answer(e),
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        match resp.bytes().await {
            Ok(b) => Resp {
                status,
                headers,
                body: b.to_vec(),
            },
            Err(e) => no_answer(e),
        }
    }

    /// `GET {base}{path_and_query}` with an optional bearer token. A GET whose connection
    /// dropped before any answer is sent again (twice at most, and said so): under the heaviest
    /// local loads `wrangler dev`'s proxy loses a request now and then (issue 18), and a GET is
    /// safe to repeat.
    pub async fn get(&self, path_and_query: &str, token: Option<&str>) -> Resp {
        let mut answer = Resp {
            status: 0,
            headers: reqwest::header::HeaderMap::new(),
            body: Vec::new(),
        };
        for attempt in 0..3 {
            if attempt > 0 {
                eprintln!("e2e: GET {path_and_query} again: {}", answer.text());
            }
            let mut req = client().get(format!("{}{path_and_query}", self.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            answer = self.send(req).await;
            if answer.status != 0 {
                break;
            }
        }
        answer
    }

    /// `POST /channels/{channel}/events` with a JSON body and a bearer token.
    pub async fn publish(&self, channel: &str, body: &Value, token: &str) -> Resp {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.publish_raw(channel, Some("application/json"), bytes, Some(token))
            .await
    }

    /// Publish with everything under the caller's control; `channel` goes into the path as is.
    pub async fn publish_raw(
        &self,
        channel: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> Resp {
        let mut req = client()
            .post(format!("{}/channels/{channel}/events", self.base))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    /// `GET /poll/{channel}?since=&limit=` with the admin token.
    pub async fn poll(&self, channel: &str, since: Option<u64>, limit: Option<u32>) -> Resp {
        let mut query = Vec::new();
        if let Some(s) = since {
            query.push(format!("since={s}"));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        let path = format!("/poll/{channel}?{}", query.join("&"));
        self.get(&path, Some(&admin())).await
    }

    /// `GET /channels/{channel}` with the admin token.
    pub async fn info(&self, channel: &str) -> Resp {
        self.get(&format!("/channels/{channel}"), Some(&admin()))
            .await
    }

    /// Polls until the mirror's `head` reaches `head`; returns the last answer's head. Bounded.
    pub async fn await_mirror(&self, channel: &str, head: u64) -> u64 {
        let started = Instant::now();
        let mut seen = 0;
        for _ in 0..MIRROR_TRIES {
            let r = self.poll(channel, Some(head), Some(1)).await;
            seen = r.json()["head"].as_u64().unwrap_or(0);
            if (r.status == 200 && seen >= head) || started.elapsed() > MIRROR_WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    }

    /// Reads every event after `since` by following `next` while `more`, `limit` per page, at
    /// most `max_pages` pages. Returns the events and the pages themselves.
    pub async fn poll_all(
        &self,
        channel: &str,
        since: u64,
        limit: u32,
        max_pages: usize,
    ) -> (Vec<Value>, Vec<Value>) {
        let mut events = Vec::new();
        let mut pages = Vec::new();
        let mut cursor = since;
        for _ in 0..max_pages {
            let r = self.poll(channel, Some(cursor), Some(limit)).await;
            let page = r.json();
            assert_eq!(r.status, 200, "poll {channel} since={cursor}: {}", r.text());
            events.extend(page["events"].as_array().cloned().unwrap_or_default());
            cursor = page["next"].as_u64().unwrap_or(cursor);
            let more = page["more"].as_bool() == Some(true);
            pages.push(page);
            if !more {
                break;
            }
        }
        (events, pages)
    }
}

/// The ids of a publish answer's `events`, in order.
pub fn ids(answer: &Value) -> Vec<u64> {
    answer["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// True for `2026-11-25T12:00:00.123Z`: RFC 3339, UTC, exactly milliseconds.
pub fn is_utc_millis(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    b.len() == 24
        && digits
            .iter()
            .all(|&i| b.get(i).is_some_and(u8::is_ascii_digit))
        && [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ]
        .iter()
        .all(|&(i, c)| b.get(i) == Some(&c))
}
