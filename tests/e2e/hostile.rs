//! A hostile WebSocket client: binary and malformed frames, unknown ops, oversize data and an
//! oversize frame, a 1,000-frame flood. It gets error frames (or a close), the channel's object
//! is not reset (same `object.instance`), and the honest subscribers of the channel, WebSocket
//! and SSE, keep receiving every event in order, and nothing else.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{admin, channel, token, Api};
use crate::live::info;
use crate::sse_client::{event_ids, SseStream};
use crate::ws_client::{frame_ids, Frame, WsClient};
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![case!(
        ws_hostile_frames_and_a_flood_leave_the_object_and_other_subscribers_unharmed
    )]
}

const WAIT: Duration = Duration::from_secs(30);
const FLOOD: usize = 1000;
/// One frame in this many of the flood is a valid publish.
const VALID_EVERY: usize = 10;

/// What came back on the hostile socket: error frames by status, events, acks, and a close.
#[derive(Debug, Default)]
struct Tally {
    errors: Vec<u16>,
    events: usize,
    acks: usize,
    other: Vec<String>,
    closed: Option<Option<(u16, String)>>,
}

impl Tally {
    fn add(&mut self, frame: Frame) {
        match frame {
            Frame::Json(v) if v["op"] == "error" => {
                self.errors.push(v["status"].as_u64().unwrap_or(0) as u16)
            }
            Frame::Json(v) if v["op"] == "event" => self.events += 1,
            Frame::Json(v) if v["op"] == "ack" => self.acks += 1,
            Frame::Closed(c) => self.closed = Some(c),
            other => self.other.push(format!("{other:?}")),
        }
    }
    fn answers(&self) -> usize {
        self.errors.len() + self.events + self.acks
    }
}

/// Reads the hostile socket until `want` answers arrived, it closed, or `wait` passed.
async fn drain(ws: &mut WsClient, tally: &mut Tally, want: usize, wait: Duration) {
    let deadline = Instant::now() + wait;
    while tally.answers() < want && tally.closed.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next(left).await {
            Some(f) => tally.add(f),
            None => break,
        }
    }
}

/// The next answer on the hostile socket: an error frame's status, or the close.
async fn refusal(ws: &mut WsClient, what: &str) -> Result<u16, String> {
    match ws.next(WAIT).await {
        Some(Frame::Json(v)) if v["op"] == "error" => Ok(v["status"].as_u64().unwrap_or(0) as u16),
        Some(Frame::Closed(c)) => Err(format!("{what}: closed {c:?}")),
        other => panic!("{what}: want an error frame or a close, got {other:?}"),
    }
}

fn publish_frame(n: usize) -> String {
    json!({"op": "publish", "data": {"n": n}, "ref": n}).to_string()
}

async fn ws_hostile_frames_and_a_flood_leave_the_object_and_other_subscribers_unharmed(api: Api) {
    let c = channel("hostile");
    let instance = info(&api, &c).await["object"]["instance"].clone();
    let reader = token(&[], &[&c], 600);
    let (mut honest_ws, _) = WsClient::subscribe(&api, &c, Some(0), Some(&reader)).await;
    let mut honest_sse = SseStream::subscribe(&api, &c, Some(0), Some(&reader)).await;
    let writer = token(&[&c], &[&c], 600);
    let (mut hostile, _) = WsClient::subscribe(&api, &c, None, Some(&writer)).await;

    // One of each, each answered with its error frame, the socket still open.
    hostile.send_binary(&[0xff, 0x00, 0x7b, 0x22]).await;
    assert_eq!(refusal(&mut hostile, "binary").await, Ok(400));
    hostile.send_text("{\"op\":\"publish\",\"data\":").await;
    assert_eq!(refusal(&mut hostile, "malformed JSON").await, Ok(400));
    hostile.send_text(r#"{"op":"drop_channel","ref":1}"#).await;
    assert_eq!(refusal(&mut hostile, "unknown op").await, Ok(400));
    let data_70k = json!({"op": "publish", "data": "x".repeat(70_000)}).to_string();
    hostile.send_text(&data_70k).await;
    assert_eq!(refusal(&mut hostile, "70 KB data").await, Ok(413));
    assert!(
        hostile.ping(WAIT).await,
        "the hostile socket no longer answers ping"
    );

    // The flood: 1,000 frames as fast as the socket takes them, one in ten a valid publish.
    let junk = [
        "nope{".to_string(),
        r#"{"op":"publish"}"#.to_string(),
        r#"{"op":"subscribe","channel":"*"}"#.to_string(),
        r#"{"op":"publish","data":1,"type":"../../etc"}"#.to_string(),
        "[]".to_string(),
    ];
    let started = Instant::now();
    for i in 0..FLOOD {
        if i % VALID_EVERY == 0 {
            hostile.send_text(&publish_frame(i)).await;
        } else if i % 7 == 0 {
            hostile.send_binary(b"\x00\x01binary junk").await;
        } else {
            hostile.send_text(&junk[i % junk.len()]).await;
        }
    }
    let valid = FLOOD / VALID_EVERY;
    let mut tally = Tally::default();
    // Each junk frame gets an error; each valid publish its own event, then its ack.
    drain(
        &mut hostile,
        &mut tally,
        FLOOD + valid,
        Duration::from_secs(120),
    )
    .await;
    eprintln!(
        "hostile: flood of {FLOOD} frames answered in {:?}: {} errors, {} events, {} acks, closed {:?}",
        started.elapsed(),
        tally.errors.len(),
        tally.events,
        tally.acks,
        tally.closed
    );
    assert!(
        tally.other.is_empty(),
        "unexpected frames: {:?}",
        tally.other
    );
    assert!(tally.errors.iter().all(|s| *s == 400), "{:?}", tally.errors);
    if tally.closed.is_none() {
        assert_eq!((tally.errors.len(), tally.acks), (FLOOD - valid, valid));
    }
    hostile.close().await;

    // A 2 MB frame, on a socket of its own: an error frame or a close, nothing stored.
    let (mut big, _) = WsClient::subscribe(&api, &c, None, Some(&writer)).await;
    let frame_2mb = json!({"op": "publish", "data": "y".repeat(2 * 1024 * 1024)}).to_string();
    big.send_text(&frame_2mb).await;
    match refusal(&mut big, "2 MB frame").await {
        Ok(status) => assert_eq!(status, 413, "2 MB frame"),
        Err(closed) => eprintln!("hostile: {closed}"),
    }
    big.close().await;

    // Honest traffic after it all, then every subscriber must hold exactly 1..=head, in order.
    for n in 0..20 {
        let r = api
            .publish(&c, &json!({"data": {"after": n}}), &admin())
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let now = info(&api, &c).await;
    let head = now["head"].as_u64().unwrap();
    assert_eq!(
        now["object"]["instance"], instance,
        "the channel's object was reset"
    );
    let want: Vec<u64> = (1..=head).collect();
    let frames: Vec<Value> = honest_ws.frames_through(head, WAIT).await;
    assert!(
        frames.iter().all(|f| f["op"] == "event"),
        "the honest socket got {frames:?}"
    );
    assert_eq!(frame_ids(&frames), want, "honest WebSocket subscriber");
    let events = honest_sse.events_through(head, WAIT).await;
    assert_eq!(event_ids(&events), want, "honest SSE subscriber");
    if tally.closed.is_none() {
        assert_eq!(
            head as usize,
            tally.acks + 20,
            "stored = acknowledged + honest"
        );
    }
    honest_ws.close().await;
}
