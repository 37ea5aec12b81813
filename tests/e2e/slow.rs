//! Slow consumers. An SSE client that stops reading is dropped once more than
//! `SLOW_CONSUMER_BYTES` wait for it, and a WebSocket client that stops reading once more than
//! that many bytes of events are unconfirmed by its `cursor` reports; meanwhile 100 other
//! subscribers get every event in order, and the dropped one resumes from its cursor without
//! loss. A WebSocket reader that never reports is dropped the same way; one that reports never is.

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
use crate::ws_client::{frame_ids, Frame, WsClient};
use crate::{case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case_own_hub!(slow_sse_consumer_is_dropped_others_get_everything_and_it_resumes),
        case_own_hub!(slow_ws_non_reader_is_dropped_others_get_everything_and_it_resumes),
        case_own_hub!(slow_ws_reports_keep_a_reader_others_are_dropped_at_the_window),
        case_own_hub!(slow_sse_replay_larger_than_the_limit_is_delivered_not_dropped),
        case_own_hub!(slow_a_burst_after_a_quiet_spell_is_delivered_not_dropped),
        case_own_hub!(slow_ws_replay_is_paced_by_the_window),
        case_own_hub!(slow_ws_held_replay_overtaken_by_retention_gets_the_gap),
        case_own_hub!(slow_sse_replay_is_paced_and_a_stalled_one_ends),
    ]
}

/// The smallest limit the hub accepts.
pub const LIMIT: usize = 64 * 1024;
pub const PAD: usize = 8 * 1024;
const READERS: usize = 100;
const MAX_EVENTS: u64 = 1000;
const WAIT: Duration = Duration::from_secs(240);
/// The receive buffer our stalled clients ask the kernel for, so backpressure reaches the hub.
const RCVBUF: u32 = 4096;

/// This test's own hub, with the smallest window (`LIMIT`) and `RETAIN_EVENTS` = `retain`.
pub async fn own_hub(retain: &str) -> Hub {
    let limit = LIMIT.to_string();
    let vars = [
        ("SLOW_CONSUMER_BYTES", limit.as_str()),
        ("RETAIN_EVENTS", retain),
    ];
    let started = Hub::start(HubOptions::with_vars(&vars)).await;
    started.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"))
}

/// Wide enough that nothing a test publishes is pruned.
pub const RETAIN_ALL: &str = "100000";

pub async fn publish_padded(api: &Api, c: &str, k: u64) -> u64 {
    let body = json!({"data": {"k": k, "pad": "x".repeat(PAD)}});
    let r = api.publish(c, &body, &admin()).await;
    assert_eq!(r.status, 201, "publish {k}: {}", r.text());
    ids(&r.json()).first().copied().unwrap_or(0)
}

/// Publishes events `ks` (padded like `publish_padded`) in one batch: one request, however many.
async fn publish_padded_batch(api: &Api, c: &str, ks: std::ops::RangeInclusive<u64>) {
    let (first, count) = (*ks.start(), ks.clone().count());
    let batch: Vec<_> = ks
        .map(|k| json!({"data": {"k": k, "pad": "x".repeat(PAD)}}))
        .collect();
    let r = api.publish(c, &json!(batch), &admin()).await;
    assert_eq!(
        r.status,
        201,
        "publishing {count} from {first}: {}",
        r.text()
    );
    assert_eq!(
        ids(&r.json()).first().copied(),
        Some(first),
        "the batch's first id"
    );
}

/// A connection that sends `request` and reads only the answer's head, with a tiny receive
/// buffer: the kernel stops taking bytes almost at once when the test stops reading.
pub async fn stalled(api: &Api, request: &str) -> (TcpStream, String, Vec<u8>) {
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

/// An SSE subscribe from 0 on a `stalled` connection: the answer's head and the body read so far.
async fn stalled_sse(api: &Api, c: &str) -> (TcpStream, Vec<u8>) {
    let host = api.base.trim_start_matches("http://");
    let request = format!(
        "GET /sse/{c}?since=0 HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {}\r\n\r\n",
        admin()
    );
    let (stream, head, raw) = stalled(api, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (stream, raw)
}

/// Reads a `stalled_sse` stream again, after `raw`, until its body ends (or a minute passes):
/// the ids of its events, and whether it ended.
async fn read_sse_to_end(stream: &mut TcpStream, mut raw: Vec<u8>) -> (Vec<u64>, bool) {
    let (started, mut ended) = (Instant::now(), false);
    while !ended && started.elapsed() < Duration::from_secs(60) {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => ended = true,
            Ok(Ok(k)) => raw.extend_from_slice(&chunk[..k]),
            Err(_) => {}
        }
        ended |= dechunk(&raw).1;
    }
    let ids = Parser::default()
        .feed(&dechunk(&raw).0)
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) if e.kind != "gap" => e.id(),
            _ => None,
        })
        .collect();
    (ids, ended)
}

/// Decodes a chunked body read so far: the bytes, and whether its last chunk was seen.
pub fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
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

/// Publishes padded events until the channel counts only the readers of `transport` (`sse` or
/// `ws`), i.e. the stalled one was let go, then 20 more; returns when it went and the last id.
async fn publish_until_dropped(api: &Api, c: &str, transport: &str) -> (u64, u64) {
    let (mut dropped_at, mut n) = (None, 0);
    while n < MAX_EVENTS && dropped_at.is_none_or(|d| n < d + 20) {
        n += 1;
        assert_eq!(publish_padded(api, c, n).await, n);
        if dropped_at.is_none() && n % 5 == 0 {
            let count = info(api, c).await["subscribers"][transport].clone();
            if count == json!(READERS / 2) {
                dropped_at = Some(n);
            }
        }
    }
    let dropped_at = dropped_at.unwrap_or_else(|| {
        panic!("the stalled {transport} client was never dropped ({n} events of {PAD} B)")
    });
    (dropped_at, n)
}

async fn slow_sse_consumer_is_dropped_others_get_everything_and_it_resumes(_: Api) {
    let hub = own_hub(RETAIN_ALL).await;
    let api = Api::new(hub.base());
    let c = channel("slowsse");
    let target = Arc::new(AtomicU64::new(0));
    let others = readers(&api, &c, &target).await;
    let (mut slow, raw) = stalled_sse(&api, &c).await;
    let counts = info(&api, &c).await["subscribers"].clone();
    assert_eq!(counts, json!({"sse": READERS / 2 + 1, "ws": READERS / 2}));

    let (dropped_at, n) = publish_until_dropped(&api, &c, "sse").await;
    let counts = info(&api, &c).await["subscribers"].clone();
    assert_eq!(
        counts,
        json!({"sse": READERS / 2, "ws": READERS / 2}),
        "after the drop"
    );
    target.store(n, Ordering::SeqCst);
    assert_readers(others, n).await;

    // The stalled client reads again: a whole prefix 1..=K, then the end of the stream.
    let (got, ended) = read_sse_to_end(&mut slow, raw).await;
    assert!(ended, "the dropped client's stream never ended");
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

async fn slow_ws_non_reader_is_dropped_others_get_everything_and_it_resumes(_: Api) {
    let hub = own_hub(RETAIN_ALL).await;
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

    let (rss_before, publishing) = (hub.rss_kib(), Instant::now());
    let (dropped_at, n) = publish_until_dropped(&api, &c, "ws").await;
    let counts = info(&api, &c).await["subscribers"].clone();
    assert_eq!(
        counts,
        json!({"sse": READERS / 2, "ws": READERS / 2}),
        "after the drop"
    );
    target.store(n, Ordering::SeqCst);
    assert_readers(others, n).await;
    let delivered = publishing.elapsed();

    // The non-reader reads again: `ready`, a whole prefix 1..=K, then the close with 4001.
    let socket = MaybeTlsStream::Plain(stream);
    let mut ws = WebSocketStream::from_partially_read(socket, rest, Role::Client, None).await;
    let (mut got, mut ops, mut close) = (Vec::new(), Vec::new(), None);
    let reading = Instant::now();
    while close.is_none() && reading.elapsed() < Duration::from_secs(60) {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                match v["op"].as_str() {
                    Some("event") => got.push(v["id"].as_u64().unwrap_or(0)),
                    op => ops.push(op.unwrap_or("?").to_string()),
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                close = Some(f.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("the non-reader's socket failed: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    let k = got.len() as u64;
    assert!(
        got == (1..=k).collect::<Vec<_>>(),
        "the non-reader's events must be a prefix, in order, once each: {} events",
        got.len()
    );
    assert!(k < n, "it was dropped before the end ({k} of {n})");
    assert_eq!(ops, ["ready"], "its other frames");
    let (code, reason) = close.flatten().expect("a close frame");
    assert_eq!(code, 4001, "closed as too slow: {reason}");
    eprintln!(
        "e2e: slow WS: window {LIMIT} B; the non-reader was dropped after {dropped_at} events \
         of {PAD} B, having been sent 1..={k} ({} KiB); {READERS} others had all {n} in order \
         {delivered:.1?} after the first publish; hub RSS {rss_before} -> {} KiB",
        k * PAD as u64 / 1024,
        hub.rss_kib()
    );

    // It resumes from its cursor and gets the rest, once.
    let (mut again, _) = WsClient::subscribe(&api, &c, Some(k), Some(&admin())).await;
    let rest = frame_ids(&again.frames_through(n, Duration::from_secs(60)).await);
    assert!(
        rest == (k + 1..=n).collect::<Vec<_>>(),
        "resumed from {k} (of {n}): {} events",
        rest.len()
    );
    hub.cleanup().await;
}

/// Reads until the socket closes or `wait` passes: the event ids and the close.
async fn read_to_close(ws: &mut WsClient, wait: Duration) -> (Vec<u64>, Option<(u16, String)>) {
    let (started, mut got) = (Instant::now(), Vec::new());
    while started.elapsed() < wait {
        match ws.next(Duration::from_millis(500)).await {
            Some(Frame::Json(v)) if v["op"] == "event" => got.push(v["id"].as_u64().unwrap_or(0)),
            Some(Frame::Closed(close)) => return (got, close),
            _ => {}
        }
    }
    (got, None)
}

/// A reader that confirms as it reads keeps its socket across many windows; one that reads
/// everything but never confirms is closed with 4001 once a window is unconfirmed and it has
/// been silent for a second, and it has everything up to the close.
async fn slow_ws_reports_keep_a_reader_others_are_dropped_at_the_window(_: Api) {
    let hub = own_hub(RETAIN_ALL).await;
    let api = Api::new(hub.base());
    let c = channel("wscredit");
    let (mut confirming, _) = WsClient::subscribe(&api, &c, None, Some(&admin())).await;
    let (mut quiet, _) = WsClient::subscribe(&api, &c, None, Some(&admin())).await;
    quiet.set_reporting(false);
    // Two windows, then more than a second of silence, then eight windows more.
    let first = 2 * LIMIT as u64 / PAD as u64;
    let total = first + 8 * LIMIT as u64 / PAD as u64;
    let wait = Duration::from_secs(60);
    let reading = tokio::spawn(async move {
        let ids = frame_ids(&confirming.frames_through(total, wait).await);
        (ids, confirming.reports, confirming)
    });
    for k in 1..=first {
        publish_padded(&api, &c, k).await;
    }
    let mut quiet_got = frame_ids(&quiet.frames_through(first, wait).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The quiet reader is closed on the way (at the first publish after its second of silence,
    // unless publishing the first part already took that long).
    for k in first + 1..=total {
        publish_padded(&api, &c, k).await;
    }
    let (after, close) = read_to_close(&mut quiet, wait).await;
    quiet_got.extend(after);
    let j = quiet_got.len() as u64;
    assert_eq!(
        quiet_got,
        (1..=j).collect::<Vec<_>>(),
        "the quiet reader's events"
    );
    assert!(
        j * PAD as u64 > LIMIT as u64 && j < total,
        "the quiet reader got {j} events of {PAD} B (window {LIMIT} B, {total} published)"
    );
    let (code, reason) = close.expect("the quiet reader is closed");
    assert_eq!(code, 4001, "{reason}");
    let (ids, reports, confirming) = reading.await.expect("the confirming reader");
    assert_eq!(
        ids,
        (1..=total).collect::<Vec<_>>(),
        "the confirming reader"
    );
    assert!(reports >= 8, "{reports} reports");
    let counts = info(&api, &c).await["subscribers"].clone();
    assert_eq!(
        counts,
        json!({"sse": 0, "ws": 1}),
        "the confirming reader stays"
    );
    confirming.close().await;
    hub.cleanup().await;
}

/// Regression: the SSE bridge counted a replay sent in one burst as unread backlog, so a
/// (re)connect whose replay exceeds `SLOW_CONSUMER_BYTES` was dropped before its first event.
async fn slow_sse_replay_larger_than_the_limit_is_delivered_not_dropped(_: Api) {
    let hub = own_hub(RETAIN_ALL).await;
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

/// Regression: a subscriber that had read (and confirmed) everything and then sat idle for more
/// than a second was counted silent for the idle time, so a burst bigger than the window dropped
/// it before it could read a byte (seen in CI: a confirming WebSocket reader was closed when
/// publishing resumed after a pause). The silence that counts starts when there is something to
/// read. Both transports, one batch of 10 events (about 82 KB) against a 64 KiB window.
async fn slow_a_burst_after_a_quiet_spell_is_delivered_not_dropped(_: Api) {
    let hub = own_hub(RETAIN_ALL).await;
    let api = Api::new(hub.base());
    let c = channel("quietburst");
    let wait = Duration::from_secs(30);
    let (mut ws, _) = WsClient::subscribe(&api, &c, None, Some(&admin())).await;
    let mut sse = SseStream::subscribe(&api, &c, None, Some(&admin())).await;
    publish_padded(&api, &c, 1).await;
    assert_eq!(frame_ids(&ws.frames_through(1, wait).await), vec![1]);
    ws.send_json(&json!({"op": "cursor", "id": 1})).await;
    assert_eq!(event_ids(&sse.events_through(1, wait).await), vec![1]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish_padded_batch(&api, &c, 2..=11).await;
    let want: Vec<u64> = (2..=11).collect();
    assert_eq!(frame_ids(&ws.frames_through(11, wait).await), want, "WS");
    let got = event_ids(&sse.events_through(11, wait).await);
    assert!(got == want, "SSE: {got:?}, stream ended {}", sse.ended());
    // Both still subscribed: the next event reaches both.
    publish_padded(&api, &c, 12).await;
    assert_eq!(
        frame_ids(&ws.frames_through(12, wait).await),
        vec![12],
        "WS"
    );
    assert_eq!(
        event_ids(&sse.events_through(12, wait).await),
        vec![12],
        "SSE"
    );
    ws.close().await;
    hub.cleanup().await;
}

/// A WebSocket replay is paced by the window, so a `since=0` client costs at most a window of
/// buffers however much is retained. One that never reports is sent one window and, a second
/// later, closed with 4001 (by the alarm: nothing is published meanwhile). Events published
/// while a client is held reach it in order and once, after its reports. One that reports gets
/// everything and stays.
async fn slow_ws_replay_is_paced_by_the_window(_: Api) {
    let hub = own_hub(RETAIN_ALL).await;
    let api = Api::new(hub.base());
    let c = channel("pacedreplay");
    let wait = Duration::from_secs(30);
    let stored = 40;
    for k in 1..=stored {
        assert_eq!(publish_padded(&api, &c, k).await, k);
    }
    // A window holds a little under LIMIT / PAD frames (each is PAD plus its envelope); the
    // replay sends the frame that crosses it too.
    let per_window = (LIMIT / PAD) as u64;

    let (mut quiet, _) = WsClient::subscribe(&api, &c, Some(0), Some(&admin())).await;
    quiet.set_reporting(false);
    let started = Instant::now();
    let (got, close) = read_to_close(&mut quiet, Duration::from_secs(20)).await;
    let k = got.len() as u64;
    assert_eq!(
        got,
        (1..=k).collect::<Vec<_>>(),
        "the quiet client's events"
    );
    assert!(
        (per_window - 1..=per_window + 1).contains(&k),
        "a client that never reports got {k} events of {PAD} B with a {LIMIT} B window"
    );
    let (code, reason) = close.expect("the quiet client is closed");
    assert_eq!(code, 4001, "{reason}");
    eprintln!(
        "e2e: paced replay: a client that never reports got {k} of {stored} events of {PAD} B \
         (window {LIMIT} B), then was closed with 4001 after {:.1?}",
        started.elapsed()
    );

    // Held at its window, with live events published meanwhile; then it reports.
    let (mut held, _) = WsClient::subscribe(&api, &c, Some(0), Some(&admin())).await;
    held.set_reporting(false);
    // A held client must report within a second of being sent its window, or it is closed as
    // stalled: one batch, no waiting, before the report.
    let live = stored + 4;
    publish_padded_batch(&api, &c, stored + 1..=live).await;
    let mut ids = frame_ids(&held.frames_through(k, wait).await);
    held.send_json(&json!({"op": "cursor", "id": k})).await;
    held.set_reporting(true);
    ids.extend(frame_ids(&held.frames_through(live, wait).await));
    assert_eq!(
        ids,
        (1..=live).collect::<Vec<_>>(),
        "held, then reporting: every event once, in order"
    );

    // A client that reports from the start gets everything, then live events, and stays.
    let (mut reader, _) = WsClient::subscribe(&api, &c, Some(0), Some(&admin())).await;
    let replayed = frame_ids(&reader.frames_through(live, wait).await);
    assert_eq!(
        replayed,
        (1..=live).collect::<Vec<_>>(),
        "the reader's replay"
    );
    assert!(
        reader.reports >= live / per_window,
        "{} reports",
        reader.reports
    );
    publish_padded(&api, &c, live + 1).await;
    let next = frame_ids(&reader.frames_through(live + 1, wait).await);
    assert_eq!(next, vec![live + 1], "live after the replay");
    assert_eq!(
        frame_ids(&held.frames_through(live + 1, wait).await),
        vec![live + 1]
    );
    let counts = info(&api, &c).await["subscribers"].clone();
    assert_eq!(counts, json!({"sse": 0, "ws": 2}), "both readers stay");
    reader.close().await;
    held.close().await;
    hub.cleanup().await;
}

/// No silent gap on the paced path: a client held by its replay while retention drops the
/// events it has not been sent yet is told so (`gap`) when its report resumes the replay, then
/// gets what is retained, in order.
async fn slow_ws_held_replay_overtaken_by_retention_gets_the_gap(_: Api) {
    let hub = own_hub("20").await;
    let api = Api::new(hub.base());
    let c = channel("pacedgap");
    let wait = Duration::from_secs(30);
    for k in 1..=20 {
        assert_eq!(publish_padded(&api, &c, k).await, k);
    }
    let (mut held, _) = WsClient::subscribe(&api, &c, Some(0), Some(&admin())).await;
    held.set_reporting(false);
    let first = frame_ids(&held.frames_through(1, wait).await);
    assert_eq!(first, vec![1]);
    // Ten more: retention keeps 11..=30, so 2..=10 are gone before the client asks for them.
    // (It must report within a second of being sent its window: one batch, short waits.)
    publish_padded_batch(&api, &c, 21..=30).await;
    let mut sent = first;
    while let Some(Frame::Json(v)) = held.next(Duration::from_millis(100)).await {
        sent.extend(v["id"].as_u64());
    }
    let k = sent.last().copied().unwrap_or(0);
    assert_eq!(sent, (1..=k).collect::<Vec<_>>(), "the first window");
    assert!(k < 10, "held at its window before 10 (got {k})");
    held.send_json(&json!({"op": "cursor", "id": k})).await;
    held.set_reporting(true);
    let frames = held.frames_through(30, wait).await;
    assert_eq!(
        frames.first(),
        Some(&json!({"op": "gap", "requested": k, "earliest": 11})),
        "the gap first"
    );
    assert_eq!(frame_ids(&frames), (11..=30).collect::<Vec<_>>());
    held.close().await;
    hub.cleanup().await;
}

/// An SSE replay is paced too: the object sends the bridge a quarter window at a time, and the
/// next step only once the bridge's client has taken the last. A client that asks for
/// `since=0` on a channel holding more than the buffers on the way absorb (about 7 MB under
/// `wrangler dev`) and never reads is let go a second after they fill, by the object's alarm:
/// its stream ends after a prefix, and it resumes from there. Events published while it is held
/// do not reach it out of turn. A client that reads gets everything.
async fn slow_sse_replay_is_paced_and_a_stalled_one_ends(_: Api) {
    let hub = own_hub(RETAIN_ALL).await;
    let api = Api::new(hub.base());
    let c = channel("pacedsse");
    let stored: u64 = 2000;
    for first in (1..=stored).step_by(100) {
        publish_padded_batch(&api, &c, first..=first + 99).await;
    }
    let started = Instant::now();
    let (mut slow, raw) = stalled_sse(&api, &c).await;
    // Not reading: the object lets the bridge go once its client has stopped taking. Live
    // events meanwhile (the replay holds the bridge from its first step to its last) must wait
    // for the replay, so the client never sees one before its replay reaches it.
    let (mut let_go, mut n) = (None, stored);
    for _ in 0..240 {
        if info(&api, &c).await["subscribers"]["sse"] == 0 {
            let_go = Some(started.elapsed());
            break;
        }
        n += 1;
        assert_eq!(publish_padded(&api, &c, n).await, n);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let let_go = let_go.unwrap_or_else(|| {
        panic!("a client that never read a replay of {stored} events was never let go")
    });
    let (got, ended) = read_sse_to_end(&mut slow, raw).await;
    assert!(ended, "the stalled replay's stream never ended");
    let k = got.len() as u64;
    assert_eq!(
        got,
        (1..=k).collect::<Vec<_>>(),
        "the stalled client's events"
    );
    assert!(k < stored, "it was let go before the end ({k} of {stored})");
    assert!(n > stored, "no event was published while it was held");
    eprintln!(
        "e2e: paced SSE replay: a client that never read was let go after {let_go:.1?}, \
         having been sent 1..={k} of {stored} events of {PAD} B ({} published live meanwhile); \
         hub RSS {} KiB",
        n - stored,
        hub.rss_kib()
    );

    // A reader from 0 gets everything; the stalled one resumes from its last id.
    let mut reader = SseStream::subscribe(&api, &c, Some(0), Some(&admin())).await;
    let all = event_ids(&reader.events_through(n, WAIT).await);
    assert!(
        all == (1..=n).collect::<Vec<_>>(),
        "the reader got {} events ({:?}..{:?}), stream ended {}",
        all.len(),
        all.first(),
        all.last(),
        reader.ended()
    );
    let mut again = SseStream::subscribe(&api, &c, Some(k), Some(&admin())).await;
    let rest = event_ids(&again.events_through(n, WAIT).await);
    assert!(
        rest == (k + 1..=n).collect::<Vec<_>>(),
        "resumed from {k}: {} events",
        rest.len()
    );
    hub.cleanup().await;
}
