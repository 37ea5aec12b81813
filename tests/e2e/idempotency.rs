//! Idempotent publish: an `Idempotency-Key` retry (HTTP header or the WebSocket frame's
//! `idempotency_key`) gets the first answer and stores nothing; the same key with another body is
//! 422; keys are per channel and shared by both transports; concurrent retries store one event.
//! The 24 h key expiry cannot be waited for here; it is pruned by the alarm (see hub.rs).

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::api::{admin, channel, client, ids, token, Api, Resp};
use crate::publish::{assert_problem, head};
use crate::ws_client::{frame_ids, WsClient};
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(idempotency_retry_returns_the_first_answer_and_stores_nothing),
        case!(idempotency_key_reused_with_another_body_is_422_conflict),
        case!(idempotency_keys_are_per_channel_and_checked_at_the_door),
        case!(idempotency_ten_concurrent_retries_of_one_keyed_publish_store_one_event),
        case!(idempotency_ws_retry_with_the_same_key_gets_the_same_ack_and_no_event),
    ]
}

const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(800);

/// `POST /channels/{c}/events` with an `Idempotency-Key`, the body sent as these exact bytes.
pub async fn publish_keyed(api: &Api, c: &str, body: &str, key: &str, tok: &str) -> Resp {
    let req = client()
        .post(format!("{}/channels/{c}/events", api.base))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .bearer_auth(tok)
        .body(body.to_string());
    api.send(req).await
}

/// What `wrangler dev`'s proxy answers a POST when its connection to the runtime drops
/// mid-request: its fetch fails with "Network connection lost", and the proxy (which only
/// requeues GET and HEAD) answers this 503 whatever the cause. It happens under heavy local load
/// (1,000 sockets, 1,000 channel objects on a busy machine), and so does a connection to the
/// proxy itself that drops before any answer; see issue 18.
pub const DEV_PROXY_503: &str = "Your worker restarted mid-request";
/// How often a publish retries that answer, with the same idempotency key.
pub const DEV_PROXY_RETRIES: usize = 5;

/// `publish_keyed`, retried with the same key while the dev proxy answers `DEV_PROXY_503` or no
/// answer comes at all, as a client would: the key makes the retry store the event once.
/// Returns the last answer and how many retries it took.
pub async fn publish_keyed_retrying(
    api: &Api,
    c: &str,
    body: &str,
    key: &str,
    tok: &str,
) -> (Resp, usize) {
    let mut r = publish_keyed(api, c, body, key, tok).await;
    for retry in 0..DEV_PROXY_RETRIES {
        let lost = r.status == 0 || (r.status == 503 && r.text().contains(DEV_PROXY_503));
        if !lost {
            return (r, retry);
        }
        r = publish_keyed(api, c, body, key, tok).await;
    }
    (r, DEV_PROXY_RETRIES)
}

/// Every retained event of `c` once the mirror holds `n`.
async fn mirrored_events(api: &Api, c: &str, n: u64) -> Vec<Value> {
    assert_eq!(
        api.await_mirror(c, n).await,
        n,
        "mirror of {c} never reached {n}"
    );
    api.poll_all(c, 0, 1000, 5).await.0
}

async fn idempotency_retry_returns_the_first_answer_and_stores_nothing(api: Api) {
    let c = channel("idem");
    let tok = admin();
    let first = publish_keyed(&api, &c, r#"{"data":{"n":1}}"#, "order-7/try:1", &tok).await;
    assert_eq!(first.status, 201, "first keyed publish: {}", first.text());
    assert_eq!(ids(&first.json()), vec![1]);
    // Let the clock move on, so a retry that stored anew would show another time.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for n in 0..3 {
        let again = publish_keyed(&api, &c, r#"{"data":{"n":1}}"#, "order-7/try:1", &tok).await;
        assert_eq!(again.status, 200, "retry {n}: {}", again.text());
        assert_eq!(
            again.json(),
            first.json(),
            "retry {n} must answer exactly as the first publish (ids and time)"
        );
        assert!(
            again.content_type().starts_with("application/json"),
            "retry {n}: {}",
            again.content_type()
        );
    }
    assert_eq!(head(&api, &c).await, 1, "retries stored nothing");

    // A keyed batch: its retry returns every id of the first answer; an unkeyed publish after
    // it continues the counter, so the retries above really left no trace.
    let batch = r#"[{"data":"a"},{"type":"t.x","data":"b"},{"data":"c"}]"#;
    let stored = publish_keyed(&api, &c, batch, "batch-1", &tok).await;
    assert_eq!(stored.status, 201, "{}", stored.text());
    assert_eq!(ids(&stored.json()), vec![2, 3, 4]);
    let again = publish_keyed(&api, &c, batch, "batch-1", &tok).await;
    assert_eq!((again.status, again.json()), (200, stored.json()));
    let plain = api.publish(&c, &json!({"data": "plain"}), &tok).await;
    assert_eq!(ids(&plain.json()), vec![5], "{}", plain.text());

    let events = mirrored_events(&api, &c, 5).await;
    let seen: Vec<(u64, Value)> = events
        .iter()
        .map(|e| (e["id"].as_u64().unwrap_or(0), e["data"].clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, json!({"n": 1})),
            (2, json!("a")),
            (3, json!("b")),
            (4, json!("c")),
            (5, json!("plain")),
        ],
        "each keyed publish is stored once"
    );
    let time = first.json()["events"][0]["time"].clone();
    assert_eq!(
        events[0]["time"], time,
        "the stored time is the first answer's"
    );
}

async fn idempotency_key_reused_with_another_body_is_422_conflict(api: Api) {
    let c = channel("idemconflict");
    let tok = admin();
    let first = publish_keyed(&api, &c, r#"{"data":1}"#, "k-1", &tok).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let bodies = [
        (r#"{"data":2}"#, "other data"),
        (r#"{"type":"other","data":1}"#, "other type"),
        (
            r#"[{"data":1},{"data":1}]"#,
            "a batch around the same event",
        ),
    ];
    for (body, what) in bodies {
        let r = publish_keyed(&api, &c, body, "k-1", &tok).await;
        assert_problem(&r, 422, "idempotency_conflict", what);
    }
    // The conflict changed nothing: the first answer is still what a true retry gets.
    let again = publish_keyed(&api, &c, r#"{"data":1}"#, "k-1", &tok).await;
    assert_eq!((again.status, again.json()), (200, first.json()));
    assert_eq!(head(&api, &c).await, 1);
    assert_eq!(mirrored_events(&api, &c, 1).await.len(), 1);
}

async fn idempotency_keys_are_per_channel_and_checked_at_the_door(api: Api) {
    let (a, b) = (channel("idema"), channel("idemb"));
    let tok = admin();
    let on_a = publish_keyed(&api, &a, r#"{"data":"x"}"#, "shared-key", &tok).await;
    let on_b = publish_keyed(&api, &b, r#"{"data":"y"}"#, "shared-key", &tok).await;
    assert_eq!(on_a.status, 201, "{}", on_a.text());
    assert_eq!(
        on_b.status,
        201,
        "the same key on another channel is new: {}",
        on_b.text()
    );
    assert_eq!((ids(&on_a.json()), ids(&on_b.json())), (vec![1], vec![1]));

    let longest = "k".repeat(255);
    let r = publish_keyed(&api, &a, r#"{"data":"long"}"#, &longest, &tok).await;
    assert_eq!(r.status, 201, "a 255-character key is valid: {}", r.text());
    let symbols = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~09AZaz";
    let r = publish_keyed(&api, &a, r#"{"data":"sym"}"#, symbols, &tok).await;
    assert_eq!(r.status, 201, "every visible ASCII character: {}", r.text());

    let too_long = "k".repeat(256);
    for (key, what) in [
        (too_long.as_str(), "256 characters"),
        ("two words", "a space inside"),
    ] {
        let r = publish_keyed(&api, &a, r#"{"data":"bad"}"#, key, &tok).await;
        assert_problem(&r, 400, "bad_request", what);
    }
    // Header values that are not visible ASCII: tab inside, non-ASCII bytes.
    for (raw, what) in [(&b"a\tb"[..], "a tab"), ("é".as_bytes(), "non-ASCII")] {
        let value = reqwest::header::HeaderValue::from_bytes(raw).expect("header value");
        let req = client()
            .post(format!("{}/channels/{a}/events", api.base))
            .header("content-type", "application/json")
            .header("idempotency-key", value)
            .bearer_auth(&tok)
            .body(r#"{"data":"bad"}"#);
        assert_problem(&api.send(req).await, 400, "bad_request", what);
    }
    assert_eq!(head(&api, &a).await, 3, "refused keys stored nothing");

    // Auth comes first: a keyed publish without the right stores nothing and burns no key.
    let reader = token(&[], &[&a], 600);
    let r = publish_keyed(&api, &a, r#"{"data":"late"}"#, "late-key", &reader).await;
    assert_problem(&r, 403, "forbidden", "subscribe-only token");
    let r = publish_keyed(&api, &a, r#"{"data":"late"}"#, "late-key", &tok).await;
    assert_eq!((r.status, ids(&r.json())), (201, vec![4]), "{}", r.text());
}

async fn idempotency_ten_concurrent_retries_of_one_keyed_publish_store_one_event(api: Api) {
    let c = channel("idemrace");
    let tok = admin();
    let (mut watcher, _) = WsClient::subscribe(&api, &c, Some(0), Some(&tok)).await;
    for round in 0..3u64 {
        let body = json!({"data": {"round": round}}).to_string();
        let key = format!("race-{round}");
        let answers: Vec<Resp> =
            join_all((0..10).map(|_| publish_keyed(&api, &c, &body, &key, &tok))).await;
        let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        statuses.sort_unstable();
        let mut want = vec![200; 9];
        want.push(201);
        assert_eq!(
            statuses, want,
            "round {round}: one 201, nine 200: {answers:?}"
        );
        let first = answers[0].json();
        assert_eq!(ids(&first), vec![round + 1], "round {round}");
        for r in &answers {
            assert_eq!(r.json(), first, "round {round}: every answer is the same");
        }
    }
    assert_eq!(head(&api, &c).await, 3);
    let events = mirrored_events(&api, &c, 3).await;
    assert_eq!(events.len(), 3, "{events:?}");
    let frames = watcher.frames_through(3, WAIT).await;
    assert_eq!(frame_ids(&frames), vec![1, 2, 3], "one event frame per key");
    assert_eq!(watcher.next(QUIET).await, None, "and nothing after it");
    watcher.close().await;
}

async fn idempotency_ws_retry_with_the_same_key_gets_the_same_ack_and_no_event(api: Api) {
    let c = channel("idemws");
    let tok = token(&[&c], &[&c], 600);
    let (mut publisher, _) = WsClient::subscribe(&api, &c, None, Some(&tok)).await;
    let (mut watcher, _) = WsClient::subscribe(&api, &c, None, Some(&tok)).await;

    let frame = |r: u64, data: Value| json!({"op": "publish", "data": data, "ref": r, "idempotency_key": "ws-k1"});
    publisher.send_json(&frame(1, json!({"v": 1}))).await;
    let event = publisher.next_json(WAIT).await;
    assert_eq!(
        (&event["op"], &event["id"]),
        (&json!("event"), &json!(1)),
        "{event}"
    );
    assert_eq!(
        publisher.next_json(WAIT).await,
        json!({"op": "ack", "ref": 1, "id": 1})
    );
    assert_eq!(watcher.next_json(WAIT).await, event);

    for r in 2..=3 {
        publisher.send_json(&frame(r, json!({"v": 1}))).await;
        assert_eq!(
            publisher.next_json(WAIT).await,
            json!({"op": "ack", "ref": r, "id": 1}),
            "a retry is acked with the first id and no event frame before it"
        );
    }
    publisher.send_json(&frame(4, json!({"v": 2}))).await;
    let refused = publisher.next_json(WAIT).await;
    assert_eq!(
        (
            &refused["op"],
            &refused["status"],
            &refused["code"],
            &refused["ref"]
        ),
        (
            &json!("error"),
            &json!(422),
            &json!("idempotency_conflict"),
            &json!(4)
        ),
        "same key, other data: {refused}"
    );
    assert_eq!(
        watcher.next(QUIET).await,
        None,
        "no event for a retry or a conflict"
    );
    assert_eq!(publisher.next(QUIET).await, None);

    // One key space for both transports: the HTTP retry of the socket's publish is a replay,
    // and a socket retry of an HTTP-keyed publish gets the HTTP answer's id.
    let http = publish_keyed(&api, &c, r#"{"data":{"v":1}}"#, "ws-k1", &admin()).await;
    assert_eq!(
        (http.status, ids(&http.json())),
        (200, vec![1]),
        "{}",
        http.text()
    );
    let http = publish_keyed(&api, &c, r#"{"data":"h"}"#, "http-k2", &admin()).await;
    assert_eq!(
        (http.status, ids(&http.json())),
        (201, vec![2]),
        "{}",
        http.text()
    );
    assert_eq!(frame_ids(&watcher.frames_through(2, WAIT).await), vec![2]);
    assert_eq!(frame_ids(&publisher.frames_through(2, WAIT).await), vec![2]);
    publisher
        .send_json(&json!({"op": "publish", "data": "h", "idempotency_key": "http-k2"}))
        .await;
    assert_eq!(
        publisher.next_json(WAIT).await,
        json!({"op": "ack", "id": 2})
    );
    assert_eq!(watcher.next(QUIET).await, None);

    publisher
        .send_json(&json!({"op": "publish", "data": 0, "ref": 9, "idempotency_key": "a b"}))
        .await;
    let bad = publisher.next_json(WAIT).await;
    assert_eq!(
        (&bad["status"], &bad["code"], &bad["ref"]),
        (&json!(400), &json!("bad_request"), &json!(9))
    );

    assert_eq!(head(&api, &c).await, 2);
    assert_eq!(mirrored_events(&api, &c, 2).await.len(), 2);
    publisher.close().await;
    watcher.close().await;
}
