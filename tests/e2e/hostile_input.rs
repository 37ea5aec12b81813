//! Input that a reader could not read back, and work or memory that no limit bounded (issue 12):
//! data nested too deep, lone surrogates and numbers out of range (400, nothing stored, on HTTP
//! and on a WebSocket); poll pages cut by bytes; bodies refused at the first bytes over their
//! limit; WebSocket frames refused before they are parsed and refs never echoed big; readers and
//! subscribers that create no storage; idempotency keys scoped to their publisher and dropped
//! with their events; minted tokens that stay usable. Each test failed before the fix.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::{admin, channel, claims, ids, now_secs, token, Api};
use crate::harness::{Hub, HubOptions, SECRET};
use crate::idempotency::DEV_PROXY_503;
use crate::publish::{assert_problem, head};
use crate::sse_client::{event_ids, SseStream};
use crate::ws_client::{Frame, WsClient};
use crate::{case, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(input_data_nested_over_the_limit_is_400_and_a_page_at_the_limit_reads_back),
        case!(input_lone_surrogates_and_numbers_out_of_range_are_400_and_store_nothing),
        case!(input_a_poll_page_is_cut_by_bytes_and_paging_loses_nothing),
        case!(input_bodies_are_refused_at_the_first_bytes_over_their_limit),
        case!(input_ws_oversize_frames_long_refs_and_invalid_utf8_are_refused_unread),
        case!(input_idempotency_keys_belong_to_their_publisher),
        case!(input_minted_tokens_stay_usable_and_name_a_clean_subject),
        case_own_hub!(input_readers_and_subscribers_of_a_new_channel_create_no_storage),
        case_own_hub!(input_idempotency_keys_go_with_the_events_they_answered),
    ]
}

const WAIT: Duration = Duration::from_secs(30);
/// The default `MAX_DATA_DEPTH`.
const DEPTH: usize = 32;

fn nested(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

async fn publish_text(api: &Api, c: &str, body: &str) -> crate::api::Resp {
    api.publish_raw(
        c,
        Some("application/json"),
        body.as_bytes().to_vec(),
        Some(&admin()),
    )
    .await
}

/// The deepest nesting in a parsed value.
fn depth_of(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// The next frame on `ws`, which must be an error frame: its status, code and `ref`.
async fn error_frame(ws: &mut WsClient, what: &str) -> (u64, String, Value) {
    match ws.next(WAIT).await {
        Some(Frame::Json(v)) if v["op"] == "error" => (
            v["status"].as_u64().unwrap_or(0),
            v["code"].as_str().unwrap_or("").to_string(),
            v.get("ref").cloned().unwrap_or(Value::Null),
        ),
        other => panic!("{what}: wanted an error frame, got {other:?}"),
    }
}

async fn input_data_nested_over_the_limit_is_400_and_a_page_at_the_limit_reads_back(api: Api) {
    let c = channel("deep");
    let at_limit = format!(r#"{{"data":{}}}"#, nested(DEPTH));
    let r = publish_text(&api, &c, &at_limit).await;
    assert_eq!(r.status, 201, "data {DEPTH} deep: {}", r.text());
    for levels in [DEPTH + 1, 1000, 10_000] {
        let r = publish_text(&api, &c, &format!(r#"{{"data":{}}}"#, nested(levels))).await;
        assert_problem(&r, 400, "too_deep", &format!("data {levels} deep"));
    }
    let batch = format!(r#"[{{"data":1}},{{"data":{}}}]"#, nested(DEPTH + 1));
    assert_problem(
        &publish_text(&api, &c, &batch).await,
        400,
        "too_deep",
        "a batch with one event too deep",
    );
    assert_eq!(
        head(&api, &c).await,
        1,
        "nothing of the refused bodies was stored"
    );

    // A page holding data at the limit parses with serde_json's default recursion limit.
    api.await_mirror(&c, 1).await;
    let r = api.poll(&c, Some(0), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page: Value = serde_json::from_slice(&r.body).expect("the page parses with defaults");
    assert_eq!(depth_of(&page["events"][0]["data"]), DEPTH);

    // The same on a WebSocket: an error frame, the socket stays open, nothing stored.
    let (mut ws, _) = WsClient::subscribe(&api, &c, None, Some(&admin())).await;
    let frame = format!(r#"{{"op":"publish","data":{},"ref":1}}"#, nested(DEPTH + 1));
    ws.send_text(&frame).await;
    let (status, code, _) = error_frame(&mut ws, "WS data too deep").await;
    assert_eq!((status, code.as_str()), (400, "too_deep"));
    assert!(ws.ping(WAIT).await, "the socket stays open");
    ws.send_text(&format!(
        r#"{{"op":"publish","data":{},"ref":2}}"#,
        nested(DEPTH)
    ))
    .await;
    let event = ws.next_json(WAIT).await;
    assert_eq!(
        (event["op"].as_str(), event["id"].as_u64()),
        (Some("event"), Some(2))
    );
    let ack = ws.next_json(WAIT).await;
    assert_eq!(
        (ack["op"].as_str(), ack["ref"].as_u64()),
        (Some("ack"), Some(2))
    );
    ws.close().await;
}

async fn input_lone_surrogates_and_numbers_out_of_range_are_400_and_store_nothing(api: Api) {
    let c = channel("unreadable");
    for body in [
        r#"{"data":"\ud800"}"#,
        r#"{"data":{"k":[1,"x\udc00y"]}}"#,
        r#"{"data":"\ud83d\u0041"}"#,
        r#"{"data":1e400}"#,
        r#"{"data":[-1.8e308]}"#,
        r#"[{"data":1},{"data":1e999}]"#,
    ] {
        assert_problem(
            &publish_text(&api, &c, body).await,
            400,
            "invalid_json",
            body,
        );
    }
    assert_eq!(head(&api, &c).await, 0, "nothing stored");
    // A surrogate pair is one character, and a huge but finite number keeps its text.
    let r = publish_text(
        &api,
        &c,
        r#"{"data":["\ud83d\ude00",1e308,12345678901234567890123]}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    api.await_mirror(&c, 1).await;
    let page = api.poll(&c, Some(0), None).await;
    assert_eq!(page.json()["events"][0]["data"][0], "😀");
    assert!(
        page.text().contains("12345678901234567890123"),
        "{}",
        page.text()
    );

    let (mut ws, _) = WsClient::subscribe(&api, &c, None, Some(&admin())).await;
    for (n, frame) in [
        r#"{"op":"publish","data":"\udfff","ref":1}"#,
        r#"{"op":"publish","data":2e308,"ref":2}"#,
    ]
    .into_iter()
    .enumerate()
    {
        ws.send_text(frame).await;
        let (status, code, _) = error_frame(&mut ws, frame).await;
        assert_eq!((status, code.as_str()), (400, "invalid_json"), "frame {n}");
    }
    assert!(ws.ping(WAIT).await, "the socket stays open");
    ws.close().await;
    assert_eq!(head(&api, &c).await, 1, "nothing more stored");
}

async fn input_a_poll_page_is_cut_by_bytes_and_paging_loses_nothing(api: Api) {
    // 24 events of 60,000 bytes: 1.44 MB, more than one page of about 1 MiB.
    let c = format!("public:{}", channel("big"));
    let events: Vec<Value> = (0..24)
        .map(|n| json!({"data": format!("{n:02}{}", "x".repeat(59_994))}))
        .collect();
    for chunk in events.chunks(12) {
        let r = api.publish(&c, &json!(chunk), &admin()).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    api.await_mirror(&c, 24).await;
    // Anonymous, as anyone may on a public channel, asking for the largest page there is.
    let r = api
        .get(&format!("/poll/{c}?since=0&limit=1000"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    let got = ids(&json!({"events": page["events"]}));
    assert!(
        r.body.len() <= 1024 * 1024 + 1024,
        "a page of {} bytes ({} events) passes MAX_PAGE_BYTES",
        r.body.len(),
        got.len()
    );
    assert!(!got.is_empty() && got.len() < 24, "page held {got:?}");
    assert_eq!(
        (page["more"].as_bool(), page["next"].as_u64()),
        (Some(true), got.last().copied())
    );
    let (all, pages) = api.poll_all(&c, 0, 1000, 10).await;
    let all_ids: Vec<u64> = all.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(
        all_ids,
        (1..=24).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(pages.len() >= 2, "{} pages", pages.len());
    // A page smaller than one event still holds that event.
    let r = api.get(&format!("/poll/{c}?since=3&limit=1"), None).await;
    assert_eq!(ids(&json!({"events": r.json()["events"]})), vec![4]);
}

/// Sends a chunked body of up to `total` bytes in 64 KiB chunks on a connection of its own,
/// reading at the same time; stops sending when the answer has come. Returns the status and
/// how many body bytes had been sent by then.
/// Streams a chunked body of `total` bytes until the answer's head arrives; returns the status,
/// how much was sent, and the answer as far as it was read (head and the start of the body).
async fn stream_body(api: &Api, path: &str, bearer: &str, total: usize) -> (u16, usize, String) {
    let host = api.base.trim_start_matches("http://").to_string();
    let stream = TcpStream::connect(&host).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = answered.clone();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        if wr.write_all(head.as_bytes()).await.is_err() {
            return sent;
        }
        let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
        if wr.write_all(b"1\r\n[\r\n").await.is_err() {
            return sent;
        }
        while sent < total && !done.load(std::sync::atomic::Ordering::SeqCst) {
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            sent += 0x10000;
        }
        sent
    });
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut piece = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rd.read(&mut piece)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&piece[..n]),
            _ => break,
        }
    }
    answered.store(true, std::sync::atomic::Ordering::SeqCst);
    // The start of the body, to tell the dev proxy's 503 from the hub's answers.
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), rd.read(&mut piece)).await {
        buf.extend_from_slice(&piece[..n]);
    }
    let sent = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(total);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, sent, text)
}

async fn input_bodies_are_refused_at_the_first_bytes_over_their_limit(api: Api) {
    // Both limits are 1 MiB or less; 256 MiB would take the runtime's memory far up if it were
    // read whole first (it was: 100 MiB grew it by 300 MB).
    const TOTAL: usize = 256 * 1024 * 1024;
    let no_rights = token(&[], &[], 600);
    let c = channel("stream");
    for (path, bearer) in [
        ("/tokens".to_string(), no_rights),
        (format!("/channels/{c}/events"), admin()),
    ] {
        // The hub answers 413 after reading (and dropping) at most 16 MiB, then stops reading.
        // The runtime then closes the connection with bytes still arriving, and wrangler's proxy
        // in front may lose the answer to that reset and say `DEV_PROXY_503` instead (seen once
        // in CI, after 23 MiB), or the reset may reach the client before the answer did, which
        // then reads no status at all (0: seen once in CI, after 23 MiB, through serve.mjs's
        // front). Both are the reset's artifacts, so they are tried again, a bounded number of
        // times; any other answer is the hub's.
        let mut attempt = 0;
        let (status, sent) = loop {
            attempt += 1;
            let started = Instant::now();
            let (status, sent, text) = stream_body(&api, &path, &bearer, TOTAL).await;
            eprintln!(
                "hostile_input: {path}: {status} after {} KiB sent of {} MiB, in {:?} (attempt {attempt})",
                sent / 1024,
                TOTAL >> 20,
                started.elapsed()
            );
            let reset = status == 0 || (status == 503 && text.contains(DEV_PROXY_503));
            if reset && attempt < 3 {
                continue;
            }
            break (status, sent);
        };
        assert_eq!(status, 413, "{path}");
        assert!(
            sent < 64 * 1024 * 1024,
            "{path}: the answer waited for {} MiB of body",
            sent >> 20
        );
    }
}

async fn input_ws_oversize_frames_long_refs_and_invalid_utf8_are_refused_unread(api: Api) {
    let c = format!("public:{}", channel("frames"));
    let writer = token(&[&c], &[&c], 600);
    let (mut ws, _) = WsClient::subscribe(&api, &c, None, Some(&writer)).await;
    // 2 MiB of ref: refused before it is parsed, and not sent back.
    let big = format!(r#"{{"op":"nope","ref":"{}"}}"#, "R".repeat(2 * 1024 * 1024));
    ws.send_text(&big).await;
    match ws.next(WAIT).await {
        Some(Frame::Json(v)) => {
            assert_eq!(
                (v["op"].as_str(), v["status"].as_u64()),
                (Some("error"), Some(413))
            );
            assert!(v.get("ref").is_none() && v.to_string().len() < 1024, "{v}");
        }
        other => panic!("2 MiB frame: {other:?}"),
    }
    // A ref over 128 bytes is refused (and not echoed); 128 bytes is echoed.
    let long_ref = "r".repeat(127);
    ws.send_json(&json!({"op": "publish", "data": 1, "ref": long_ref}))
        .await;
    let (status, _, reference) = error_frame(&mut ws, "ref of 129 bytes").await;
    assert_eq!((status, reference), (400, Value::Null));
    let fits = "r".repeat(126);
    ws.send_json(&json!({"op": "publish", "data": 1, "ref": fits}))
        .await;
    let event = ws.next_json(WAIT).await;
    assert_eq!(event["op"], "event");
    let ack = ws.next_json(WAIT).await;
    assert_eq!(
        (ack["op"].as_str(), ack["ref"].as_str()),
        (Some("ack"), Some(fits.as_str()))
    );
    assert_eq!(head(&api, &c).await, 1, "only the valid publish was stored");

    // Invalid UTF-8 in a text frame. RFC 6455 §8.1 wants the connection failed (1007), but
    // the runtime decodes a text frame into a JS string before the object sees it, turning
    // each invalid sequence into U+FFFD (workerd: hibernatable-web-socket.c++, TEXT payloads
    // become strings), so the hub cannot tell. What it stores is then valid Unicode that
    // every reader reads back, which is the harm this guards against.
    let (mut bad, _) = WsClient::subscribe(&api, &c, None, Some(&writer)).await;
    bad.send_raw_text(b"{\"op\":\"publish\",\"data\":\"\xff\xfe\",\"ref\":3}")
        .await;
    let mut frames = Vec::new();
    while frames.len() < 2 {
        match bad.next(WAIT).await {
            Some(Frame::Json(v)) => frames.push(v),
            Some(Frame::Closed(Some((code, _)))) => {
                assert_eq!(code, 1007, "a close is 1007");
                break;
            }
            other => panic!("invalid UTF-8: {other:?}"),
        }
    }
    if let [event, ack] = frames.as_slice() {
        assert_eq!(
            (event["op"].as_str(), ack["op"].as_str()),
            (Some("event"), Some("ack"))
        );
        assert_eq!(event["data"], "\u{fffd}\u{fffd}");
        api.await_mirror(&c, 2).await;
        let page = api.get(&format!("/poll/{c}?since=1"), None).await;
        let read: Value = serde_json::from_slice(&page.body).expect("the page reads back");
        assert_eq!(read["events"][0]["data"], "\u{fffd}\u{fffd}");
    }
    bad.close().await;
    ws.close().await;
}

/// A token for `sub` (or none) that may publish and subscribe on `c`.
fn publisher_token(c: &str, sub: Option<&str>, ttl: i64) -> String {
    let mut claims = claims(&[c], &[c], Some(now_secs() + ttl));
    claims.sub = sub.map(str::to_string);
    edgehub::auth::sign(&claims, SECRET)
}

async fn keyed(api: &Api, c: &str, key: &str, bearer: &str) -> (u16, Vec<u64>) {
    let req = crate::api::client()
        .post(format!("{}/channels/{c}/events", api.base))
        .bearer_auth(bearer)
        .header("idempotency-key", key)
        .json(&json!({"data": {"order": 7}}));
    let r = api.send(req).await;
    (r.status, ids(&r.json()))
}

async fn input_idempotency_keys_belong_to_their_publisher(api: Api) {
    let c = channel("keys");
    let alice = publisher_token(&c, Some("alice"), 600);
    let bob = publisher_token(&c, Some("bob"), 600);
    assert_eq!(keyed(&api, &c, "k-1", &alice).await, (201, vec![1]));
    // The same key and body from another publisher is that publisher's own key.
    assert_eq!(keyed(&api, &c, "k-1", &bob).await, (201, vec![2]));
    assert_eq!(keyed(&api, &c, "k-1", &bob).await, (200, vec![2]));
    // The same subject with a fresh token is the same publisher.
    let alice_again = publisher_token(&c, Some("alice"), 900);
    assert_eq!(keyed(&api, &c, "k-1", &alice_again).await, (200, vec![1]));
    // Without a subject, a token is its own publisher.
    let anon_a = publisher_token(&c, None, 600);
    let anon_b = publisher_token(&c, None, 601);
    assert_eq!(keyed(&api, &c, "k-1", &anon_a).await, (201, vec![3]));
    assert_eq!(keyed(&api, &c, "k-1", &anon_b).await, (201, vec![4]));
    assert_eq!(keyed(&api, &c, "k-1", &anon_a).await, (200, vec![3]));

    // Over a WebSocket, keys are the socket's publisher's too.
    let frame = json!({"op": "publish", "data": 1, "idempotency_key": "w-1", "ref": "r"});
    let mut acks = Vec::new();
    for bearer in [&alice, &bob, &alice] {
        let (mut ws, _) = WsClient::subscribe(&api, &c, None, Some(bearer)).await;
        ws.send_json(&frame).await;
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let f = ws.next_json(WAIT).await;
            if f["op"] == "ack" {
                acks.push(f["id"].as_u64().unwrap_or(0));
                break;
            }
        }
        ws.close().await;
    }
    assert_eq!(acks, vec![5, 6, 5], "alice, bob, alice again");
}

async fn input_minted_tokens_stay_usable_and_name_a_clean_subject(api: Api) {
    let backend = crate::api::backend();
    let mint = |body: Value, bearer: String| {
        let api = api.clone();
        async move {
            let req = crate::api::client()
                .post(format!("{}/tokens", api.base))
                .bearer_auth(bearer)
                .json(&body);
            api.send(req).await
        }
    };
    let many: Vec<String> = (0..1000).map(|i| format!("channel-{i}")).collect();
    let r = mint(json!({"subscribe": many, "ttl": 60}), backend.clone()).await;
    assert_problem(&r, 400, "bad_request", "a token over 8 KiB");
    for sub in ["a\r\nb", "tab\there", ""] {
        let r = mint(
            json!({"subscribe": ["a"], "ttl": 60, "sub": sub}),
            backend.clone(),
        )
        .await;
        assert_problem(&r, 400, "bad_request", &format!("sub {sub:?}"));
    }
    // A caller 10 s past its expiry is still let in (clock skew), but mints nothing.
    let late = edgehub::auth::sign(&claims(&["*"], &["*"], Some(now_secs() - 10)), SECRET);
    let r = mint(json!({"subscribe": ["a"], "ttl": 60}), late).await;
    assert_problem(&r, 401, "token_expired", "a caller past its expiry");
    let r = mint(
        json!({"subscribe": ["a"], "ttl": 60, "sub": "user-7"}),
        backend,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // A header that names `alg` twice is refused whatever the last one says.
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let payload = serde_json::to_string(&claims(&["*"], &["*"], Some(now_secs() + 60))).unwrap();
    let input = format!(
        "{}.{}",
        b64(r#"{"alg":"none","alg":"HS256"}"#),
        b64(&payload)
    );
    let good = edgehub::auth::sign(&claims(&["*"], &["*"], Some(now_secs() + 60)), SECRET);
    // Sign the forged input with the real key: only the header is wrong.
    let forged = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        let sig =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{input}.{sig}")
    };
    assert_eq!(api.get("/channels/x", Some(&good)).await.status, 200);
    let r = api.get("/channels/x", Some(&forged)).await;
    assert_problem(&r, 401, "unauthorized", "alg named twice");
}

async fn input_readers_and_subscribers_of_a_new_channel_create_no_storage(_shared: Api) {
    let hub = Hub::start(HubOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(hub.base());
    let before = hub.stored_objects_and_alarms();
    let reader = token(&[], &["*"], 600);
    let mut open_ws = Vec::new();
    let mut open_sse = Vec::new();
    for n in 0..10 {
        let c = format!("public:{}", channel(&format!("nothing{n}")));
        assert_eq!(api.get(&format!("/channels/{c}"), None).await.status, 200);
        assert_eq!(
            api.get(&format!("/poll/{c}?since=0"), None).await.status,
            200
        );
        let r = api
            .send(
                crate::api::client()
                    .delete(format!("{}/channels/{c}/events", api.base))
                    .bearer_auth(admin()),
            )
            .await;
        assert_eq!(r.status, 204, "purge of a channel without events");
        open_ws.push(WsClient::subscribe(&api, &c, Some(0), None).await.0);
        open_ws.push(WsClient::subscribe(&api, &c, None, Some(&reader)).await.0);
        open_sse.push(SseStream::subscribe(&api, &c, Some(0), None).await);
        open_sse.push(SseStream::subscribe(&api, &c, None, Some(&reader)).await);
    }
    // Whatever the objects do in the background (mirror, alarms) has had time to happen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = hub.stored_objects_and_alarms();
    assert_eq!(
        after, before,
        "(objects with tables, alarms) after 10 channels were read and subscribed to, never \
         published"
    );

    // A socket's publish can be its channel's first write: it knows its channel's name.
    let c = format!("public:{}", channel("first"));
    let writer = token(&[&c], &[&c], 600);
    let (mut ws, head_at_start) = WsClient::subscribe(&api, &c, None, Some(&writer)).await;
    assert_eq!(head_at_start, 0);
    let mut sse = SseStream::subscribe(&api, &c, None, Some(&reader)).await;
    ws.send_json(&json!({"op": "publish", "data": "first", "ref": 1}))
        .await;
    let event = ws.next_json(WAIT).await;
    assert_eq!(
        (
            event["op"].as_str(),
            event["id"].as_u64(),
            event["channel"].as_str()
        ),
        (Some("event"), Some(1), Some(c.as_str()))
    );
    assert_eq!(event_ids(&sse.events_through(1, WAIT).await), vec![1]);
    api.await_mirror(&c, 1).await;
    let page = api.get(&format!("/poll/{c}?since=0"), None).await.json();
    assert_eq!(page["events"][0]["channel"], json!(c));
    let (objects, alarms) = hub.stored_objects_and_alarms();
    assert_eq!(objects, before.0 + 1, "the first publish stored");
    assert!(
        alarms > before.1,
        "and set the alarm (retention, the token's expiry)"
    );
    ws.close().await;
    for ws in open_ws {
        ws.close().await;
    }
    drop(open_sse);
    hub.cleanup().await;
}

async fn input_idempotency_keys_go_with_the_events_they_answered(_shared: Api) {
    let hub = Hub::start(HubOptions::with_vars(&[("RETAIN_EVENTS", "3")]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(hub.base());
    let c = channel("key-retention");
    let t = admin();
    for n in 1..=5 {
        assert_eq!(keyed(&api, &c, &format!("k-{n}"), &t).await, (201, vec![n]));
    }
    // Events 1 and 2 were pruned (3 retained): their keys went with them, so a retry stores
    // anew; keys of retained events still answer.
    assert_eq!(keyed(&api, &c, "k-1", &t).await, (201, vec![6]));
    assert_eq!(keyed(&api, &c, "k-5", &t).await, (200, vec![5]));
    // A purge drops every key with the events.
    let r = api
        .send(
            crate::api::client()
                .delete(format!("{}/channels/{c}/events", api.base))
                .bearer_auth(&t),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(keyed(&api, &c, "k-5", &t).await, (201, vec![7]));
    hub.cleanup().await;
}
