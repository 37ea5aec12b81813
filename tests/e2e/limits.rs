//! Limits and hostile paths at the door: every size limit is a 413 problem that stores nothing,
//! however the body is framed (honest, absent or lying `Content-Length`, chunked); a hub with
//! small configured limits enforces those; percent-encoded channel names never reach another
//! channel. Requests that a client library would tidy up go out raw over TCP.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::{admin, channel, token, Api, Resp};
use crate::harness::{Hub, HubOptions};
use crate::publish::{assert_problem, head};
use crate::ws_client::WsClient;
use crate::{case, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(every_limit_is_a_413_however_the_body_is_framed),
        case_own_hub!(configured_small_limits_are_enforced),
        case!(encoded_channel_names_never_reach_another_channel),
    ]
}

const RAW_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `head` (request line and headers, without the blank line) and `body` as they are, on a
/// connection of its own that the request closes, and reads the whole answer. The body is
/// written while the answer is read, so an early refusal is seen even if the write then fails.
pub async fn raw(api: &Api, head: &str, body: Vec<u8>) -> Resp {
    let host = api.base.trim_start_matches("http://").to_string();
    let fail = |why: String| Resp {
        status: 0,
        headers: reqwest::header::HeaderMap::new(),
        body: why.into_bytes(),
    };
    let stream = match TcpStream::connect(&host).await {
        Ok(s) => s,
        Err(e) => return fail(format!("connect {host}: {e}")),
    };
    let (mut rd, mut wr) = stream.into_split();
    let request = format!("{head}\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(request.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        let _ = wr.flush().await;
        // Keep the write half open: a half-close could read as a cut body.
        tokio::time::sleep(RAW_TIMEOUT).await;
        drop(wr);
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(RAW_TIMEOUT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if complete(&buf) {
                break;
            }
        }
    })
    .await;
    writer.abort();
    if read.is_err() && buf.is_empty() {
        return fail(format!("no answer within {RAW_TIMEOUT:?} to {head:?}"));
    }
    parse(&buf)
}

/// True once `buf` holds an answer head and all of the body its `Content-Length` announces.
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|n| buf.len() >= end + 4 + n)
}

fn parse(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = reqwest::header::HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    let mut body = buf.get(end + 4..).unwrap_or_default().to_vec();
    // What follows the announced length is another answer (to the rest of a lying request).
    let len = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let Some(n) = len {
        body.truncate(n);
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// `body` in chunks of 64 KiB, with the last chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1024);
    for piece in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn publish_head(c: &str, token: &str, extra: &str) -> String {
    format!(
        "POST /channels/{c}/events HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json{extra}"
    )
}

/// A batch of `n` events whose `data` are strings of `len` bytes.
fn batch(n: usize, len: usize) -> Vec<u8> {
    let items: Vec<_> = (0..n).map(|_| json!({"data": "x".repeat(len)})).collect();
    serde_json::to_vec(&items).unwrap()
}

async fn every_limit_is_a_413_however_the_body_is_framed(api: Api) {
    let c = channel("limits");
    let t = admin();
    // 100 events of 20,000 bytes: within the batch and data limits, 2 MB in all.
    let big = batch(100, 20_000);
    assert!(big.len() > 2_000_000);
    let one_event_over = serde_json::to_vec(&json!({"data": "x".repeat(65_535)})).unwrap();
    const CHUNKED: &str = "\r\nTransfer-Encoding: chunked";
    // (what, framing headers, or "" for an honest Content-Length, body, status)
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("2 MB, honest Content-Length", "", big.clone(), 413),
        (
            "2 MB, chunked, no Content-Length",
            CHUNKED,
            chunked(&big),
            413,
        ),
        // Transfer-Encoding wins over a Content-Length that lies (RFC 9112 6.3).
        (
            "2 MB, chunked, Content-Length: 50",
            "\r\nTransfer-Encoding: chunked\r\nContent-Length: 50",
            chunked(&big),
            413,
        ),
        // Only the announced 50 bytes are the body: a cut JSON document, 400 invalid_json.
        (
            "2 MB after Content-Length: 50",
            "\r\nContent-Length: 50",
            big.clone(),
            400,
        ),
        ("batch of 101", "", batch(101, 1), 413),
        ("data of 65537 bytes", "", one_event_over, 413),
        ("data of 65537 bytes in a batch", "", batch(2, 65_535), 413),
    ];
    let mut report = String::new();
    for (what, framing, body, status) in cases {
        let framing = match framing {
            "" => format!("\r\nContent-Length: {}", body.len()),
            f => f.to_string(),
        };
        let r = raw(&api, &publish_head(&c, &t, &framing), body).await;
        let code = if status == 413 {
            "too_large"
        } else {
            "invalid_json"
        };
        if r.status != status || r.json()["code"] != json!(code) {
            let _ = writeln!(
                report,
                "{what}: want {status} {code}, got {} {}",
                r.status,
                r.text()
            );
        }
    }
    assert!(report.is_empty(), "{report}");
    assert_eq!(
        head(&api, &c).await,
        0,
        "a refused publish stored something"
    );

    // At the limits everything is accepted: 100 events, data of 65536 bytes.
    let r = api
        .publish(
            &c,
            &json!((0..100).map(|i| json!({"data": i})).collect::<Vec<_>>()),
            &t,
        )
        .await;
    assert_eq!(r.status, 201, "a batch of 100: {}", r.text());
    let r = api
        .publish(&c, &json!({"data": "x".repeat(65_534)}), &t)
        .await;
    assert_eq!(r.status, 201, "data of 65536 bytes: {}", r.text());
    assert_eq!(head(&api, &c).await, 101);
}

async fn configured_small_limits_are_enforced(_shared: Api) {
    let opts = HubOptions::with_vars(&[
        ("MAX_BATCH", "3"),
        ("MAX_DATA_BYTES", "10"),
        ("MAX_BODY_BYTES", "200"),
    ]);
    let hub = Hub::start(opts).await.unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(hub.base());
    let c = channel("small");
    let t = admin();
    let data = |n: usize| json!({"data": "x".repeat(n - 2)});
    let body_of = |len: usize| {
        // {"data":"xx…"} padded with spaces to exactly `len` bytes.
        let mut b = br#"{"data":"12345678"}"#.to_vec();
        b.resize(len, b' ');
        b
    };
    let mut report = String::new();
    for (what, body, status) in [
        (
            "batch of 3",
            serde_json::to_vec(&json!([data(2), data(2), data(2)])).unwrap(),
            201,
        ),
        (
            "batch of 4",
            serde_json::to_vec(&json!([data(2), data(2), data(2), data(2)])).unwrap(),
            413,
        ),
        (
            "data of 10 bytes",
            serde_json::to_vec(&data(10)).unwrap(),
            201,
        ),
        (
            "data of 11 bytes",
            serde_json::to_vec(&data(11)).unwrap(),
            413,
        ),
        ("body of 200 bytes", body_of(200), 201),
        ("body of 201 bytes", body_of(201), 413),
    ] {
        let r = api
            .publish_raw(&c, Some("application/json"), body, Some(&t))
            .await;
        let ok = r.status == status && (status != 413 || r.json()["code"] == json!("too_large"));
        if !ok {
            let _ = writeln!(
                report,
                "{what}: want {status}, got {} {}",
                r.status,
                r.text()
            );
        }
    }
    // A socket's publish frames are held to the same data limit.
    let (mut ws, _) = WsClient::subscribe(&api, &c, None, Some(&t)).await;
    ws.send_text(r#"{"op":"publish","data":"123456789","ref":1}"#)
        .await;
    let e = ws.next_json(Duration::from_secs(30)).await;
    if e["status"] != json!(413) {
        let _ = writeln!(report, "WS data of 11 bytes: {e}");
    }
    ws.close().await;
    let stored = head(&api, &c).await;
    hub.cleanup().await;
    assert!(report.is_empty(), "{report}");
    assert_eq!(
        stored, 5,
        "3 + 1 + 1 events accepted, nothing refused stored"
    );
}

/// `method path` sent as written (no client normalises it), with a publish body and `token`.
async fn smuggle(api: &Api, method: &str, path: &str, token: &str) -> Resp {
    let body = br#"{"data":"smuggled"}"#.to_vec();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}",
        body.len()
    );
    raw(api, &head, body).await
}

async fn encoded_channel_names_never_reach_another_channel(api: Api) {
    let target = channel("target");
    let t = admin();
    let r = api
        .publish(&target, &json!({"data": "only this"}), &t)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Segments that decode (once) to something with a separator, a dot path, a NUL, a literal
    // `%2F` or non-ASCII: all outside the channel grammar.
    let segments = [
        format!("x%2F{target}"),
        format!("x%2f{target}"),
        format!("x%2F..%2F{target}"),
        format!("{target}%2F"),
        format!("%2e%2e%2F{target}"),
        format!("{target}%00"),
        "%00".to_string(),
        format!("x%252F{target}"),
        format!("{target}%252F"),
        format!("{target}%C0%AF"),
        "%C0%AE%C0%AE".to_string(),
        format!("{target}%E2%80%8B"),
        format!("{target}%"),
        format!("{target}%2"),
        format!("{target}%zz"),
        format!("{target}%20"),
    ];
    let mut report = String::new();
    for seg in &segments {
        for (method, path) in [
            ("POST", format!("/channels/{seg}/events")),
            ("DELETE", format!("/channels/{seg}/events")),
            ("GET", format!("/channels/{seg}")),
            ("GET", format!("/poll/{seg}?since=0")),
            ("GET", format!("/sse/{seg}")),
            ("GET", format!("/ws/{seg}")),
        ] {
            let r = smuggle(&api, method, &path, &t).await;
            if !matches!(r.status, 400 | 404) {
                let _ = writeln!(report, "{method} {path}: {} {}", r.status, r.text());
            }
        }
    }
    assert!(report.is_empty(), "want 400 or 404:\n{report}");

    // A `%2e%2e` segment is a dot segment to the runtime's URL parser: workerd resolves it
    // before the Worker sees the URL, so `/poll/x/%2e%2e/{target}` *is* `/poll/{target}`. What
    // must hold: the right is checked on the resolved channel, as for a plain request.
    let x_only = token(&["x"], &["x"], 600);
    for (method, path) in [
        ("POST", format!("/channels/x/%2e%2e/{target}/events")),
        ("DELETE", format!("/channels/x/%2E%2E/{target}/events")),
        ("GET", format!("/poll/x/%2e%2e/{target}?since=0")),
        ("GET", format!("/channels/x/../{target}")),
    ] {
        let r = smuggle(&api, method, &path, &x_only).await;
        assert_problem(
            &r,
            403,
            "forbidden",
            &format!("{method} {path} with a token for x"),
        );
    }
    assert_eq!(head(&api, &target).await, 1, "the target channel changed");
    let r = api.poll(&target, Some(0), None).await;
    assert_eq!(
        r.json()["events"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text()
    );
}
