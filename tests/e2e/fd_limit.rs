//! The hub past its open-file limit (issue 18), run as `make dev` runs it (`scripts/serve.mjs`
//! with `--restart`) under a limit lowered to 600 files, so that the real limits are reached
//! cheaply. Its front takes its caps from that limit: streams past the cap are answered 503, and
//! a flood of connections past the front's own limit is closed unanswered (Node at EMFILE:
//! libuv accepts and closes them). Throughout, the streams already connected get a publish, and
//! /healthz, a publish and a poll are answered; workerd is never restarted; once the extra
//! connections are gone, new streams are taken again.

use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::{admin, channel, ids, token, Api, Resp};
use crate::harness::{Hub, HubOptions};
use crate::idempotency::publish_keyed_retrying;
use crate::sse_client::{event_ids, sse_path, SseStream};
use crate::ws_client::{frame_ids, ws_path, WsClient};
use crate::{case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![case_own_hub!(
        past_the_open_file_limit_the_extra_connections_are_refused_and_the_hub_serves_on
    )]
}

/// The open-file limit (soft and hard) the hub runs under.
const FD_LIMIT: u64 = 600;
/// Of the streams held at the cap, how many are WebSockets (the rest are SSE).
const WS_HELD: usize = 20;
/// Streams tried past the cap: SSE, then WebSockets.
const SSE_OVER: usize = 30;
const WS_OVER: usize = 10;
/// Raw connections opened at once past the cap, more than the front has files for.
const FLOOD: usize = 1500;
/// Streams closed, then opened again, after the flood.
const SSE_AGAIN: usize = 10;
const WS_AGAIN: usize = 5;
const CONNECT_CONCURRENCY: usize = 25;
const WAIT: Duration = Duration::from_secs(30);
/// Bounds for the flood: per connect, and in all.
const FLOOD_CONNECT: Duration = Duration::from_secs(2);
const FLOOD_BUDGET: Duration = Duration::from_secs(30);
/// Tries (and the pause between them) for a new connection once the extra ones are gone; a
/// closed stream's slot is free once its socket to workerd closes, within a heartbeat (2 s).
const AGAIN_TRIES: u32 = 40;
const AGAIN_PAUSE: Duration = Duration::from_millis(250);

async fn past_the_open_file_limit_the_extra_connections_are_refused_and_the_hub_serves_on(
    _shared: Api,
) {
    let opts = HubOptions {
        serve_args: vec!["--restart".into()],
        fd_limit: Some(FD_LIMIT),
        ..HubOptions::with_vars(&[("HEARTBEAT_SECONDS", "2")])
    };
    let hub = Hub::start(opts).await.unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(hub.base());
    let ready = Ready::from_log(&hub.log());
    assert_eq!(ready.limit, FD_LIMIT, "the limit the front read: {ready:?}");
    // 2 files a connection in the front, and some for its own: all under the limit.
    assert!(
        2 * (ready.streams + ready.reserve) < FD_LIMIT && ready.streams > 100,
        "caps from a limit of {FD_LIMIT}: {ready:?}"
    );
    let cap = ready.streams as usize;
    let c = channel("fdlimit");
    let sub = token(&[], &[&c], 3600);
    let mut held = Held::open(hub.base()).await;
    assert_eq!(held.get("/healthz").await.0, 200, "the held connection");

    // Streams up to the cap, SSE and WebSockets: all taken.
    let mut sse = open_sse(&api, &c, &sub, cap - WS_HELD).await;
    held.get("/healthz").await;
    let mut ws = open_ws(&api, &c, &sub, WS_HELD).await;
    assert_eq!(sse.len() + ws.len(), cap, "streams taken up to the cap");
    assert_eq!(held.get("/healthz").await.0, 200);

    // Past the cap: every stream is answered 503 with a problem, at once.
    let over = refusals(&api, &c, &sub).await;
    assert_eq!(over, vec![503; SSE_OVER + WS_OVER], "streams past the cap");
    assert_eq!(held.get("/healthz").await.0, 200);
    // New connections that are not streams still are taken (the reserve).
    let r = publish(&api, &c, 1).await;
    assert_eq!(
        ids(&r.json()),
        vec![1],
        "publish 1: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(api.get("/healthz", None).await.status, 200);
    assert_eq!(held.get("/healthz").await.0, 200);

    // A flood past what the front can hold: it runs out of files. Each connection is answered
    // 503, closed unanswered, or waits in a reserve slot for its first bytes.
    let flood = open_flood(hub.base()).await;
    assert_eq!(held.get("/healthz").await.0, 200, "healthz in the flood");
    let outcome = flood_outcome(&flood).await;
    eprintln!(
        "e2e: fd limit {FD_LIMIT}: caps {} streams + {} others; {FLOOD} connections past them: \
         {outcome:?}",
        ready.streams, ready.reserve
    );
    assert_eq!(
        outcome.other, 0,
        "a flood connection got something else: {outcome:?}"
    );
    assert!(
        outcome.closed + outcome.connect_failed > 0,
        "the front never ran out of files: {outcome:?}"
    );
    assert!(
        outcome.waiting <= ready.reserve as usize,
        "more connections held than the reserve: {outcome:?}"
    );
    // While it lasts, the held connection is answered; new ones may not be.
    assert_eq!(
        held.get("/healthz").await.0,
        200,
        "healthz during the flood"
    );
    let (status, body) = held.post_event(&c, r#"{"data":{"n":2}}"#).await;
    assert_eq!(status, 201, "publish during the flood: {body}");
    let (status, body) = held.poll(&c).await;
    assert_eq!(status, 200, "poll during the flood: {body}");
    let fresh = join_all((0..5).map(|_| api.get("/healthz", None))).await;
    let fresh: Vec<u16> = fresh.iter().map(|r| r.status).collect();
    eprintln!("e2e: fd limit: 5 new /healthz during the flood: {fresh:?}");
    // Every stream held got both events.
    let (sse_got, ws_got) = deliveries(&mut sse, &mut ws, &[1, 2]).await;
    assert_eq!(sse_got, sse.len(), "SSE streams with events 1 and 2");
    assert_eq!(ws_got, ws.len(), "WebSockets with events 1 and 2");
    drop(flood);

    // Once the flood is gone: new connections, then new streams in place of closed ones.
    let healthz = first_200(&api, "/healthz").await;
    assert_eq!(healthz, 200, "healthz on a new connection after the flood");
    sse.truncate(sse.len() - SSE_AGAIN);
    for w in ws.drain(..WS_AGAIN) {
        w.close().await;
    }
    let mut again_sse = Vec::new();
    for _ in 0..SSE_AGAIN {
        again_sse.push(retry_sse(&api, &c, &sub).await);
    }
    let mut again_ws = Vec::new();
    for _ in 0..WS_AGAIN {
        again_ws.push(retry_ws(&api, &c, &sub).await);
    }
    let r = publish(&api, &c, 3).await;
    assert_eq!(
        ids(&r.json()),
        vec![3],
        "publish 3: {} {}",
        r.status,
        r.text()
    );
    let (sse_got, ws_got) = deliveries(&mut again_sse, &mut again_ws, &[3]).await;
    assert_eq!(
        (sse_got, ws_got),
        (SSE_AGAIN, WS_AGAIN),
        "new streams got event 3"
    );
    let r = api.poll(&c, Some(0), None).await;
    assert_eq!(r.status, 200, "poll after: {}", r.text());

    // workerd never went: no restart logged, the same process alive.
    let log = hub.log();
    assert!(
        !log.contains("workerd restarted") && !log.contains("exited unexpectedly"),
        "workerd restarted:\n{}",
        hub.log_tail()
    );
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", ready.workerd)).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "workerd",
        "workerd pid {} is gone",
        ready.workerd
    );
    assert_eq!(Ready::from_log(&log).workerd, ready.workerd);
    drop((sse, ws, again_sse, again_ws, held));
    hub.cleanup().await;
}

/// Event `n` on a new connection, sent again with its idempotency key if it got no answer (a
/// loaded local runtime may close a kept-alive connection unread: see load.rs). A retry of a
/// stored one is answered 200 with the same id.
async fn publish(api: &Api, c: &str, n: u64) -> Resp {
    let body = json!({"data": {"n": n}}).to_string();
    publish_keyed_retrying(api, c, &body, &format!("fd-limit-{n}"), &admin())
        .await
        .0
}

/// What the ready line of `scripts/serve.mjs` says about the front.
#[derive(Debug)]
struct Ready {
    streams: u64,
    reserve: u64,
    limit: u64,
    workerd: u64,
}

impl Ready {
    fn from_log(log: &str) -> Ready {
        let line = log
            .lines()
            .find(|l| l.starts_with("edgehub: ready on"))
            .unwrap_or_else(|| panic!("no ready line in:\n{log}"));
        let number_after = |what: &str| -> u64 {
            let at = line.find(what).map(|i| i + what.len());
            let rest = at.and_then(|i| line.get(i..)).unwrap_or_default();
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("no {what:?} in {line:?}"))
        };
        Ready {
            streams: number_after("front: at most "),
            reserve: number_after(" streams + "),
            limit: number_after("open-file limit "),
            workerd: number_after("workerd pid "),
        }
    }
}

async fn open_sse(api: &Api, c: &str, sub: &str, n: usize) -> Vec<SseStream> {
    stream::iter(0..n)
        .map(|_| SseStream::subscribe(api, c, None, Some(sub)))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await
}

async fn open_ws(api: &Api, c: &str, sub: &str, n: usize) -> Vec<WsClient> {
    stream::iter(0..n)
        .map(|_| async { WsClient::subscribe(api, c, None, Some(sub)).await.0 })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await
}

/// The statuses of the streams tried past the cap (0: no answer), each checked to be the
/// front's problem when it is a 503.
async fn refusals(api: &Api, c: &str, sub: &str) -> Vec<u16> {
    let bearer = format!("Bearer {sub}");
    let mut out = Vec::new();
    for n in 0..SSE_OVER + WS_OVER {
        let refused = if n < SSE_OVER {
            let headers = [("authorization", bearer.as_str())];
            SseStream::open(api, &sse_path(c, None), &headers)
                .await
                .err()
        } else {
            WsClient::open(api, &ws_path(c, None), Some(sub))
                .await
                .err()
        };
        let status = refused.map_or(200, |r| {
            if r.status == 503 {
                assert_eq!(r.json()["status"], json!(503), "{}", r.text());
            }
            r.status
        });
        out.push(status);
    }
    out
}

/// Raw connections to the hub, opened one after the other as fast as they go, and held.
async fn open_flood(base: &str) -> Vec<Option<TcpStream>> {
    let host = base.trim_start_matches("http://").to_string();
    let started = Instant::now();
    let mut out = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        if started.elapsed() > FLOOD_BUDGET {
            break;
        }
        let s = tokio::time::timeout(FLOOD_CONNECT, TcpStream::connect(&host)).await;
        out.push(s.ok().and_then(Result::ok));
    }
    out
}

#[derive(Debug, Default)]
struct Outcome {
    /// Answered the front's 503.
    answered_503: usize,
    /// Closed (or reset) without an answer.
    closed: usize,
    /// Still open, unanswered: held in a reserve slot until it asks something.
    waiting: usize,
    connect_failed: usize,
    other: usize,
}

/// How the flood's connections fared, read after a moment (without a request, a 503 or a close
/// is all the front can have sent).
async fn flood_outcome(flood: &[Option<TcpStream>]) -> Outcome {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut o = Outcome::default();
    let reads = join_all(flood.iter().map(|s| async move {
        let s = s.as_ref()?;
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(500), async {
            s.readable().await?;
            s.try_read(&mut buf)
        })
        .await;
        Some(match read {
            Err(_) => None,
            Ok(Ok(n)) => Some(buf.get(..n).unwrap_or_default().to_vec()),
            Ok(Err(_)) => Some(Vec::new()),
        })
    }))
    .await;
    for read in reads {
        match read {
            None => o.connect_failed += 1,
            Some(None) => o.waiting += 1,
            Some(Some(bytes)) if bytes.is_empty() => o.closed += 1,
            Some(Some(bytes)) if bytes.starts_with(b"HTTP/1.1 503 ") => o.answered_503 += 1,
            Some(Some(_)) => o.other += 1,
        }
    }
    o
}

/// How many SSE streams and WebSockets got exactly the events `want`, read all at once.
async fn deliveries(sse: &mut [SseStream], ws: &mut [WsClient], want: &[u64]) -> (usize, usize) {
    let last = want.last().copied().unwrap_or_default();
    let sse_events = join_all(sse.iter_mut().map(|s| s.events_through(last, WAIT))).await;
    let ws_frames = join_all(ws.iter_mut().map(|w| w.frames_through(last, WAIT))).await;
    let sse_got = sse_events.iter().filter(|e| event_ids(e) == want).count();
    let ws_got = ws_frames.iter().filter(|f| frame_ids(f) == want).count();
    (sse_got, ws_got)
}

/// The first 200 from `path` on new connections, within `AGAIN_TRIES`; else the last status.
async fn first_200(api: &Api, path: &str) -> u16 {
    let mut status = 0;
    for _ in 0..AGAIN_TRIES {
        status = api.get(path, None).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(AGAIN_PAUSE).await;
    }
    status
}

/// A new SSE stream, tried while the front still counts the streams just closed.
async fn retry_sse(api: &Api, c: &str, sub: &str) -> SseStream {
    let bearer = format!("Bearer {sub}");
    let mut last = String::new();
    for _ in 0..AGAIN_TRIES {
        let headers = [("authorization", bearer.as_str())];
        match SseStream::open(api, &sse_path(c, None), &headers).await {
            Ok(s) => return s,
            Err(r) => last = format!("{} {}", r.status, r.text()),
        }
        tokio::time::sleep(AGAIN_PAUSE).await;
    }
    panic!("no new SSE stream after the flood: {last}")
}

/// A new WebSocket, as `retry_sse`.
async fn retry_ws(api: &Api, c: &str, sub: &str) -> WsClient {
    let mut last = String::new();
    for _ in 0..AGAIN_TRIES {
        match WsClient::open(api, &ws_path(c, None), Some(sub)).await {
            Ok(mut ws) => {
                let ready = ws.next_json(WAIT).await;
                assert_eq!(ready["op"], "ready", "{ready}");
                return ws;
            }
            Err(r) => last = format!("{} {}", r.status, r.text()),
        }
        tokio::time::sleep(AGAIN_PAUSE).await;
    }
    panic!("no new WebSocket after the flood: {last}")
}

/// One kept-alive HTTP/1.1 connection, opened before the limits are reached, for requests
/// whose answers have a Content-Length (every answer here but a stream's). workerd closes a
/// kept-alive connection left without a request for 5 s, so the test uses it more often.
struct Held {
    stream: TcpStream,
    host: String,
}

impl Held {
    async fn open(base: &str) -> Held {
        let host = base.trim_start_matches("http://").to_string();
        let stream = TcpStream::connect(&host).await.expect("connect");
        Held { stream, host }
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        self.request(&format!("GET {path} HTTP/1.1\r\n"), "").await
    }

    async fn poll(&mut self, c: &str) -> (u16, String) {
        let head = format!(
            "GET /poll/{c}?since=0 HTTP/1.1\r\nAuthorization: Bearer {}\r\n",
            admin()
        );
        self.request(&head, "").await
    }

    async fn post_event(&mut self, c: &str, body: &str) -> (u16, String) {
        let head = format!(
            "POST /channels/{c}/events HTTP/1.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            admin(),
            body.len()
        );
        self.request(&head, body).await
    }

    /// Sends `head` (request line and headers) and `body`, reads one answer; (0, why) if none.
    async fn request(&mut self, head: &str, body: &str) -> (u16, String) {
        let request = format!("{head}Host: {}\r\n\r\n{body}", self.host);
        let exchange = async {
            self.stream.write_all(request.as_bytes()).await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(answer) = complete(&buf) {
                    return Ok(answer);
                }
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
        };
        match tokio::time::timeout(WAIT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => (0, format!("no answer: {e}")),
            Err(_) => (0, format!("no answer within {WAIT:?}")),
        }
    }
}

/// The status and body of the answer in `buf`, once its head and Content-Length body are in.
fn complete(buf: &[u8]) -> Option<(u16, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(buf.get(..end)?).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    let body = buf.get(end + 4..end + 4 + len)?;
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    Some((status, body.to_string()))
}
