//! One upstream per isolate (`docs/architecture.md#tap`): plain SSE subscribers of a channel
//! share one socket to its object. Subscribers at every cursor get each event exactly once
//! across the seam between their own replay and the shared stream; when the subscriber whose
//! request holds the shared socket leaves, another takes it over and nothing is lost or
//! doubled; the channel's count stays the count of clients.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{admin, channel, Api};
use crate::harness::{Hub, HubOptions, SHARED_HEARTBEAT_SECONDS};
use crate::live::info;
use crate::slow::{own_hub, publish_padded, stalled, RETAIN_ALL};
use crate::sse_client::{event_ids, SseStream};
use crate::{case, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(tap_subscribers_at_every_cursor_get_each_event_once),
        case!(tap_owner_leaving_hands_the_upstream_over_without_loss_or_doubles),
        case_own_hub!(tap_owner_let_go_as_too_slow_leaves_the_others_whole_and_the_count_true),
        case_own_hub!(tap_take_over_refused_ends_every_member_and_each_resumes_once),
        case_own_hub!(tap_take_over_that_cannot_start_is_tried_again_three_times),
    ]
}

const WAIT: Duration = Duration::from_secs(30);

async fn publish(api: &Api, c: &str, i: u64) {
    let r = api.publish(c, &json!({"data": {"i": i}}), &admin()).await;
    assert_eq!(r.status, 201, "publish {i}: {}", r.text());
}

async fn sse_count(api: &Api, c: &str) -> Value {
    info(api, c).await["subscribers"]["sse"].clone()
}

/// Subscribers from nothing, from the head, from old cursors and from "now", some opening
/// while events flow: each gets exactly the ids after its cursor, in order.
async fn tap_subscribers_at_every_cursor_get_each_event_once(api: Api) {
    let c = format!("public:{}", channel("tapseam"));
    for i in 1..=20 {
        publish(&api, &c, i).await;
    }
    let mut first = SseStream::subscribe(&api, &c, None, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut opened = vec![
        (5, SseStream::subscribe(&api, &c, Some(5), None).await),
        (20, SseStream::subscribe(&api, &c, Some(20), None).await),
        (20, SseStream::subscribe(&api, &c, None, None).await),
        (0, SseStream::subscribe(&api, &c, Some(0), None).await),
    ];
    for i in 21..=40 {
        publish(&api, &c, i).await;
        if i % 5 == 0 {
            let since = i - 13;
            opened.push((
                since,
                SseStream::subscribe(&api, &c, Some(since), None).await,
            ));
        }
    }
    for i in 41..=50 {
        publish(&api, &c, i).await;
    }
    assert_eq!(
        event_ids(&first.events_through(50, WAIT).await),
        (21..=50).collect::<Vec<_>>(),
        "the first subscriber (from now on)"
    );
    for (since, s) in &mut opened {
        let want: Vec<u64> = (*since + 1..=50).collect();
        assert_eq!(
            event_ids(&s.events_through(50, WAIT).await),
            want,
            "since {since}"
        );
    }
    assert_eq!(sse_count(&api, &c).await, json!(1 + opened.len()));
}

/// The first subscriber's request opens the shared socket; it leaves while events flow. The
/// others go on without a gap or a double, and the count falls to theirs.
async fn tap_owner_leaving_hands_the_upstream_over_without_loss_or_doubles(api: Api) {
    let c = format!("public:{}", channel("taphandover"));
    let owner = SseStream::subscribe(&api, &c, None, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(SseStream::subscribe(&api, &c, None, None).await);
    }
    assert_eq!(sse_count(&api, &c).await, json!(4));
    for i in 1..=5 {
        publish(&api, &c, i).await;
    }
    drop(owner);
    // Events go on while the runtime notices the owner's client is gone (at a failed write)
    // and another member's request opens a new upstream from where the tap stood.
    let started = Instant::now();
    let mut n = 5;
    let mut left = None;
    while n < 200 && started.elapsed() < Duration::from_secs(60) {
        n += 1;
        publish(&api, &c, n).await;
        if sse_count(&api, &c).await == json!(3) {
            left = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = left.unwrap_or_else(|| panic!("the owner never left the count ({n} events)"));
    let last = n + 10;
    for i in n + 1..=last {
        publish(&api, &c, i).await;
    }
    for (k, s) in others.iter_mut().enumerate() {
        assert_eq!(
            event_ids(&s.events_through(last, WAIT).await),
            (1..=last).collect::<Vec<_>>(),
            "member {k}"
        );
    }
    // And once more: the new owner leaves too.
    others.remove(0);
    others.remove(0);
    // Two at once, the new owner among them: the runtime may end a request without cancelling
    // its stream, and such a member is let go once its pacer has stopped for a heartbeat.
    let mut n = last;
    let mut gone = false;
    let again = Instant::now();
    while n < last + 400 && again.elapsed() < Duration::from_secs(90) {
        n += 1;
        publish(&api, &c, n).await;
        if sse_count(&api, &c).await == json!(1) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "two more members never left the count");
    for i in n + 1..=n + 5 {
        publish(&api, &c, i).await;
    }
    let got = event_ids(&others[0].events_through(n + 5, WAIT).await);
    assert_eq!(
        got,
        (last + 1..=n + 5).collect::<Vec<_>>(),
        "the last member"
    );
    eprintln!(
        "e2e: tap: the owner left the count after {left:.1?}; {} events",
        n + 5
    );
}

/// The owner's own client stops reading (a tiny receive buffer), with the smallest
/// `SLOW_CONSUMER_BYTES`: it is let go as too slow, alone. The three other members get every
/// event once, and the channel's count follows the clients (4, then 3, then 2 when one more
/// leaves), whichever request carries the upstream by then.
async fn tap_owner_let_go_as_too_slow_leaves_the_others_whole_and_the_count_true(_: Api) {
    let hub = own_hub(RETAIN_ALL).await;
    let api = Api::new(hub.base());
    let c = format!("public:{}", channel("tapslowowner"));
    let host = api.base.trim_start_matches("http://").to_string();
    let request =
        format!("GET /sse/{c} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    let (_owner, head, _) = stalled(&api, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(SseStream::subscribe(&api, &c, None, None).await);
    }
    assert_eq!(sse_count(&api, &c).await, json!(4));
    // Padded events until the owner's client is let go: past the socket buffers (the
    // kernel's send buffer grows to some MiB on loopback, about 500 of these events here),
    // then past the 64 KiB backlog, then a second without taking any.
    let mut n = 0;
    let started = Instant::now();
    while n < 1500 && started.elapsed() < Duration::from_secs(240) {
        n = publish_padded(&api, &c, n + 1).await;
        if n % 10 == 0 && sse_count(&api, &c).await == json!(3) {
            break;
        }
    }
    assert_eq!(
        sse_count(&api, &c).await,
        json!(3),
        "the owner was never let go ({n} events)"
    );
    let last = n + 10;
    for k in n + 1..=last {
        publish_padded(&api, &c, k).await;
    }
    for (k, s) in others.iter_mut().enumerate() {
        assert_eq!(
            event_ids(&s.events_through(last, WAIT).await),
            (1..=last).collect::<Vec<_>>(),
            "member {k}"
        );
    }
    drop(others.remove(0));
    let mut count = sse_count(&api, &c).await;
    let mut m = last;
    let left = Instant::now();
    while count != json!(2) && left.elapsed() < Duration::from_secs(60) {
        m = publish_padded(&api, &c, m + 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        count = sse_count(&api, &c).await;
    }
    assert_eq!(count, json!(2), "after one more member left");
    for (k, s) in others.iter_mut().enumerate() {
        assert_eq!(
            event_ids(&s.events_through(m, WAIT).await),
            (last + 1..=m).collect::<Vec<_>>(),
            "member {k}, after"
        );
    }
    hub.cleanup().await;
}

/// The object refuses the take-over (`EDGEHUB_FAULT_TAKE_OVER`, development only): when the
/// owner leaves, the member woken to take over cannot open a new upstream, so every member's
/// stream ends at once rather than waiting on a tap without an upstream. Each resumes from
/// its last id as `EventSource` would, and gets every event after it exactly once.
async fn tap_take_over_refused_ends_every_member_and_each_resumes_once(_: Api) {
    let hub = fault_hub(("EDGEHUB_FAULT_TAKE_OVER", "1")).await;
    let api = Api::new(hub.base());
    let c = format!("public:{}", channel("taprefused"));
    let (owner, members) = owner_and_members(&api, &c).await;
    drop(owner);
    every_member_ends_and_resumes(&api, &c, members).await;
    hub.cleanup().await;
}

/// Take-overs that fail in the Worker before reaching the object, as when the member woken
/// to take over has lost its request (`EDGEHUB_FAULT_TAKE_OVER_STARTS=5`, development only:
/// the isolate's first five fail). On the first channel the woken member fails, and the
/// members' pacers try twice more and fail: after three in a row every member's stream ends
/// and each resumes from its last id. On the second, two fail and the third opens the
/// upstream: no member's stream ends, and each gets every event once.
async fn tap_take_over_that_cannot_start_is_tried_again_three_times(_: Api) {
    let hub = fault_hub(("EDGEHUB_FAULT_TAKE_OVER_STARTS", "5")).await;
    let api = Api::new(hub.base());
    let failed = |c: &str| {
        let line = format!("tap {c}: taking over: ");
        hub.log().lines().filter(|l| l.contains(&line)).count()
    };

    // Three failures in a row: every member ends and resumes on its own.
    let c = format!("public:{}", channel("tapstarts3"));
    let (owner, members) = owner_and_members(&api, &c).await;
    drop(owner);
    every_member_ends_and_resumes(&api, &c, members).await;
    let tail = hub.log_tail();
    assert_eq!(failed(&c), 3, "take-overs failed on {c}:\n{tail}");

    // Two failures, then the third try opens the upstream: nobody notices. Event 6 is
    // published as the owner leaves, 7 and 8 once the members' count is reported on the new
    // upstream.
    let c = format!("public:{}", channel("tapstarts2"));
    let (owner, mut members) = owner_and_members(&api, &c).await;
    drop(owner);
    publish(&api, &c, 6).await;
    let count = sse_count_becomes(&api, &c, 3).await;
    assert_eq!(count, json!(3), "the members left, on the new upstream");
    let tail = hub.log_tail();
    assert_eq!(failed(&c), 2, "take-overs failed on {c}:\n{tail}");
    for i in 7..=8 {
        publish(&api, &c, i).await;
    }
    for (k, m) in members.iter_mut().enumerate() {
        let got = event_ids(&m.events_through(8, WAIT).await);
        assert_eq!(got, vec![6, 7, 8], "member {k} across the take-over");
        assert!(!m.ended(), "member {k}'s stream ended");
    }
    hub.cleanup().await;
}

/// A hub of the test's own with one development fault switch on.
async fn fault_hub(fault: (&str, &str)) -> Hub {
    let heartbeat = SHARED_HEARTBEAT_SECONDS.to_string();
    let vars = [
        ("EDGEHUB_DEV", "1"),
        fault,
        ("RETAIN_EVENTS", RETAIN_ALL),
        ("HEARTBEAT_SECONDS", heartbeat.as_str()),
    ];
    Hub::start(HubOptions::with_vars(&vars))
        .await
        .unwrap_or_else(|why| panic!("starting this test's own hub: {why}"))
}

/// An owner and three members of `c`'s tap (the owner first, so that it holds the upstream),
/// each with events 1-5.
async fn owner_and_members(api: &Api, c: &str) -> (SseStream, Vec<SseStream>) {
    let mut owner = SseStream::subscribe(api, c, None, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(SseStream::subscribe(api, c, None, None).await);
    }
    assert_eq!(sse_count(api, c).await, json!(4));
    for i in 1..=5 {
        publish(api, c, i).await;
    }
    let got = event_ids(&owner.events_through(5, WAIT).await);
    assert_eq!(got, (1..=5).collect::<Vec<_>>(), "the owner");
    for (k, m) in members.iter_mut().enumerate() {
        let got = event_ids(&m.events_through(5, WAIT).await);
        assert_eq!(got, (1..=5).collect::<Vec<_>>(), "member {k}");
    }
    (owner, members)
}

/// With the owner gone and its take-over failed for good: events 6-8 are published, every
/// member's stream ends (what each got before its end, in order, is where it resumes), each
/// resumes from its last id as `EventSource` would and gets 9-12 and nothing twice, and the
/// count becomes the resumed members.
async fn every_member_ends_and_resumes(api: &Api, c: &str, mut members: Vec<SseStream>) {
    for i in 6..=8 {
        publish(api, c, i).await;
    }
    let mut lasts = Vec::new();
    for (k, m) in members.iter_mut().enumerate() {
        let got = event_ids(&m.read_to_end(WAIT).await);
        assert!(m.ended(), "member {k}'s stream never ended");
        let want: Vec<u64> = (6..6 + got.len() as u64).collect();
        assert_eq!(got, want, "member {k} before its end");
        lasts.push(5 + got.len() as u64);
    }
    let mut resumed = Vec::new();
    for last in &lasts {
        resumed.push(SseStream::subscribe(api, c, Some(*last), None).await);
    }
    for i in 9..=12 {
        publish(api, c, i).await;
    }
    for (k, (s, last)) in resumed.iter_mut().zip(&lasts).enumerate() {
        let got = event_ids(&s.events_through(12, WAIT).await);
        let want: Vec<u64> = (last + 1..=12).collect();
        assert_eq!(got, want, "member {k} resumed");
    }
    let count = sse_count_becomes(api, c, lasts.len() as u64).await;
    assert_eq!(count, json!(lasts.len()), "the resumed members");
}

/// The channel's SSE count once it is `n`, or as it stands after `WAIT`.
async fn sse_count_becomes(api: &Api, c: &str, n: u64) -> Value {
    let started = Instant::now();
    let mut count = sse_count(api, c).await;
    while count != json!(n) && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
        count = sse_count(api, c).await;
    }
    count
}
