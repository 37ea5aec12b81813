//! Slow consumers. An SSE client that stops reading is dropped once more than
//! `SLOW_CONSUMER_BYTES` wait for it, while 100 other subscribers get every event in order, and
//! it resumes from `Last-Event-ID` without loss. A WebSocket client that never reads has no
//! explicit limit (the runtime buffers for it): the others must be unaffected; what happens to
//! the non-reader itself (and to the hub's memory) is reported, not asserted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::api::{admin, channel, ids, Api};
use crate::harness::{Hub, HubOptions};
use crate::live::info;
use crate::sse_client::{event_ids, SseStream};
use crate::sse_parser::{Item, Parser};
use crate::ws_client::{Frame, WsClient};
use crate::{case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case_own_hub!(slow_sse_consumer_is_dropped_others_get_everything_and_it_resumes),
        case_own_hub!(slow_ws_non_reader_leaves_100_readers_unaffected),
        case_own_hub!(slow_sse_replay_larger_than_the_limit_is_delivered_not_dropped),
    ]
}

/// The smallest limit the hub accepts.
const LIMIT: usize = 64 * 1024;
const PAD: usize = 8 * 1024;
const READERS: usize = 100;
const MAX_EVENTS: u64 = 1000;
/// Events published to the WebSocket non-reader's channel (about 2.4 MB each reader).
const WS_EVENTS: u64 = 300;
/// Events then published to the non-reader alone (about 8 MB).
const ALONE_EVENTS: u64 = 1000;
const WAIT: Duration = Duration::from_secs(240);
/// The receive buffer our stalled clients ask the kernel for, so backpressure reaches the hub.
const RCVBUF: u32 = 4096;

async fn own_hub(vars: &[(&str, &str)]) -> Hub {
    let started = Hub::start(HubOptions::with_vars(vars)).await;
    started.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"))
}

async fn publish_padded(api: &Api, c: &str, k: u64) -> u64 {
    let body = json!({"data": {"k": k, "pad": "x".repeat(PAD)}});
    let r = api.publish(c, &body, &admin()).await;
    assert_eq!(r.status, 201, "publish {k}: {}", r.text());
    ids(&r.json()).first().copied().unwrap_or(0)
}

/// A connection that sends `request` and reads only the answer's head, with a tiny receive
/// buffer: the kernel stops taking bytes almost at once when the test stops reading.
async fn stalled(api: &Api, request: &str) -> (TcpStream, String, Vec<u8>) {
    let addr: std::net::SocketAddr = api.base[7..].parse().expect("a 127.0.0.1 address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(RCVBUF).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk)).await;
        match read.expect("answer head in time").expect("read") {
            0 => panic!("closed before the head: {}", String::from_utf8_lossy(&buf)),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let rest = buf.split_off(end);
    (stream, String::from_utf8_lossy(&buf).into_owned(), rest)
}

/// Decodes a chunked body read so far: the bytes, and whether its last chunk was seen.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&raw[..line_end]);
        let Ok(size) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 {
            return (out, true);
        }
        let start = line_end + 2;
        if raw.len() < start + size + 2 {
            out.extend_from_slice(&raw[start..]);
            return (out, false);
        }
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
    (out, false)
}

/// A subscriber of either transport, subscribed from 0.
enum Reader {
    Sse(SseStream),
    Ws(WsClient),
}

/// Reads until it holds `target` (0: not known yet); its event ids in order.
async fn read_all(reader: Reader, target: Arc<AtomicU64>) -> Vec<u64> {
    let started = Instant::now();
    let reached = |got: &[u64]| {
        let t = target.load(Ordering::SeqCst);
        t > 0 && got.last().is_some_and(|&l| l >= t)
    };
    let mut got = Vec::new();
    match reader {
        Reader::Sse(mut s) => {
            while !reached(&got) && !s.ended() && started.elapsed() < WAIT {
                if let Some(e) = s.next_event(Duration::from_millis(500)).await {
                    got.extend(event_ids(&[e]));
                }
            }
        }
        Reader::Ws(mut ws) => {
            while !reached(&got) && started.elapsed() < WAIT {
                match ws.next(Duration::from_millis(500)).await {
                    Some(Frame::Json(v)) if v["op"] == "event" => {
                        got.push(v["id"].as_u64().unwrap_or(0));
                    }
                    Some(Frame::Closed(_)) => break,
                    _ => {}
                }
            }
        }
    }
    got
}

/// Subscribes `READERS` readers, half SSE and half WebSocket, then reads each in its own task.
async fn readers(
    api: &Api,
    c: &str,
    target: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<u64>>> {
    let tok = admin();
    // `buffered` keeps the order: even readers are SSE, odd ones WebSocket.
    let opened: Vec<Reader> = stream::iter(0..READERS)
        .map(|n| {
            let (api, c, tok) = (api.clone(), c.to_string(), tok.clone());
            async move {
                if n % 2 == 0 {
                    Reader::Sse(SseStream::subscribe(&api, &c, Some(0), Some(&tok)).await)
                } else {
                    Reader::Ws(WsClient::subscribe(&api, &c, Some(0), Some(&tok)).await.0)
                }
            }
        })
        .buffered(20)
        .collect()
        .await;
    let counts = info(api, c).await["subscribers"].clone();
    assert_eq!(
        counts,
        json!({"sse": READERS / 2, "ws": READERS / 2}),
        "readers"
    );
    opened
        .into_iter()
        .map(|reader| tokio::spawn(read_all(reader, target.clone())))
        .collect()
}

async fn assert_readers(handles: Vec<tokio::task::JoinHandle<Vec<u64>>>, n: u64) {
    let want: Vec<u64> = (1..=n).collect();
    for (i, h) in handles.into_iter().enumerate() {
        let got = h.await.expect("a reader task");
        let kind = if i % 2 == 0 { "SSE" } else { "WS" };
        assert!(
            got == want,
            "{kind} reader #{i}: {} events, want 1..={n} in order",
            got.len()
        );
    }
}

async fn slow_sse_consumer_is_dropped_others_get_everything_and_it_resumes(_: Api) {
    let limit = LIMIT.to_string();
    let hub = own_hub(&[("SLOW_CONSUMER_BYTES", &limit), ("RETAIN_EVENTS", "100000")]).await;
    let api = Api::new(hub.base());
    let c = channel("slowsse");
    let target = Arc::new(AtomicU64::new(0));
    let others = readers(&api, &c, &target).await;
    let host = api.base.trim_start_matches("http://");
    let request = format!(
        "GET /sse/{c}?since=0 HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {}\r\n\r\n",
        admin()
    );
    let (mut slow, head, mut raw) = stalled(&api, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let counts = info(&api, &c).await["subscribers"].clone();
    assert_eq!(counts, json!({"sse": READERS / 2 + 1, "ws": READERS / 2}));

    // Publish until the hub lets the stalled client go, then a few more.
    let (mut dropped_at, mut n) = (None, 0);
    while n < MAX_EVENTS && dropped_at.is_none_or(|d| n < d + 20) {
        n += 1;
        assert_eq!(publish_padded(&api, &c, n).await, n);
        if dropped_at.is_none() && n % 5 == 0 {
            let sse = info(&api, &c).await["subscribers"]["sse"].clone();
            if sse == json!(READERS / 2) {
                dropped_at = Some(n);
            }
        }
    }
    let dropped_at = dropped_at.unwrap_or_else(|| {
        panic!("the stalled SSE client was never dropped ({n} events of {PAD} B)")
    });
    let counts = info(&api, &c).await["subscribers"].clone();
    assert_eq!(
        counts,
        json!({"sse": READERS / 2, "ws": READERS / 2}),
        "after the drop"
    );
    target.store(n, Ordering::SeqCst);
    assert_readers(others, n).await;

    // The stalled client reads again: a whole prefix 1..=K, then the end of the stream.
    let (started, mut ended) = (Instant::now(), false);
    while !ended && started.elapsed() < Duration::from_secs(60) {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(Duration::from_secs(5), slow.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => ended = true,
            Ok(Ok(k)) => raw.extend_from_slice(&chunk[..k]),
            Err(_) => {}
        }
        ended |= dechunk(&raw).1;
    }
    assert!(ended, "the dropped client's stream never ended");
    let items = Parser::default().feed(&dechunk(&raw).0);
    let got: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) if e.kind != "gap" => e.id(),
            _ => None,
        })
        .collect();
    let k = got.len() as u64;
    assert!(
        got == (1..=k).collect::<Vec<_>>(),
        "the dropped client's events: {got:?}"
    );
    assert!(k < n, "it was dropped before the end ({k} of {n})");
    eprintln!(
        "e2e: slow SSE: limit {LIMIT} B; the stalled client was dropped after {dropped_at} \
         events of {PAD} B, having been sent 1..={k}; {READERS} others got all {n} in order; \
         hub RSS {} KiB",
        hub.rss_kib()
    );

    // EventSource reconnects with Last-Event-ID and gets everything after it, once.
    let auth = format!("Bearer {}", admin());
    let last = k.to_string();
    let headers = [
        ("authorization", auth.as_str()),
        ("last-event-id", last.as_str()),
    ];
    let opened = SseStream::open(&api, &format!("/sse/{c}"), &headers).await;
    let mut again = opened.unwrap_or_else(|r| panic!("reconnect: {} {}", r.status, r.text()));
    let resumed = again.events_through(n, Duration::from_secs(60)).await;
    let rest = event_ids(&resumed);
    let shown = String::from_utf8_lossy(&again.raw[..again.raw.len().min(200)]).into_owned();
    assert!(
        rest == (k + 1..=n).collect::<Vec<_>>(),
        "resumed from {k} (of {n}): {} events {:?}..{:?}, stream ended {}, received {shown:?}",
        rest.len(),
        rest.first(),
        rest.last(),
        again.ended()
    );
    hub.cleanup().await;
}

async fn slow_ws_non_reader_leaves_100_readers_unaffected(_: Api) {
    let hub = own_hub(&[("RETAIN_EVENTS", "100000")]).await;
    let api = Api::new(hub.base());
    let c = channel("slowws");
    let target = Arc::new(AtomicU64::new(0));
    let others = readers(&api, &c, &target).await;
    let host = api.base.trim_start_matches("http://");
    let key = generate_key();
    let request = format!(
        "GET /ws/{c}?since=0 HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
         Authorization: Bearer {}\r\n\r\n",
        admin()
    );
    let (stream, head, rest) = stalled(&api, &request).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let counts = info(&api, &c).await["subscribers"].clone();
    assert_eq!(counts, json!({"sse": READERS / 2, "ws": READERS / 2 + 1}));

    let rss_before = hub.rss_kib();
    let publishing = Instant::now();
    for k in 1..=WS_EVENTS {
        assert_eq!(publish_padded(&api, &c, k).await, k);
    }
    let published = publishing.elapsed();
    let counts = info(&api, &c).await["subscribers"].clone();
    target.store(WS_EVENTS, Ordering::SeqCst);
    assert_readers(others, WS_EVENTS).await;
    let delivered = publishing.elapsed();
    eprintln!(
        "e2e: slow WS: {WS_EVENTS} events of {PAD} B with {READERS} readers and one non-reader: \
         publishing took {published:.1?}, every reader had all {:.1?} after the first publish; \
         subscribers then {counts}; hub RSS {rss_before} -> {} KiB",
        delivered,
        hub.rss_kib()
    );

    // A control: the same volume to a channel nobody subscribes to, for the memory it costs.
    let (control, before) = (channel("slowctl"), hub.rss_kib());
    for k in 1..=ALONE_EVENTS {
        assert_eq!(publish_padded(&api, &control, k).await, k);
    }
    eprintln!(
        "e2e: slow WS: control, {ALONE_EVENTS} events to a channel without subscribers: hub RSS \
         {before} -> {} KiB",
        hub.rss_kib()
    );

    // The readers are gone; the non-reader alone gets ALONE_EVENTS more (about 8 MB).
    let (alone, mut samples) = (Instant::now(), vec![(WS_EVENTS, hub.rss_kib())]);
    for k in WS_EVENTS + 1..=WS_EVENTS + ALONE_EVENTS {
        assert_eq!(publish_padded(&api, &c, k).await, k);
        if k % 250 == 0 {
            samples.push((k, hub.rss_kib()));
        }
    }
    let total = WS_EVENTS + ALONE_EVENTS;
    let counts = info(&api, &c).await["subscribers"].clone();
    eprintln!(
        "e2e: slow WS: {ALONE_EVENTS} more to the non-reader alone in {:.1?}; subscribers \
         {counts}; (published, hub RSS KiB) {samples:?}",
        alone.elapsed()
    );

    // Now the non-reader reads: whatever it gets must still be in order, each id once.
    let socket = MaybeTlsStream::Plain(stream);
    let mut ws = WebSocketStream::from_partially_read(socket, rest, Role::Client, None).await;
    let (mut got, mut ops, mut close) = (Vec::new(), Vec::new(), None);
    let reading = Instant::now();
    while reading.elapsed() < Duration::from_secs(60) && got.last() != Some(&total) {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                match v["op"].as_str() {
                    Some("event") => got.push(v["id"].as_u64().unwrap_or(0)),
                    op => ops.push(op.unwrap_or("?").to_string()),
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                close = Some(format!("{f:?}"));
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                close = Some(format!("error: {e}"));
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let read_in = reading.elapsed();
    let k = got.len() as u64;
    assert!(
        got == (1..=k).collect::<Vec<_>>(),
        "the non-reader's events must be in order, once each: {} events",
        got.len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "e2e: slow WS: the non-reader then read {k} of {total} events in order (other frames \
         {ops:?}) in {read_in:.1?}; close: {close:?}; hub RSS after it drained {} KiB",
        hub.rss_kib()
    );
    hub.cleanup().await;
}

/// Regression: the SSE bridge counted a replay sent in one burst as unread backlog, so a
/// (re)connect whose replay exceeds `SLOW_CONSUMER_BYTES` was dropped before its first event.
async fn slow_sse_replay_larger_than_the_limit_is_delivered_not_dropped(_: Api) {
    let limit = LIMIT.to_string();
    let hub = own_hub(&[("SLOW_CONSUMER_BYTES", &limit), ("RETAIN_EVENTS", "100000")]).await;
    let api = Api::new(hub.base());
    let c = channel("slowreplay");
    for k in 1..=20 {
        assert_eq!(publish_padded(&api, &c, k).await, k);
    }
    // 5 events (about 41 KB) fit under the limit, 20 (about 165 KB) do not.
    for since in [15, 0] {
        let mut s = SseStream::subscribe(&api, &c, Some(since), Some(&admin())).await;
        let got = event_ids(&s.events_through(20, Duration::from_secs(30)).await);
        let want: Vec<u64> = (since + 1..=20).collect();
        assert!(
            got == want,
            "SSE from {since} ({} KiB of replay, limit {LIMIT} B): got {} events, stream ended {}",
            (20 - since) * (PAD as u64 / 1024),
            got.len(),
            s.ended()
        );
    }
    hub.cleanup().await;
}
