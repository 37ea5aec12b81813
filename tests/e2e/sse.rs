//! Server-Sent Events: the stream's headers and first bytes, the exact framing of events,
//! heartbeats, resuming from `Last-Event-ID` or `?since=`, the end of a stream (token expiry,
//! `SSE_MAX_SECONDS`) and the refusals at the door. Read through `sse_client`'s WHATWG parser.

use std::time::{Duration, Instant};

use edgehub::auth::sign;
use serde_json::json;

use crate::api::{admin, channel, claims, ids, now_secs, Api};
use crate::harness::{Hub, HubOptions, SECRET};
use crate::publish::assert_problem;
use crate::sse_client::{event_ids, sse_path, SseStream};
use crate::sse_parser::Item;
use crate::{case, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(sse_stream_opens_at_once_and_frames_events_exactly),
        case!(sse_resumes_from_last_event_id_or_since_and_the_header_wins),
        case!(sse_sends_heartbeats_and_ends_when_the_token_expires),
        case_own_hub!(sse_stream_ends_after_its_lifetime_and_resumes_without_loss),
    ]
}

const WAIT: Duration = Duration::from_secs(30);
const PREAMBLE: &str = "retry: 2000\n: edgehub stream open\n\n";
const HEARTBEAT: &str = ": heartbeat\n\n";

/// Publishes a raw JSON body; returns the ids it got.
async fn publish_raw(api: &Api, c: &str, body: &str) -> Vec<u64> {
    let r = api
        .publish_raw(
            c,
            Some("application/json"),
            body.as_bytes().to_vec(),
            Some(&admin()),
        )
        .await;
    assert_eq!(r.status, 201, "publish {body}: {}", r.text());
    ids(&r.json())
}

/// `n` events `{"i": k}` in one batch.
async fn publish_batch(api: &Api, c: &str, n: u64) -> Vec<u64> {
    let batch: Vec<_> = (1..=n).map(|i| json!({"data": {"i": i}})).collect();
    let r = api.publish(c, &json!(batch), &admin()).await;
    assert_eq!(r.status, 201, "publish a batch of {n}: {}", r.text());
    ids(&r.json())
}

async fn sse_stream_opens_at_once_and_frames_events_exactly(api: Api) {
    let c = format!("public:{}", channel("sseframe"));
    let mut s = SseStream::subscribe(&api, &c, None, None).await;
    assert_eq!(
        s.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(
        s.header("cache-control").as_deref(),
        Some("no-cache, no-transform")
    );
    // The preamble comes before anything else, heartbeats included: it is sent at once.
    let first = s.next_item(Duration::from_secs(10)).await;
    assert_eq!(first, Some(Item::Comment(" edgehub stream open".into())));
    assert!(
        s.raw.starts_with(PREAMBLE.as_bytes()),
        "first bytes: {:?}",
        String::from_utf8_lossy(&s.raw)
    );
    assert_eq!(s.parser.retry, Some(2000));

    let bodies = [
        r#"{"data": { "z" : 1, "a": [true, null, "é"] }}"#,
        r#"{"type": "order.created", "data": "two\nlines"}"#,
        r#"{"type": "message", "data": 12345678901234567890123}"#,
        r#"{"data": null}"#,
    ];
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(publish_raw(&api, &c, body).await, vec![i as u64 + 1]);
    }
    let got = s.events_through(4, WAIT).await;
    let want = concat!(
        "id: 1\ndata: {\"z\":1,\"a\":[true,null,\"é\"]}\n\n",
        "id: 2\nevent: order.created\ndata: \"two\\nlines\"\n\n",
        "id: 3\ndata: 12345678901234567890123\n\n",
        "id: 4\ndata: null\n\n",
    );
    let wire = String::from_utf8_lossy(&s.raw).replace(HEARTBEAT, "");
    assert_eq!(
        wire,
        format!("{PREAMBLE}{want}"),
        "the exact bytes of the stream"
    );
    let kinds: Vec<&str> = got.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["message", "order.created", "message", "message"]);
    assert_eq!(event_ids(&got), vec![1, 2, 3, 4]);
    assert_eq!(got[1].json(), json!("two\nlines"));
}

async fn sse_resumes_from_last_event_id_or_since_and_the_header_wins(api: Api) {
    let c = channel("sseresume");
    let tok = admin();
    let bearer = format!("Bearer {tok}");
    assert_eq!(
        publish_batch(&api, &c, 10).await,
        (1..=10).collect::<Vec<_>>()
    );

    let mut by_since = SseStream::subscribe(&api, &c, Some(4), Some(&tok)).await;
    let got = by_since.events_through(10, WAIT).await;
    assert_eq!(event_ids(&got), (5..=10).collect::<Vec<_>>(), "?since=4");
    assert_eq!(got[0].json(), json!({"i": 5}));

    for (what, path) in [
        ("Last-Event-ID: 7", sse_path(&c, None)),
        ("Last-Event-ID: 7 and ?since=2", sse_path(&c, Some(2))),
    ] {
        let headers = [("authorization", bearer.as_str()), ("last-event-id", "7")];
        let mut s = match SseStream::open(&api, &path, &headers).await {
            Ok(s) => s,
            Err(r) => panic!("{what}: {} {}", r.status, r.text()),
        };
        let got = s.events_through(10, WAIT).await;
        assert_eq!(event_ids(&got), vec![8, 9, 10], "{what}");
    }

    // Up to date (since = head) and live-only streams: nothing until the next publish.
    let mut at_head = SseStream::subscribe(&api, &c, Some(10), Some(&tok)).await;
    let mut live = SseStream::subscribe(&api, &c, None, Some(&tok)).await;
    assert_eq!(
        publish_raw(&api, &c, r#"{"data": "eleven"}"#).await,
        vec![11]
    );
    for (what, s) in [("since=10", &mut at_head), ("no cursor", &mut live)] {
        let got = s.events_through(11, WAIT).await;
        assert_eq!(event_ids(&got), vec![11], "{what}: {got:?}");
        assert_eq!(s.parser.last_event_id, "11");
    }
    // Every live stream of the channel also got it.
    assert_eq!(
        event_ids(&by_since.events_through(11, WAIT).await),
        vec![11]
    );

    for bad in ["abc", "-1", "1.5", "9007199254740992"] {
        let headers = [("authorization", bearer.as_str()), ("last-event-id", bad)];
        match SseStream::open(&api, &sse_path(&c, None), &headers).await {
            Ok(_) => panic!("Last-Event-ID {bad:?} was accepted"),
            Err(r) => assert_problem(&r, 400, "bad_request", &format!("Last-Event-ID {bad:?}")),
        }
    }
    match SseStream::open(
        &api,
        &format!("/sse/{c}?since=x"),
        &[("authorization", &bearer)],
    )
    .await
    {
        Ok(_) => panic!("since=x was accepted"),
        Err(r) => assert_problem(&r, 400, "bad_request", "?since=x"),
    }
}

async fn sse_sends_heartbeats_and_ends_when_the_token_expires(api: Api) {
    let c = channel("sseexpiry");
    let exp = now_secs() + 6;
    let tok = sign(&claims(&[], &[&c], Some(exp)), SECRET);
    let mut s = SseStream::subscribe(&api, &c, Some(0), Some(&tok)).await;
    assert_eq!(publish_batch(&api, &c, 2).await, vec![1, 2]);
    // The stream ends when the token stops being accepted: exp plus 30 s of clock skew.
    let got = s.read_to_end(Duration::from_secs(60)).await;
    let lived = s.opened.elapsed();
    assert!(
        s.ended(),
        "the stream did not end within 60 s of a 6 s token"
    );
    assert_eq!(event_ids(&got), vec![1, 2]);
    assert!(
        now_secs() >= exp + 29 && lived < Duration::from_secs(50),
        "the stream ended {lived:?} after it opened; the token expired at {exp} (now {})",
        now_secs()
    );
    // HEARTBEAT_SECONDS is 2 on the shared hub: an idle ~6 s stream carries at least two.
    assert!(
        s.heartbeats >= 2,
        "heartbeats: {} in {lived:?}",
        s.heartbeats
    );
    let wire = String::from_utf8_lossy(&s.raw).into_owned();
    assert!(
        wire.ends_with("\n\n"),
        "the stream ended mid-event: {wire:?}"
    );
}

/// `SSE_MAX_SECONDS=3`: every stream ends cleanly by itself after ~3 s; resuming each time with
/// `Last-Event-ID` (as `EventSource` does) loses nothing and repeats nothing.
async fn sse_stream_ends_after_its_lifetime_and_resumes_without_loss(_shared: Api) {
    let opts = HubOptions::with_vars(&[("SSE_MAX_SECONDS", "3"), ("HEARTBEAT_SECONDS", "1")]);
    let hub = Hub::start(opts)
        .await
        .unwrap_or_else(|why| panic!("starting the hub: {why}"));
    let api = Api::new(hub.base());
    let c = format!("public:{}", channel("sselife"));
    const FIRST: u64 = 5;
    const LATER: u64 = 60;
    assert_eq!(publish_batch(&api, &c, FIRST).await.len(), FIRST as usize);

    let publisher = {
        let (api, c) = (api.clone(), c.clone());
        tokio::spawn(async move {
            // Idle first, so the first stream carries heartbeats; then one event per 100 ms.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            for i in 1..=LATER {
                let body = format!(r#"{{"data": {{"later": {i}}}}}"#);
                assert_eq!(publish_raw(&api, &c, &body).await, vec![FIRST + i]);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut seen: Vec<u64> = Vec::new();
    let mut lifetimes = Vec::new();
    let mut heartbeats = 0;
    let started = Instant::now();
    let mut s = SseStream::subscribe(&api, &c, Some(0), None).await;
    for _ in 0..12 {
        let got = s.read_to_end(Duration::from_secs(15)).await;
        assert!(
            s.ended(),
            "stream {} did not end by itself within 15 s",
            lifetimes.len() + 1
        );
        lifetimes.push(s.opened.elapsed());
        heartbeats += s.heartbeats;
        assert!(String::from_utf8_lossy(&s.raw).starts_with(PREAMBLE));
        seen.extend(event_ids(&got));
        if seen.last() == Some(&(FIRST + LATER)) || started.elapsed() > Duration::from_secs(90) {
            break;
        }
        let last = seen.last().map_or_else(|| "0".to_string(), u64::to_string);
        if !got.is_empty() {
            assert_eq!(s.parser.last_event_id, last, "the parser's last event id");
        }
        let headers = [("last-event-id", last.as_str())];
        s = SseStream::open(&api, &sse_path(&c, None), &headers)
            .await
            .unwrap_or_else(|r| panic!("resuming after {last}: {} {}", r.status, r.text()));
    }
    publisher.await.expect("the publisher failed");
    assert_eq!(
        seen,
        (1..=FIRST + LATER).collect::<Vec<_>>(),
        "ids across {} streams",
        lifetimes.len()
    );
    assert!(
        lifetimes.len() >= 2,
        "the streams must have ended and resumed: {lifetimes:?}"
    );
    for (i, l) in lifetimes.iter().enumerate() {
        assert!(
            *l >= Duration::from_millis(2500) && *l <= Duration::from_secs(8),
            "stream {} lived {l:?}; SSE_MAX_SECONDS is 3 ({lifetimes:?})",
            i + 1
        );
    }
    assert!(
        heartbeats >= 1,
        "no heartbeat in {lifetimes:?} with HEARTBEAT_SECONDS=1"
    );
    hub.cleanup().await;
}
