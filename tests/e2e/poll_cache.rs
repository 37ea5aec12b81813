//! The poll layers that spare D1 (docs/API.md#poll-cache) beyond the window cache that
//! `poll.rs` tests: still pages (pages that end below the head) answered for later windows,
//! from this isolate or from the Cache API, until a pruning or a purge reaches them; and polls of
//! one request at one moment sharing one D1 read, whose leader may leave without stranding them.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use crate::api::{admin, channel, ids, Api, Resp};
use crate::harness::{Hub, HubOptions};
use crate::{case, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(a_still_page_is_the_answer_for_later_windows_until_a_purge),
        case!(still_pages_come_back_from_the_cache_api_once_the_isolate_let_them_go),
        case_own_hub!(a_still_page_stops_being_the_answer_once_pruning_reaches_it),
        case_own_hub!(polls_of_one_request_at_one_moment_share_one_d1_read),
    ]
}

/// Publishes `n` events (data `{"n": i}`) in batches of 100 and waits for the mirror.
async fn fill(api: &Api, c: &str, from: u64, n: u64) {
    let token = admin();
    let mut start = from;
    while start < from + n {
        let end = (start + 99).min(from + n - 1);
        let batch: Vec<Value> = (start..=end).map(|i| json!({"data": {"n": i}})).collect();
        let r = api.publish(c, &Value::Array(batch), &token).await;
        assert_eq!(r.status, 201, "filling {c}: {}", r.text());
        assert_eq!(ids(&r.json()).last().copied(), Some(end), "filling {c}");
        start = end + 1;
    }
    let head = from + n - 1;
    assert_eq!(api.await_mirror(c, head).await, head, "the mirror of {c}");
}

fn page_ids(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_u64()).collect())
        .unwrap_or_default()
}

fn source(r: &Resp) -> String {
    r.header("x-edgehub-cache").unwrap_or_default()
}

/// What a poll answered: ids, next, more, head, and the gap's `earliest` if any.
fn summary(r: &Resp) -> (u16, Vec<u64>, u64, bool, u64, Option<u64>) {
    let page = r.json();
    (
        r.status,
        page_ids(&page),
        page["next"].as_u64().unwrap_or(u64::MAX),
        page["more"].as_bool().unwrap_or(false),
        page["head"].as_u64().unwrap_or(u64::MAX),
        page["gap"]
            .as_bool()
            .filter(|g| *g)
            .and_then(|_| page["earliest"].as_u64()),
    )
}

/// A page that ends below the head is answered again after more publishes without reading its
/// events from D1 (`hit`), with the new head and the tag a fresh read would give; a purge
/// makes it the gap it now is.
async fn a_still_page_is_the_answer_for_later_windows_until_a_purge(api: Api) {
    let c = channel("still");
    let token = admin();
    fill(&api, &c, 1, 10).await;
    let path = format!("/poll/{c}?since=2&limit=3");
    let first = api.get(&path, Some(&token)).await;
    assert_eq!(
        summary(&first),
        (200, vec![3, 4, 5], 5, true, 10, None),
        "{}",
        first.text()
    );
    assert_eq!(first.header("etag").as_deref(), Some("\"10.1.2.3\""));
    fill(&api, &c, 11, 2).await;
    let later = api.get(&path, Some(&token)).await;
    assert_eq!(
        (summary(&later), source(&later)),
        ((200, vec![3, 4, 5], 5, true, 12, None), "hit".to_string()),
        "after two more publishes: {}",
        later.text()
    );
    assert_eq!(later.header("etag").as_deref(), Some("\"12.1.2.3\""));
    // The same answer, byte for byte, as a page made from D1 for this window: the first page
    // at head 12 has the same shape; compare everything but the events.
    let mut fresh = api
        .get(&format!("/poll/{c}?since=2&limit=4"), Some(&token))
        .await
        .json();
    let mut still = later.json();
    for page in [&mut fresh, &mut still] {
        page["events"] = json!([]);
        page["next"] = json!(0);
    }
    assert_eq!(still, fresh, "the still page's fields beside its events");

    let purge = crate::api::client()
        .delete(format!("{}/channels/{c}/events", api.base))
        .bearer_auth(&token);
    assert_eq!(api.send(purge).await.status, 204);
    // The purge went through this isolate; other isolates would keep up to POLL_CACHE_MS.
    let after = api.get(&path, Some(&token)).await;
    assert_eq!(
        summary(&after),
        (200, vec![], 12, false, 12, Some(13)),
        "after a purge: {}",
        after.text()
    );
}

/// Past the isolate's 512 kept pages, a still page comes back from the Cache API (`stored`),
/// still with the head of the moment.
async fn still_pages_come_back_from_the_cache_api_once_the_isolate_let_them_go(api: Api) {
    let c = channel("stored");
    let token = admin();
    let pages = 600;
    fill(&api, &c, 1, pages + 10).await;
    for since in 0..pages {
        let r = api
            .get(&format!("/poll/{c}?since={since}&limit=1"), Some(&token))
            .await;
        assert_eq!(page_ids(&r.json()), vec![since + 1], "{}", r.text());
    }
    fill(&api, &c, pages + 11, 1).await;
    let r = api
        .get(&format!("/poll/{c}?since=0&limit=1"), Some(&token))
        .await;
    assert_eq!(
        (summary(&r), source(&r)),
        (
            (200, vec![1], 1, true, pages + 11, None),
            "stored".to_string()
        ),
        "{}",
        r.text()
    );
    let again = api
        .get(&format!("/poll/{c}?since=0&limit=1"), Some(&token))
        .await;
    assert_eq!(source(&again), "hit", "kept in the isolate again");
}

/// With `RETAIN_EVENTS=5`, publishes prune the channel past a still page's cursor: that poll
/// then gets the gap, not the page kept for it.
async fn a_still_page_stops_being_the_answer_once_pruning_reaches_it(_: Api) {
    let hub = own_hub(&[("RETAIN_EVENTS", "5")]).await;
    let api = Api::new(hub.base());
    let c = channel("still-pruned");
    let token = admin();
    fill(&api, &c, 1, 5).await;
    let path = format!("/poll/{c}?since=1&limit=2");
    let first = api.get(&path, Some(&token)).await;
    assert_eq!(
        summary(&first),
        (200, vec![2, 3], 3, true, 5, None),
        "{}",
        first.text()
    );
    // Six more: ids 7..=11 are retained, 2 and 3 are gone.
    fill(&api, &c, 6, 6).await;
    let after = api.get(&path, Some(&token)).await;
    assert_eq!(
        summary(&after),
        (200, vec![7, 8], 8, true, 11, Some(7)),
        "pruned past the cursor: {}",
        after.text()
    );
    hub.cleanup().await;
}

/// A hundred polls of one request arriving while its D1 read is in flight (each read held
/// 1.5 s by the development fault switch) get one answer from one read: one `miss`, the rest
/// `shared`. A leader whose client leaves mid-read does not strand the polls behind it.
async fn polls_of_one_request_at_one_moment_share_one_d1_read(_: Api) {
    let hub = own_hub(&[("EDGEHUB_DEV", "1"), ("EDGEHUB_FAULT_D1_READ_MS", "1500")]).await;
    let api = Api::new(hub.base());
    let c = channel("flight");
    let token = admin();
    let r = api
        .publish(&c, &json!([{"data": 1}, {"data": 2}]), &token)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Wait for the mirror through the object (a poll would cache the window).
    wait_mirrored(&api, &c, 2).await;

    let path = format!("/poll/{c}?since=0&limit=10");
    let polls = (0..100).map(|_| api.get(&path, Some(&token)));
    let answers = join_all(polls).await;
    let mut sources: Vec<String> = answers.iter().map(source).collect();
    sources.sort();
    sources.dedup_by(|a, b| a == b);
    for r in &answers {
        assert_eq!(
            summary(r),
            (200, vec![1, 2], 2, false, 2, None),
            "{}",
            r.text()
        );
    }
    let misses = answers.iter().filter(|r| source(r) == "miss").count();
    let shared = answers.iter().filter(|r| source(r) == "shared").count();
    assert_eq!((misses, shared), (1, 99), "sources: {sources:?}");

    // A leader that leaves 300 ms into its read, then ten followers of the same request.
    let path = format!("/poll/{c}?since=1&limit=10");
    let leaving = crate::api::client()
        .get(format!("{}{path}", api.base))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(300))
        .send();
    let followers = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        join_all((0..10).map(|_| api.get(&path, Some(&token)))).await
    };
    let (left, followers) = tokio::join!(leaving, followers);
    assert!(left.is_err(), "the leader's client gave up before the read");
    for r in &followers {
        assert_eq!(
            summary(r),
            (200, vec![2], 2, false, 2, None),
            "{}",
            r.text()
        );
    }
    hub.cleanup().await;
}

async fn own_hub(vars: &[(&str, &str)]) -> Hub {
    let started = Hub::start(HubOptions::with_vars(vars)).await;
    started.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"))
}

/// Waits (bounded) until the channel's object says D1 holds `head`, without polling.
async fn wait_mirrored(api: &Api, c: &str, head: u64) {
    let mut mirrored = 0;
    for _ in 0..300 {
        mirrored = crate::live::info(api, c).await["mirrored"]
            .as_u64()
            .unwrap_or(0);
        if mirrored >= head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mirrored, head, "the mirror of {c}");
}
