//! WebSocket: `ready`, replay and live `event` frames, the text ping answered `pong`, publishing
//! over the socket (own event frame, then the `ack`), every error frame with the socket still
//! usable after it, close code 4101 at token expiry, 426 without an upgrade, 401/403 at the door.

use std::time::{Duration, Instant};

use edgehub::auth::sign;
use serde_json::{json, Value};

use crate::api::{admin, channel, claims, ids, is_utc_millis, now_secs, token, Api};
use crate::harness::SECRET;
use crate::publish::head;
use crate::ws_client::{frame_ids, ws_path, Frame, WsClient};
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(ws_sends_ready_then_replay_then_live_and_answers_ping),
        case!(ws_publish_gets_its_own_event_frame_then_the_ack),
        case!(ws_bad_frames_get_error_frames_and_the_socket_stays_usable),
        case!(ws_publish_without_the_publish_right_is_a_403_frame),
        case!(ws_socket_is_closed_with_4101_when_its_token_expires),
    ]
}

const WAIT: Duration = Duration::from_secs(30);
const QUIET: Duration = Duration::from_millis(700);
/// The hub's default `MAX_DATA_BYTES`.
const MAX_DATA_BYTES: usize = 65536;

async fn publish(api: &Api, c: &str, body: Value) -> Vec<u64> {
    let r = api.publish(c, &body, &admin()).await;
    assert_eq!(r.status, 201, "publish {body}: {}", r.text());
    ids(&r.json())
}

async fn ws_sends_ready_then_replay_then_live_and_answers_ping(api: Api) {
    let c = channel("wsready");
    let tok = admin();
    let batch = json!([{"data": 1}, {"type": "t.x", "data": {"two": [2]}}, {"data": "3"}]);
    assert_eq!(publish(&api, &c, batch).await, vec![1, 2, 3]);

    let (mut ws, head) = WsClient::subscribe(&api, &c, Some(1), Some(&tok)).await;
    assert_eq!(head, 3, "ready carries the head");
    let frames = ws.frames_through(3, WAIT).await;
    assert_eq!(frame_ids(&frames), vec![2, 3], "replay after 1: {frames:?}");
    let (polled, _) = api.poll_all(&c, 1, 10, 2).await;
    for (frame, envelope) in frames.iter().zip(&polled) {
        let mut envelope = envelope.clone();
        envelope["op"] = json!("event");
        assert_eq!(frame, &envelope, "a WS event is the poll envelope plus op");
        assert!(
            is_utc_millis(frame["time"].as_str().unwrap_or("")),
            "{frame}"
        );
        assert_eq!(frame["channel"], json!(c));
    }
    assert_eq!(frames[0]["type"], json!("t.x"));

    assert!(ws.ping(WAIT).await, "the text ping must be answered pong");
    assert_eq!(ws.next(QUIET).await, None, "nothing else after the replay");

    assert_eq!(publish(&api, &c, json!({"data": "four"})).await, vec![4]);
    let live = ws.frames_through(4, WAIT).await;
    assert_eq!(frame_ids(&live), vec![4]);
    assert_eq!(live[0]["data"], json!("four"));

    // No cursor: ready with the head, then live events only.
    let (mut fresh, head) = WsClient::subscribe(&api, &c, None, Some(&tok)).await;
    assert_eq!(head, 4);
    assert_eq!(fresh.next(QUIET).await, None, "no replay without a cursor");
    assert_eq!(publish(&api, &c, json!({"data": 5})).await, vec![5]);
    assert_eq!(frame_ids(&fresh.frames_through(5, WAIT).await), vec![5]);
    assert_eq!(frame_ids(&ws.frames_through(5, WAIT).await), vec![5]);

    let (mut empty, head) =
        WsClient::subscribe(&api, &channel("wsempty"), Some(0), Some(&tok)).await;
    assert_eq!(head, 0, "a new channel's head");
    assert_eq!(
        empty.next(QUIET).await,
        None,
        "nothing to replay on a new channel"
    );
    for s in [ws, fresh, empty] {
        s.close().await;
    }
}

async fn ws_publish_gets_its_own_event_frame_then_the_ack(api: Api) {
    let c = channel("wspub");
    let (mut publisher, _) =
        WsClient::subscribe(&api, &c, None, Some(&token(&[&c], &[&c], 600))).await;
    let (mut watcher, _) = WsClient::subscribe(&api, &c, None, Some(&token(&[], &[&c], 600))).await;

    let sent = [
        (
            json!({"op": "publish", "type": "chat.msg", "data": {"text": "hi"}, "ref": "r-1"}),
            Some(json!("r-1")),
        ),
        (
            json!({"op": "publish", "data": [1, 2], "ref": 7}),
            Some(json!(7)),
        ),
        (
            json!({"op": "publish", "data": null, "ref": {"k": [1, "x"]}}),
            Some(json!({"k": [1, "x"]})),
        ),
        (json!({"op": "publish", "data": "no ref"}), None),
    ];
    for (n, (frame, reference)) in sent.iter().enumerate() {
        let id = n as u64 + 1;
        publisher.send_json(frame).await;
        let event = publisher.next_json(WAIT).await;
        assert_eq!(
            (
                &event["op"],
                &event["id"],
                &event["channel"],
                &event["data"]
            ),
            (&json!("event"), &json!(id), &json!(c), &frame["data"]),
            "the publisher's own event frame comes first: {event}"
        );
        let kind = frame.get("type").cloned().unwrap_or(json!("message"));
        assert_eq!(event["type"], kind);
        let ack = publisher.next_json(WAIT).await;
        let mut want = json!({"op": "ack", "id": id});
        if let Some(r) = reference {
            want["ref"] = r.clone();
        }
        assert_eq!(ack, want, "the ack echoes ref as sent");
        let seen = watcher.next_json(WAIT).await;
        assert_eq!(seen, event, "every subscriber gets the same frame");
    }
    let (polled, _) = api.poll_all(&c, 0, 10, 2).await;
    let datas: Vec<&Value> = polled.iter().map(|e| &e["data"]).collect();
    assert_eq!(
        datas,
        vec![
            &json!({"text": "hi"}),
            &json!([1, 2]),
            &Value::Null,
            &json!("no ref")
        ]
    );
    publisher.close().await;
    watcher.close().await;
}

/// A frame the hub must refuse: the frame, status, code, echoed `ref`, and what it is.
struct Refusal<'a>(&'a str, u16, Option<&'a str>, Option<Value>, &'a str);

const BAD: Option<&str> = Some("bad_request");

/// Waits for an error frame and checks it; then proves the socket still answers.
async fn assert_error(
    ws: &mut WsClient,
    status: u16,
    code: Option<&str>,
    reference: Option<Value>,
    what: &str,
) {
    let e = ws.next_json(WAIT).await;
    assert_eq!(
        (&e["op"], &e["status"]),
        (&json!("error"), &json!(status)),
        "{what}: {e}"
    );
    if let Some(code) = code {
        assert_eq!(e["code"], json!(code), "{what}: {e}");
    }
    assert!(e["detail"].is_string(), "{what}: {e}");
    assert_eq!(e.get("ref"), reference.as_ref(), "{what}: ref in {e}");
    assert!(ws.ping(WAIT).await, "{what}: the socket must stay usable");
}

async fn ws_bad_frames_get_error_frames_and_the_socket_stays_usable(api: Api) {
    let c = channel("wserr");
    let (mut ws, _) = WsClient::subscribe(&api, &c, None, Some(&token(&[&c], &[&c], 600))).await;
    let over = format!(
        r#"{{"op":"publish","data":"{}","ref":6}}"#,
        "x".repeat(MAX_DATA_BYTES - 1)
    );
    // (frame, status, code, ref echoed, what); a refused frame's `ref` is echoed when readable.
    let cases = [
        Refusal("nope{", 400, Some("invalid_json"), None, "not JSON"),
        Refusal(
            r#"{"op":"publish","data":1"#,
            400,
            Some("invalid_json"),
            None,
            "cut JSON",
        ),
        Refusal("[1]", 400, None, None, "a JSON array"),
        Refusal(
            r#"{"op":"subscribe","ref":1}"#,
            400,
            BAD,
            Some(json!(1)),
            "unknown op",
        ),
        Refusal(
            r#"{"data":1,"ref":"n"}"#,
            400,
            BAD,
            Some(json!("n")),
            "no op",
        ),
        Refusal(
            r#"{"op":"publish","ref":2}"#,
            400,
            BAD,
            Some(json!(2)),
            "no data",
        ),
        Refusal(
            r#"{"op":"publish","type":"a b","data":1,"ref":3}"#,
            400,
            BAD,
            Some(json!(3)),
            "bad type",
        ),
        Refusal(
            r#"{"op":"publish","type":5,"data":1,"ref":4}"#,
            400,
            BAD,
            Some(json!(4)),
            "type 5",
        ),
        Refusal(
            r#"{"op":"publish","data":1,"x":true,"ref":5}"#,
            400,
            BAD,
            Some(json!(5)),
            "unknown member",
        ),
        Refusal(
            r#"{"op":"cursor","id":"1","ref":7}"#,
            400,
            BAD,
            Some(json!(7)),
            "a cursor that is a string",
        ),
        Refusal(
            r#"{"op":"cursor","id":-1}"#,
            400,
            BAD,
            None,
            "a negative cursor",
        ),
        Refusal(
            r#"{"op":"cursor","id":1}"#,
            400,
            BAD,
            None,
            "a cursor ahead of the head",
        ),
        Refusal(
            &over,
            413,
            Some("too_large"),
            Some(json!(6)),
            "data over 65536 bytes",
        ),
    ];
    for Refusal(text, status, code, reference, what) in cases {
        ws.send_text(text).await;
        assert_error(&mut ws, status, code, reference, what).await;
    }
    ws.send_binary(br#"{"op":"publish","data":1}"#).await;
    assert_error(&mut ws, 400, Some("bad_request"), None, "a binary frame").await;
    // A good cursor report is taken silently: the next frame is the ping's pong.
    ws.send_text(r#"{"op":"cursor","id":0}"#).await;
    assert!(ws.ping(WAIT).await, "a cursor report gets no answer");
    assert_eq!(
        head(&api, &c).await,
        0,
        "no refused frame may store anything"
    );

    // Exactly at the limit is accepted, on the same socket.
    let at_limit = format!("\"{}\"", "x".repeat(MAX_DATA_BYTES - 2));
    ws.send_text(&format!(
        r#"{{"op":"publish","data":{at_limit},"ref":"ok"}}"#
    ))
    .await;
    let event = ws.next_json(WAIT).await;
    assert_eq!(
        (&event["op"], &event["id"]),
        (&json!("event"), &json!(1)),
        "at the limit"
    );
    assert_eq!(
        event["data"].as_str().map(str::len),
        Some(MAX_DATA_BYTES - 2)
    );
    assert_eq!(
        ws.next_json(WAIT).await,
        json!({"op": "ack", "ref": "ok", "id": 1})
    );
    ws.close().await;
}

async fn ws_publish_without_the_publish_right_is_a_403_frame(api: Api) {
    let c = channel("wsnopub");
    let public = format!("public:{}", channel("wsnopub"));
    let sockets = [
        (
            c.clone(),
            Some(token(&[], &[&c], 600)),
            "a subscribe-only token",
        ),
        (
            c.clone(),
            Some(token(&["other:*"], &[&c], 600)),
            "a publish right elsewhere",
        ),
        (public.clone(), None, "anonymous on a public channel"),
    ];
    for (ch, tok, what) in sockets {
        let (mut ws, _) = WsClient::subscribe(&api, &ch, None, tok.as_deref()).await;
        ws.send_json(&json!({"op": "publish", "data": 1, "ref": "x"}))
            .await;
        assert_error(&mut ws, 403, Some("forbidden"), Some(json!("x")), what).await;
        // Still subscribed: an HTTP publish reaches it.
        let id = publish(&api, &ch, json!({"data": what})).await[0];
        let got = ws.frames_through(id, WAIT).await;
        assert_eq!(frame_ids(&got), vec![id], "{what}: live after the refusal");
        ws.close().await;
    }
    assert_eq!(
        head(&api, &c).await,
        2,
        "only the two HTTP publishes were stored"
    );
}

async fn ws_socket_is_closed_with_4101_when_its_token_expires(api: Api) {
    let c = channel("wsexp");
    let exp = now_secs() + 5;
    let short = sign(&claims(&[&c], &[&c], Some(exp)), SECRET);
    let (mut by_header, _) = WsClient::subscribe(&api, &c, None, Some(&short)).await;
    let query = format!("{}&token={short}", ws_path(&c, Some(0)));
    let mut by_query = WsClient::open(&api, &query, None)
        .await
        .unwrap_or_else(|r| panic!("query token: {} {}", r.status, r.text()));
    assert_eq!(by_query.next_json(WAIT).await["op"], json!("ready"));
    // Usable until then.
    assert_eq!(publish(&api, &c, json!({"data": 1})).await, vec![1]);
    for ws in [&mut by_header, &mut by_query] {
        assert_eq!(frame_ids(&ws.frames_through(1, WAIT).await), vec![1]);
    }
    for (what, ws) in [
        ("header token", &mut by_header),
        ("query token", &mut by_query),
    ] {
        let started = Instant::now();
        let mut closed = None;
        while started.elapsed() < Duration::from_secs(60) && closed.is_none() {
            match ws.next(Duration::from_secs(1)).await {
                Some(Frame::Closed(c)) => closed = Some(c),
                Some(other) => panic!("{what}: unexpected frame before the close: {other:?}"),
                None => {}
            }
        }
        let when = now_secs();
        assert_eq!(
            closed,
            Some(Some((4101, "token expired".to_string()))),
            "{what}: the close at expiry (exp {exp}, now {when})"
        );
        // Closed when the token stops being accepted: exp plus 30 s of clock skew.
        assert!(
            when >= exp + 29,
            "{what}: closed at {when}, before exp {exp} plus the skew"
        );
    }
}
