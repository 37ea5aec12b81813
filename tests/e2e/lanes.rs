//! Many-channel lanes share (docs/API.md#stream-bridge, architecture.md#tap): the lanes of one
//! channel in one Worker isolate share one socket to its object, unless the connection may
//! publish there over a WebSocket. Connections from now, at the head and from older cursors, on
//! SSE and WebSocket, each get every event exactly once; the object counts the clients and the
//! sockets apart; a shared lane's publish is refused as its object would; when the connection
//! whose request carries the upstream leaves, another takes it over without loss or doubles;
//! when the last leaves, the upstream closes.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{admin, token, Api};
use crate::live::info;
use crate::sse_client::SseStream;
use crate::streams::{
    counts_become, cur, names, once, open_sse, open_ws, opening, pairs, publish_n, query, refuse,
    sse_pairs, sse_until, ws_until, Cursor, WAIT,
};
use crate::ws_client::WsClient;
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(stream_lanes_share_one_socket_per_channel_and_each_gets_every_event_once),
        case!(stream_lane_upstream_is_handed_over_when_its_connection_leaves),
        case!(stream_lane_sse_carriers_leaving_are_noticed),
    ]
}

/// `{"sse": 0, "ws": n}`: many-channel lanes count as WebSocket clients.
fn lanes(n: u64) -> Value {
    json!({"sse": 0, "ws": n})
}

/// The channel's `sockets` once they are `want` (or after `WAIT`).
async fn sockets_become(api: &Api, c: &str, want: Value) -> Value {
    let started = Instant::now();
    let mut last = Value::Null;
    for _ in 0..300 {
        last = info(api, c).await["sockets"].clone();
        if last == want || started.elapsed() > WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// A token that may subscribe only: its WebSocket lanes may share.
fn reader() -> String {
    token(&[], &["*"], 3600)
}

/// Opens a multi-channel WebSocket over `chans` (from `since`, else from now); returns it and
/// where it starts.
async fn ws_from(
    api: &Api,
    chans: &[String],
    since: Option<Cursor>,
    tok: &str,
) -> (Cursor, WsClient) {
    let q = query(chans);
    let path = match &since {
        Some(c) => format!("/ws?{q}&since={}", c.url()),
        None => format!("/ws?{q}"),
    };
    let (ws, ready) = open_ws(api, &path, Some(tok)).await;
    let heads: Vec<u64> = chans
        .iter()
        .map(|c| ready["heads"][c.as_str()].as_u64().unwrap_or(u64::MAX))
        .collect();
    (since.unwrap_or_else(|| cur(chans, &heads)), ws)
}

/// Opens a multi-channel SSE stream over `chans`, resumed from `last` if given; returns it and
/// where it starts (its opening id-only block).
async fn sse_from(api: &Api, chans: &[String], last: Option<Cursor>) -> (Cursor, SseStream) {
    let last = last.map(|c| c.text());
    let mut s = open_sse(api, &format!("/sse?{}", query(chans)), last.as_deref()).await;
    let start = Cursor::parse(&opening(&mut s).await);
    (start, s)
}

/// Six SSE connections and three WebSocket ones (a token that may only subscribe) on the same
/// two channels: from now, at the head, and from older cursors, so some join the upstream at
/// once and some after their own replay. One more WebSocket whose token may publish keeps its
/// own lanes. Each gets every event once; the object counts ten clients on two sockets; a
/// publish on a shared lane is refused naming its channel; when all leave, so do the sockets.
async fn stream_lanes_share_one_socket_per_channel_and_each_gets_every_event_once(api: Api) {
    let chans = names("lshare", 2);
    for c in &chans {
        publish_n(&api, c, 3).await;
    }
    let mut sse = vec![sse_from(&api, &chans, None).await];
    tokio::time::sleep(Duration::from_millis(300)).await;
    for last in [
        None,
        Some(cur(&chans, &[3, 3])),
        Some(cur(&chans, &[1, 0])),
        Some(cur(&chans, &[0, 2])),
        None,
    ] {
        sse.push(sse_from(&api, &chans, last).await);
    }
    let mut ws = Vec::new();
    for since in [None, Some(cur(&chans, &[2, 1])), None] {
        ws.push(ws_from(&api, &chans, since, &reader()).await);
    }
    let (publisher_from, mut publisher) = ws_from(&api, &chans, None, &admin()).await;
    for c in &chans {
        assert_eq!(
            counts_become(&api, c, lanes(10), WAIT).await,
            lanes(10),
            "{c}"
        );
        assert_eq!(
            sockets_become(&api, c, lanes(2)).await,
            lanes(2),
            "{c}: one upstream for the nine that share, one for the publisher's lane"
        );
    }

    let publish = json!({"op": "publish", "channel": chans[0], "data": 1, "ref": "r-seat"});
    let e = refuse(
        &mut ws[0].1,
        publish,
        403,
        "forbidden",
        "a shared lane's publish",
    )
    .await;
    assert_eq!(e["ref"], "r-seat", "{e}");

    for _ in 0..2 {
        for c in &chans {
            publish_n(&api, c, 10).await;
        }
    }
    let to = cur(&chans, &[23, 23]);
    for (k, (start, s)) in sse.iter_mut().enumerate() {
        let mut cursor = start.clone();
        let got = sse_until(s, &mut cursor, &to).await;
        once(
            &format!("SSE {k} from {}", start.text()),
            &sse_pairs(&got),
            start,
            &to,
        );
    }
    for (k, (start, w)) in ws.iter_mut().enumerate() {
        let got = pairs(&ws_until(w, &to).await);
        once(&format!("WS {k} from {}", start.text()), &got, start, &to);
    }
    let got = pairs(&ws_until(&mut publisher, &to).await);
    once("the publisher's WS", &got, &publisher_from, &to);
    for c in &chans {
        assert_eq!(sockets_become(&api, c, lanes(2)).await, lanes(2), "{c}");
    }

    drop((sse, ws, publisher));
    for c in &chans {
        assert_eq!(
            counts_become(&api, c, lanes(0), WAIT).await,
            lanes(0),
            "{c}"
        );
        assert_eq!(sockets_become(&api, c, lanes(0)).await, lanes(0), "{c}");
    }
}

/// The first connection's lanes (a WebSocket) carry the upstreams; another WebSocket and two
/// SSE connections share them. The first leaves while events flow: the next connection's
/// request opens new upstreams from where they stood, and the others get every event once.
/// Then that one leaves too, and the two SSE connections still get everything.
async fn stream_lane_upstream_is_handed_over_when_its_connection_leaves(api: Api) {
    hand_over(&api, "lhand", Carrier::Ws).await;
}

/// As above with SSE carriers, whose departure the runtime may never report to a request
/// that took an upstream over (it stops reading the stream without cancelling it): the
/// connection is let go once nothing it was sent has been taken for three heartbeats.
async fn stream_lane_sse_carriers_leaving_are_noticed(api: Api) {
    hand_over(&api, "lhandsse", Carrier::Sse).await;
}

#[derive(Clone, Copy)]
enum Carrier {
    Ws,
    Sse,
}

/// A connection of the kind that carries the upstreams in `hand_over`.
enum Carrying {
    Ws(WsClient),
    Sse(SseStream),
}

async fn carrier(api: &Api, chans: &[String], kind: Carrier) -> (Cursor, Carrying) {
    match kind {
        Carrier::Ws => {
            let (start, ws) = ws_from(api, chans, None, &reader()).await;
            (start, Carrying::Ws(ws))
        }
        Carrier::Sse => {
            let (start, s) = sse_from(api, chans, None).await;
            (start, Carrying::Sse(s))
        }
    }
}

async fn hand_over(api: &Api, prefix: &str, kind: Carrier) {
    let chans = names(prefix, 2);
    let (_, owner) = carrier(api, &chans, kind).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Seated in this order, so the next one takes over: then it leaves too.
    let (next_start, mut next) = carrier(api, &chans, kind).await;
    let mut sse = [
        sse_from(api, &chans, None).await,
        sse_from(api, &chans, None).await,
    ];
    for c in &chans {
        assert_eq!(counts_become(api, c, lanes(4), WAIT).await, lanes(4), "{c}");
        assert_eq!(sockets_become(api, c, lanes(1)).await, lanes(1), "{c}");
    }
    let mut heads = [0u64, 0];
    for (k, c) in chans.iter().enumerate() {
        heads[k] = *publish_n(api, c, 5).await.last().unwrap_or(&0);
    }
    drop(owner);
    let left = publish_until_counted(api, &chans, &mut heads, 3).await;
    for (k, c) in chans.iter().enumerate() {
        heads[k] = *publish_n(api, c, 10).await.last().unwrap_or(&0);
    }
    let to = cur(&chans, &heads);
    for (k, (start, s)) in sse.iter_mut().enumerate() {
        let mut cursor = start.clone();
        let got = sse_until(s, &mut cursor, &to).await;
        once(&format!("SSE {k}"), &sse_pairs(&got), start, &to);
    }
    let got = match &mut next {
        Carrying::Ws(ws) => pairs(&ws_until(ws, &to).await),
        Carrying::Sse(s) => sse_pairs(&sse_until(s, &mut next_start.clone(), &to).await),
    };
    once("the next carrier", &got, &next_start, &to);
    for c in &chans {
        assert_eq!(sockets_become(api, c, lanes(1)).await, lanes(1), "{c}");
    }

    // The new carrier leaves; the others go on.
    drop(next);
    let left_again = publish_until_counted(api, &chans, &mut heads, 2).await;
    for (k, c) in chans.iter().enumerate() {
        heads[k] = *publish_n(api, c, 5).await.last().unwrap_or(&0);
    }
    let from = to;
    let to = cur(&chans, &heads);
    for (k, (_, s)) in sse.iter_mut().enumerate() {
        let mut cursor = from.clone();
        let got = sse_pairs(&sse_until(s, &mut cursor, &to).await);
        once(
            &format!("SSE {k}, after the second hand-over"),
            &got,
            &from,
            &to,
        );
    }
    for c in &chans {
        assert_eq!(sockets_become(api, c, lanes(1)).await, lanes(1), "{c}");
    }
    eprintln!("e2e: lanes ({prefix}): left the count after {left:.1?}, then {left_again:.1?}");
}

/// Publishes one event on each channel at a time until the first channel counts `n` clients;
/// how long that took.
async fn publish_until_counted(
    api: &Api,
    chans: &[String],
    heads: &mut [u64; 2],
    n: u64,
) -> Duration {
    let started = Instant::now();
    for _ in 0..300 {
        for (k, c) in chans.iter().enumerate() {
            heads[k] = *publish_n(api, c, 1).await.last().unwrap_or(&0);
        }
        if info(api, &chans[0]).await["subscribers"] == lanes(n) {
            return started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the count never fell to {n} ({heads:?})");
}
