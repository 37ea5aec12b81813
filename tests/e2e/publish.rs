//! Publishing: ids are the channel's contiguous sequence under concurrency, batches are numbered
//! consecutively and are all-or-nothing, and every bad-input class gets its problem document
//! while the channel's head stays where it was.

use std::collections::HashMap;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::api::{admin, channel, ids, is_utc_millis, Api, Resp};
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(ids_are_contiguous_and_ordered_under_ten_concurrent_publishers),
        case!(batch_of_100_gets_consecutive_ids_and_101_is_refused_whole),
        case!(bad_channel_names_are_400),
        case!(bad_bodies_are_refused_and_leave_the_head_unchanged),
    ]
}

const PUBLISHERS: u64 = 10;
const PER_PUBLISHER: u64 = 250;

/// Asserts `r` is the problem document for `status` with stable `code`.
pub fn assert_problem(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: want {status}, got {} {}",
        r.status,
        r.text()
    );
    let ct = r.content_type();
    assert!(
        ct.starts_with("application/problem+json"),
        "{what}: content-type {ct:?}"
    );
    let p = r.json();
    assert_eq!(p["status"], json!(status), "{what}: problem {p}");
    assert_eq!(p["code"], json!(code), "{what}: problem {p}");
    let kind = p["type"].as_str().unwrap_or("");
    assert!(
        kind.starts_with("urn:edgehub:problem:"),
        "{what}: type {kind:?}"
    );
    assert!(
        p["title"].is_string() && p["detail"].is_string(),
        "{what}: problem {p}"
    );
}

/// The channel object's head, from `GET /channels/{c}`.
pub async fn head(api: &Api, c: &str) -> u64 {
    let r = api.info(c).await;
    assert_eq!(r.status, 200, "GET /channels/{c}: {}", r.text());
    r.json()["head"].as_u64().unwrap_or(u64::MAX)
}

async fn ids_are_contiguous_and_ordered_under_ten_concurrent_publishers(api: Api) {
    let c = channel("ids");
    let token = admin();
    let publisher = |p: u64| {
        let (api, c, token) = (api.clone(), c.clone(), token.clone());
        async move {
            let mut got = Vec::new();
            for i in 0..PER_PUBLISHER {
                let r = api
                    .publish(&c, &json!({"data": {"p": p, "i": i}}), &token)
                    .await;
                assert_eq!(r.status, 201, "publisher {p} event {i}: {}", r.text());
                let answer = r.json();
                assert_eq!(ids(&answer).len(), 1, "one event, one id: {answer}");
                got.push((answer["events"][0].clone(), p, i));
            }
            got
        }
    };
    let answers: Vec<(Value, u64, u64)> = join_all((0..PUBLISHERS).map(publisher)).await.concat();
    let total = PUBLISHERS * PER_PUBLISHER;

    let mut by_id: HashMap<u64, (Value, u64, u64)> = HashMap::new();
    for (ev, p, i) in &answers {
        let id = ev["id"].as_u64().unwrap_or(0);
        assert!(
            is_utc_millis(ev["time"].as_str().unwrap_or("")),
            "answer time: {ev}"
        );
        let dup = by_id.insert(id, (ev["time"].clone(), *p, *i));
        assert!(dup.is_none(), "id {id} was given out twice");
    }
    let mut all: Vec<u64> = by_id.keys().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=total).collect::<Vec<_>>(),
        "publish answers must hold exactly 1..={total}"
    );
    for p in 0..PUBLISHERS {
        let mine: Vec<u64> = answers
            .iter()
            .filter(|a| a.1 == p)
            .map(|a| a.0["id"].as_u64().unwrap_or(0))
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "publisher {p}'s ids went backwards: {mine:?}"
        );
    }

    assert_eq!(
        api.await_mirror(&c, total).await,
        total,
        "the mirror never reached {total}"
    );
    let (events, pages) = api.poll_all(&c, 0, 1000, 10).await;
    assert_eq!(pages.len(), 3, "2,500 events at limit 1000 are three pages");
    let polled: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        polled,
        (1..=total).collect::<Vec<_>>(),
        "poll must return 1..={total} in order"
    );
    let mut last_index: HashMap<u64, u64> = HashMap::new();
    for e in &events {
        let id = e["id"].as_u64().unwrap_or(0);
        let (time, p, i) = &by_id[&id];
        assert_eq!(
            e["data"],
            json!({"p": p, "i": i}),
            "event {id}'s data is not what its answer said"
        );
        assert_eq!(
            &e["time"], time,
            "event {id}'s time differs from its publish answer"
        );
        assert_eq!(e["channel"], json!(c), "event {id}'s channel");
        assert_eq!(e["type"], json!("message"), "event {id}'s default type");
        if let Some(prev) = last_index.insert(*p, *i) {
            assert!(prev < *i, "publisher {p}: index {i} polled after {prev}");
        }
    }
}

async fn batch_of_100_gets_consecutive_ids_and_101_is_refused_whole(api: Api) {
    let c = channel("batch");
    let token = admin();
    let first = api.publish(&c, &json!({"data": "first"}), &token).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(ids(&first.json()), vec![1]);

    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"type": "item", "data": {"n": i}}))
        .collect();
    let r = api.publish(&c, &Value::Array(batch), &token).await;
    assert_eq!(r.status, 201, "batch of 100: {}", r.text());
    let answer = r.json();
    assert_eq!(
        ids(&answer),
        (2..=101).collect::<Vec<u64>>(),
        "a batch gets consecutive ids: {answer}"
    );
    for ev in answer["events"].as_array().into_iter().flatten() {
        assert!(
            is_utc_millis(ev["time"].as_str().unwrap_or("")),
            "answer time: {ev}"
        );
    }
    assert_eq!(head(&api, &c).await, 101);

    let too_many: Vec<Value> = (0..101).map(|i| json!({"data": i})).collect();
    let r = api.publish(&c, &Value::Array(too_many), &token).await;
    crate::publish::assert_problem(&r, 413, "too_large", "batch of 101");
    assert_eq!(
        head(&api, &c).await,
        101,
        "a refused batch must store nothing"
    );

    assert_eq!(api.await_mirror(&c, 101).await, 101);
    let (events, _) = api.poll_all(&c, 1, 1000, 2).await;
    let polled: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(polled, (2..=101).collect::<Vec<u64>>());
    for (n, e) in events.iter().enumerate() {
        assert_eq!(e["type"], json!("item"));
        assert_eq!(e["data"], json!({"n": n}), "batch order must be kept");
    }
    let info = api.info(&c).await.json();
    assert_eq!(
        (info["earliest"].as_u64(), info["retained"].as_u64()),
        (Some(1), Some(101)),
        "{info}"
    );
}

async fn bad_channel_names_are_400(api: Api) {
    let token = admin();
    let long = "a".repeat(129);
    let names = [
        "a%2Fb",
        "%20x",
        "-leading-dash",
        ".dot",
        "a%20b",
        "caf%C3%A9",
        "a*b",
        "a%",
        long.as_str(),
    ];
    for name in names {
        let r = api.publish(name, &json!({"data": 1}), &token).await;
        assert_problem(&r, 400, "bad_request", &format!("publish to {name:?}"));
        let r = api
            .get(&format!("/poll/{name}?since=0"), Some(&token))
            .await;
        assert_problem(&r, 400, "bad_request", &format!("poll {name:?}"));
        let r = api.get(&format!("/channels/{name}"), Some(&token)).await;
        assert_problem(&r, 400, "bad_request", &format!("info {name:?}"));
    }
    // The longest legal name is fine.
    let longest = format!("{}{}", channel("max"), "x".repeat(128))
        .chars()
        .take(128)
        .collect::<String>();
    let r = api.publish(&longest, &json!({"data": 1}), &token).await;
    assert_eq!(r.status, 201, "a 128-character name is legal: {}", r.text());
}

async fn bad_bodies_are_refused_and_leave_the_head_unchanged(api: Api) {
    let c = channel("badbody");
    let token = admin();
    let r = api
        .publish(&c, &json!({"data": "x".repeat(65_534)}), &token)
        .await;
    assert_eq!(
        r.status,
        201,
        "data of exactly 65536 bytes serialised is allowed: {}",
        r.text()
    );
    assert_eq!(ids(&r.json()), vec![1]);

    let long_type = "t".repeat(65);
    let big = "x".repeat(65_535);
    let body_over_1mib: Vec<Value> = (0..20)
        .map(|_| json!({"data": "y".repeat(55_000)}))
        .collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("not JSON", b"{\"data\":".to_vec(), 400, "invalid_json"),
        ("empty body", Vec::new(), 400, "invalid_json"),
        ("no data", br#"{"type":"x"}"#.to_vec(), 400, "bad_request"),
        (
            "unknown field",
            br#"{"data":1,"extra":2}"#.to_vec(),
            400,
            "bad_request",
        ),
        ("empty batch", b"[]".to_vec(), 400, "bad_request"),
        ("element not an object", b"[1]".to_vec(), 400, "bad_request"),
        ("a scalar body", b"42".to_vec(), 400, "bad_request"),
        (
            "type not a string",
            br#"{"type":5,"data":1}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "type with a space",
            br#"{"type":"a b","data":1}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "type leading dash",
            br#"{"type":"-x","data":1}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "type empty",
            br#"{"type":"","data":1}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "type of 65",
            to_vec(&json!({"type": long_type, "data": 1})),
            400,
            "bad_request",
        ),
        (
            "one bad item in a batch",
            br#"[{"data":1},{"data":2,"type":"a b"},{"data":3}]"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "one non-object in a batch",
            br#"[{"data":1},2]"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "data over 64 KiB",
            to_vec(&json!({"data": big})),
            413,
            "too_large",
        ),
        (
            "oversized item in a batch",
            to_vec(&json!([{"data": 1}, {"data": big}])),
            413,
            "too_large",
        ),
        (
            "body over 1 MiB",
            to_vec(&Value::Array(body_over_1mib)),
            413,
            "too_large",
        ),
    ];
    for (what, body, status, code) in cases {
        let r = api
            .publish_raw(&c, Some("application/json"), body, Some(&token))
            .await;
        assert_problem(&r, status, code, what);
        assert_eq!(head(&api, &c).await, 1, "head moved after: {what}");
    }
    let r = api
        .publish_raw(
            &c,
            Some("text/plain"),
            br#"{"data":1}"#.to_vec(),
            Some(&token),
        )
        .await;
    assert_problem(&r, 415, "unsupported_media_type", "text/plain");
    assert_eq!(head(&api, &c).await, 1, "head moved after: text/plain");

    // Nothing was stored in between: the next event is 2, and the mirror holds exactly 1 and 2.
    let r = api.publish(&c, &json!({"data": "after"}), &token).await;
    assert_eq!(ids(&r.json()), vec![2], "{}", r.text());
    assert_eq!(api.await_mirror(&c, 2).await, 2);
    let (events, _) = api.poll_all(&c, 0, 100, 2).await;
    let polled: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(polled, vec![1, 2], "poll after the bad requests");
    assert_eq!(
        events.get(1).map(|e| e["data"].clone()),
        Some(json!("after"))
    );
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}
