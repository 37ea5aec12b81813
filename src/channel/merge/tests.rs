use super::*;
use crate::protocol::many::parse_many_client;
use crate::protocol::publish::PublishLimits;
use crate::protocol::stream::StreamCursor;
use crate::protocol::ws::{ack_frame, event_frame, gap_frame, ready_frame as v1_ready};
use proptest::prelude::*;

const WINDOW: usize = 4000;
const LIMITS: PublishLimits = PublishLimits {
    max_data_bytes: 1000,
    max_batch: 1,
    max_depth: 8,
};

fn name(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

fn set(names: &[&str]) -> ChannelSet {
    let q: Vec<String> = names.iter().map(|n| format!("channel={n}")).collect();
    ChannelSet::parse(&q.join("&"), 100).unwrap()
}

fn merge(face: Face, names: &[&str], since: Option<&str>) -> (Merge, Vec<Step>) {
    let s = set(names);
    let since = since.map(|t| StreamSince::parse(t, &s).unwrap());
    Merge::new(face, &s, since.as_ref(), WINDOW, 15, 3, 0)
}

fn event(channel: &str, id: u64, data: &str) -> String {
    event_frame(&format!(
        "{{\"id\":{id},\"channel\":\"{channel}\",\"type\":\"message\",\"data\":{data},\"time\":\"t\"}}"
    ))
}

fn texts(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Client(out) => Some(out.text.clone()),
            _ => None,
        })
        .collect()
}

fn client(m: &mut Merge, text: &str) -> Vec<Step> {
    let frame = parse_many_client(text, LIMITS).unwrap();
    m.client(frame, 0)
}

#[test]
fn nothing_goes_out_before_every_lane_is_live_then_the_start_first() {
    let (mut m, opens) = merge(Face::Sse, &["a", "b"], Some("a=3"));
    assert_eq!(
        opens,
        vec![
            Step::Open {
                lane: LaneId(0),
                channel: name("a"),
                since: Some(3)
            },
            Step::Open {
                lane: LaneId(1),
                channel: name("b"),
                since: None
            },
        ]
    );
    assert!(m.upstream(LaneId(0), &v1_ready(5, 1000, 15), 0).is_empty());
    assert!(m.upstream(LaneId(0), &event("a", 4, "1"), 0).is_empty());
    let steps = m.upstream(LaneId(1), &v1_ready(9, 1000, 15), 0);
    // b started from now on: its head; a at its cursor until its event went out.
    assert_eq!(
        texts(&steps),
        vec![
            "id: a=3,b=9\n\n".to_string(),
            "id: a=4,b=9\ndata: {\"id\":4,\"channel\":\"a\",\"type\":\"message\",\"data\":1,\"time\":\"t\"}\n\n"
                .to_string()
        ]
    );
    let gap = m.upstream(LaneId(1), &gap_frame(9, 12), 0);
    assert_eq!(
        texts(&gap),
        vec!["event: gap\ndata: {\"channel\":\"b\",\"requested\":9,\"earliest\":12}\n\n"]
    );
    // SSE streams never publish: an ack would be a stray, and is dropped.
    assert!(m.upstream(LaneId(1), &ack_frame(None, 1), 0).is_empty());
}

#[test]
fn ws_ready_names_every_head_and_frames_name_their_channel() {
    let (mut m, _) = merge(Face::Ws, &["a", "b"], None);
    m.upstream(LaneId(0), &v1_ready(2, 1000, 15), 0);
    let steps = m.upstream(LaneId(1), &v1_ready(7, 1000, 15), 0);
    assert_eq!(
        texts(&steps),
        vec![format!(
            "{{\"op\":\"ready\",\"heads\":{{\"a\":2,\"b\":7}},\"window\":{WINDOW},\"heartbeat\":15}}"
        )]
    );
    let e = event("b", 8, "{}");
    assert_eq!(texts(&m.upstream(LaneId(1), &e, 0)), vec![e]);
    assert_eq!(
        texts(&m.upstream(LaneId(0), &ack_frame(Some("1"), 3), 0)),
        vec![r#"{"op":"ack","channel":"a","ref":1,"id":3}"#]
    );
    assert_eq!(m.cursor(), "a=2,b=8");
}

#[test]
fn the_set_changes_without_reconnecting() {
    let (mut m, _) = merge(Face::Ws, &["a"], None);
    m.upstream(LaneId(0), &v1_ready(0, 1000, 15), 0);
    let steps = client(&mut m, r#"{"op":"subscribe","channel":"b","since":0}"#);
    assert_eq!(
        steps,
        vec![Step::Open {
            lane: LaneId(1),
            channel: name("b"),
            since: Some(0)
        }]
    );
    // A publish before `subscribed` is refused: the lane is not live yet.
    let early = client(
        &mut m,
        r#"{"op":"publish","channel":"b","data":1,"ref":"r"}"#,
    );
    assert!(texts(&early)[0].contains("\"status\":400,"));
    assert!(
        texts(&early)[0].ends_with(",\"ref\":\"r\"}"),
        "the ref is echoed"
    );
    assert_eq!(
        texts(&m.upstream(LaneId(1), &v1_ready(4, 1000, 15), 0)),
        vec![r#"{"op":"subscribed","channel":"b","head":4}"#]
    );
    m.upstream(LaneId(1), &event("b", 1, "1"), 0);
    // Twice: nothing changes, answered with the position.
    assert_eq!(
        texts(&client(&mut m, r#"{"op":"subscribe","channel":"b"}"#)),
        vec![r#"{"op":"subscribed","channel":"b","head":1}"#]
    );
    let publish = client(&mut m, r#"{"op":"publish","channel":"b","data":1}"#);
    assert_eq!(
        publish,
        vec![Step::Upstream(
            LaneId(1),
            r#"{"data":1,"op":"publish"}"#.into()
        )]
    );
    let steps = client(&mut m, r#"{"op":"unsubscribe","channel":"b"}"#);
    assert_eq!(steps[0], Step::Close(LaneId(1)));
    assert_eq!(
        texts(&steps),
        vec![r#"{"op":"unsubscribed","channel":"b"}"#]
    );
    // A late frame of the dropped lane, and its close, change nothing.
    assert!(m.upstream(LaneId(1), &event("b", 2, "1"), 0).is_empty());
    assert!(m.upstream_closed(LaneId(1), 1000).is_empty());
    assert_eq!(m.cursor(), "a=0");
    // Subscribed again: a new lane.
    let again = client(&mut m, r#"{"op":"subscribe","channel":"b"}"#);
    assert!(matches!(
        again[0],
        Step::Open {
            lane: LaneId(2),
            ..
        }
    ));
    // Unsubscribing what is not there is answered too.
    assert_eq!(
        texts(&client(&mut m, r#"{"op":"unsubscribe","channel":"zz"}"#)),
        vec![r#"{"op":"unsubscribed","channel":"zz"}"#]
    );
}

#[test]
fn the_channel_limit_holds_for_subscribes() {
    let (mut m, _) = merge(Face::Ws, &["a", "b", "c"], None);
    for lane in 0..3 {
        m.upstream(LaneId(lane), &v1_ready(0, 1000, 15), 0);
    }
    let refused = texts(&client(&mut m, r#"{"op":"subscribe","channel":"d"}"#));
    assert!(refused[0].starts_with(r#"{"op":"error","channel":"d","status":400,"#));
    let failed = m.open_failed(LaneId(9), Error::Unavailable("x".into()), 0);
    assert!(failed.is_empty(), "an unknown lane");
}

#[test]
fn a_lane_that_ends_ends_the_connection_with_its_meaning() {
    for (code, want) in [
        (4001, CloseCode::TooSlow),
        (4101, CloseCode::TokenExpired),
        (1006, CloseCode::Reconnect),
        (1000, CloseCode::Reconnect),
    ] {
        let (mut m, _) = merge(Face::Ws, &["a", "b"], None);
        assert_eq!(m.upstream_closed(LaneId(1), code), vec![Step::End(want)]);
        assert!(m.ended());
        assert!(m.upstream(LaneId(0), &v1_ready(0, 1, 15), 0).is_empty());
        assert!(m.upstream_closed(LaneId(0), code).is_empty(), "once");
    }
}

#[test]
fn ws_reports_move_the_objects_cursor_and_free_the_window() {
    let (mut m, _) = merge(Face::Ws, &["a", "b"], Some("0"));
    m.upstream(LaneId(0), &v1_ready(0, 1000, 15), 0);
    m.upstream(LaneId(1), &v1_ready(0, 1000, 15), 0);
    let big = format!("\"{}\"", "x".repeat(900));
    for id in 1..=4 {
        assert_eq!(
            texts(&m.upstream(LaneId(0), &event("a", id, &big), 0)).len(),
            1
        );
    }
    // Over the window (4 × ~960 bytes + 1 more), but nothing stalls before a second passes.
    assert_eq!(
        texts(&m.upstream(LaneId(0), &event("a", 5, &big), 10)).len(),
        1
    );
    assert!(!m.stalled(999));
    let ahead = texts(&client(&mut m, r#"{"op":"cursor","channel":"a","id":6}"#));
    assert!(ahead[0].contains("ahead"), "{ahead:?}");
    let report = client(&mut m, r#"{"op":"cursor","channel":"a","id":4}"#);
    assert_eq!(
        report,
        vec![Step::Upstream(
            LaneId(0),
            r#"{"op":"cursor","id":4}"#.into()
        )]
    );
    assert!(client(&mut m, r#"{"op":"cursor","channel":"a","id":3}"#).is_empty());
    assert!(!m.stalled(5000), "confirmed back under the window");
    // Silent since its report at 0: the frame that takes it over the window ends it.
    for id in 6..=8 {
        assert_eq!(
            texts(&m.upstream(LaneId(0), &event("a", id, &big), 6000)).len(),
            1
        );
    }
    assert_eq!(
        m.upstream(LaneId(0), &event("a", 9, &big), 6000),
        vec![Step::End(CloseCode::TooSlow)]
    );
    assert!(m
        .upstream(LaneId(0), &event("a", 10, &big), 6000)
        .is_empty());
}

#[test]
fn sse_takes_are_reported_a_quarter_window_at_a_time() {
    let (mut m, _) = merge(Face::Sse, &["a"], Some("0"));
    m.upstream(LaneId(0), &v1_ready(0, 4000, 15), 0);
    let frame = event("a", 1, &format!("\"{}\"", "x".repeat(400)));
    let mut reports = Vec::new();
    for id in 1..=10u64 {
        let text = frame.replace("\"id\":1,", &format!("\"id\":{id},"));
        let steps = m.upstream(LaneId(0), &text, 0);
        let Some(Step::Client(out)) = steps.first() else {
            panic!("{steps:?}")
        };
        assert_eq!(out.confirms.map(|c| c.1), Some(id));
        for step in m.took(out.text.len(), out.confirms, 0) {
            reports.push(step);
        }
    }
    // ~470-byte frames, a report every 1000 bytes: after the 3rd, 6th and 9th.
    let ids: Vec<String> = reports
        .iter()
        .map(|s| match s {
            Step::Upstream(LaneId(0), text) => text.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            r#"{"op":"cursor","id":3}"#,
            r#"{"op":"cursor","id":6}"#,
            r#"{"op":"cursor","id":9}"#
        ]
    );
}

#[test]
fn an_sse_client_that_stops_taking_is_let_go() {
    let (mut m, _) = merge(Face::Sse, &["a"], Some("0"));
    m.upstream(LaneId(0), &v1_ready(0, 100_000, 15), 0);
    let big = format!("\"{}\"", "x".repeat(3000));
    assert_eq!(
        texts(&m.upstream(LaneId(0), &event("a", 1, &big), 0)).len(),
        1
    );
    assert_eq!(
        texts(&m.upstream(LaneId(0), &event("a", 2, &big), 500)).len(),
        1
    );
    assert_eq!(
        m.upstream(LaneId(0), &event("a", 3, &big), 1000),
        vec![Step::End(CloseCode::TooSlow)]
    );
}

proptest! {
    /// However the lanes' frames interleave, each channel's events reach the client once and
    /// in order, and every SSE id is a stream cursor that resumes exactly after what was sent.
    #[test]
    fn interleaved_lanes_keep_each_channel_in_order(
        order in prop::collection::vec(0usize..3, 0..60),
        readies_first in any::<bool>(),
    ) {
        let (mut m, _) = merge(Face::Sse, &["a", "b", "c"], Some("a=0,b=5"));
        let names = ["a", "b", "c"];
        let mut next = [1u64, 6, 11];
        let mut out = Vec::new();
        if readies_first {
            for (lane, head) in [(0u32, 0u64), (1, 5), (2, 10)] {
                out.extend(texts(&m.upstream(LaneId(lane), &v1_ready(head, 1000, 15), 0)));
            }
        } else {
            out.extend(texts(&m.upstream(LaneId(2), &v1_ready(10, 1000, 15), 0)));
        }
        for lane in &order {
            let id = next[*lane];
            next[*lane] += 1;
            if readies_first || *lane == 2 {
                out.extend(texts(&m.upstream(LaneId(*lane as u32), &event(names[*lane], id, "0"), 0)));
            }
        }
        if !readies_first {
            out.extend(texts(&m.upstream(LaneId(0), &v1_ready(0, 1000, 15), 0)));
            out.extend(texts(&m.upstream(LaneId(1), &v1_ready(5, 1000, 15), 0)));
        }
        prop_assert!(out[0].starts_with("id: a=0,b=5,c=10\n\n"), "{:?}", out.first());
        let mut seen: [Vec<u64>; 3] = Default::default();
        for block in &out[1..] {
            let cursor = block.strip_prefix("id: ").and_then(|r| r.split('\n').next()).unwrap();
            let cursor = StreamCursor::parse(cursor).unwrap();
            let data = block.split("data: ").nth(1).unwrap().trim_end();
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            let lane = names.iter().position(|n| *n == v["channel"]).unwrap();
            let id = v["id"].as_u64().unwrap();
            seen[lane].push(id);
            prop_assert_eq!(cursor.get(&name(names[lane])), Some(id));
        }
        let starts = [1u64, 6, 11];
        for lane in 0..3 {
            let want: Vec<u64> = (starts[lane]..next[lane]).collect();
            if readies_first || lane == 2 {
                prop_assert_eq!(&seen[lane], &want);
            }
        }
    }
}

#[test]
fn presence_frames_pass_as_they_are_and_become_id_less_sse_events() {
    let sync = presence::sync(&name("b"), [("ada", None)].into_iter());
    let frame = presence::ws(&sync);
    for face in [Face::Ws, Face::Sse] {
        let (mut m, _) = merge(face, &["a", "b"], None);
        assert!(m.upstream(LaneId(1), &v1_ready(2, 1000, 15), 0).is_empty());
        assert!(
            m.upstream(LaneId(1), &frame, 0).is_empty(),
            "held to the start"
        );
        let steps = m.upstream(LaneId(0), &v1_ready(7, 1000, 15), 0);
        let want = match face {
            Face::Ws => frame.clone(),
            Face::Sse => format!("event: presence\ndata: {sync}\n\n"),
        };
        assert_eq!(texts(&steps).get(1), Some(&want), "{face:?}");
        assert_eq!(texts(&steps).len(), 2, "{face:?}: the start, then the sync");
    }
}
