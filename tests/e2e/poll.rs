//! Polling from the D1 mirror: paging with `limit`/`next`/`more`, cursors (none, ahead of the
//! head, unknown channel), `ETag`/304 (also from a window cached in the isolate), bad
//! parameters, and that polling never reaches the channel's Durable Object.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::api::{admin, channel, ids, Api};
use crate::harness::{Hub, HubOptions};
use crate::publish::assert_problem;
use crate::{case, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(paging_with_limit_and_next_walks_every_event),
        case!(if_none_match_is_304_until_a_new_event_is_mirrored),
        case!(cursor_none_ahead_of_head_and_unknown_channel),
        case!(bad_poll_parameters_are_400),
        case!(polling_leaves_the_durable_object_untouched),
        case_own_hub!(a_cached_window_answers_304s_and_the_pages_made_for_it),
    ]
}

/// Publishes `n` events with data `{"n": 1..=n}` in batches of 50; returns the head.
async fn fill(api: &Api, c: &str, n: u64) -> u64 {
    let token = admin();
    let mut last = 0;
    for start in (1..=n).step_by(50) {
        let batch: Vec<Value> = (start..=(start + 49).min(n))
            .map(|i| json!({"data": {"n": i}}))
            .collect();
        let r = api.publish(c, &Value::Array(batch), &token).await;
        assert_eq!(r.status, 201, "filling {c}: {}", r.text());
        last = ids(&r.json()).last().copied().unwrap_or(0);
    }
    assert_eq!(last, n, "filling {c}");
    assert_eq!(
        api.await_mirror(c, n).await,
        n,
        "the mirror of {c} never reached {n}"
    );
    n
}

fn event_ids(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["id"].as_u64()).collect())
        .unwrap_or_default()
}

async fn paging_with_limit_and_next_walks_every_event(api: Api) {
    let c = channel("paging");
    fill(&api, &c, 250).await;

    let (events, pages) = api.poll_all(&c, 0, 7, 100).await;
    assert_eq!(pages.len(), 36, "250 events at limit 7 are 36 pages");
    let polled: Vec<u64> = events.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(
        polled,
        (1..=250).collect::<Vec<u64>>(),
        "paging must walk 1..=250 in order"
    );
    for (i, page) in pages.iter().enumerate() {
        let last = i + 1 == pages.len();
        let got = event_ids(page);
        assert_eq!(got.len(), if last { 5 } else { 7 }, "page {i}: {page}");
        assert_eq!(page["more"], json!(!last), "`more` on page {i}: {page}");
        assert_eq!(
            page["next"].as_u64(),
            got.last().copied(),
            "`next` is the last id, page {i}"
        );
        assert_eq!(page["channel"], json!(c));
        assert_eq!(page["head"], json!(250));
    }
    for e in &events {
        assert_eq!(
            e["data"],
            json!({"n": e["id"]}),
            "event data follows its id: {e}"
        );
    }

    let r = api.poll(&c, Some(250), Some(7)).await;
    let page = r.json();
    assert_eq!(r.status, 200, "{page}");
    assert_eq!(
        (
            event_ids(&page).len(),
            page["next"].as_u64(),
            page["more"].as_bool()
        ),
        (0, Some(250), Some(false))
    );

    let r = api.poll(&c, Some(0), None).await;
    let page = r.json();
    assert_eq!(
        event_ids(&page),
        (1..=100).collect::<Vec<u64>>(),
        "the default limit is 100"
    );
    assert_eq!(
        (page["next"].as_u64(), page["more"].as_bool()),
        (Some(100), Some(true))
    );

    let r = api.poll(&c, Some(0), Some(1000)).await;
    let page = r.json();
    assert_eq!(
        event_ids(&page).len(),
        250,
        "limit 1000 is allowed: {}",
        r.text()
    );
    assert_eq!(page["more"], json!(false));
}

async fn if_none_match_is_304_until_a_new_event_is_mirrored(api: Api) {
    let c = channel("etag");
    fill(&api, &c, 1).await;
    let path = format!("/poll/{c}?since=0&limit=10");
    let token = admin();

    let first = api.get(&path, Some(&token)).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let etag = first.header("etag").unwrap_or_default();
    assert!(
        !etag.is_empty(),
        "a 200 poll must carry an ETag; headers: {:?}",
        first.headers
    );
    let conditional = || client_get_if_none_match(&api, &path, &token, &etag);
    let again = conditional().await;
    assert_eq!(
        again.status,
        304,
        "unchanged poll with If-None-Match: {}",
        again.text()
    );
    assert!(
        again.body.is_empty(),
        "a 304 has no body, got {:?}",
        again.text()
    );

    let r = api.publish(&c, &json!({"data": "second"}), &token).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let started = Instant::now();
    let mut last = again;
    for _ in 0..400 {
        if last.status != 304 || started.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = conditional().await;
    }
    assert_eq!(
        last.status,
        200,
        "after a new event is mirrored the same poll is a 200: {}",
        last.text()
    );
    assert_eq!(event_ids(&last.json()), vec![1, 2]);
    let new_tag = last.header("etag");
    assert!(
        new_tag.is_some() && new_tag.as_deref() != Some(etag.as_str()),
        "ETag must change: {new_tag:?}"
    );
}

/// With `POLL_CACHE_MS` long, a conditional poll is answered from the window this isolate read
/// last: a new event stays invisible to it (a 304 is only late, never wrong), while any poll
/// that reads D1 sees the event at once and refreshes the window, after which the old tag gets
/// a 200 with the event.
/// With a window cached for as long as the test runs (`POLL_CACHE_MS`), this isolate answers
/// from it: a 304 for a matching tag, and the very page it made for the same request (single,
/// multi-channel and filtered polls), marked `x-edgehub-cache: hit`, without D1. Another
/// request is a miss; a publish or purge through this isolate drops the window, so the next
/// poll reads D1 again.
async fn a_cached_window_answers_304s_and_the_pages_made_for_it(_: Api) {
    let hub = Hub::start(HubOptions::with_vars(&[("POLL_CACHE_MS", "600000")])).await;
    let hub = hub.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"));
    let api = Api::new(hub.base());
    let (c, d) = (channel("cached"), channel("cached-b"));
    fill(&api, &c, 1).await;
    fill(&api, &d, 1).await;
    let token = admin();
    let path = format!("/poll/{c}?since=0&limit=10");
    let first = api.get(&path, Some(&token)).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-edgehub-cache").as_deref(), Some("miss"));
    let etag = first.header("etag").unwrap_or_default();
    let again = api.get(&path, Some(&token)).await;
    assert_eq!(
        (again.status, again.header("x-edgehub-cache").as_deref()),
        (200, Some("hit")),
        "the same poll again: the page this isolate made"
    );
    assert_eq!(
        (again.text(), again.header("etag")),
        (first.text(), Some(etag.clone()))
    );
    let other = api
        .get(&format!("/poll/{c}?since=0&limit=5"), Some(&token))
        .await;
    assert_eq!(
        other.header("x-edgehub-cache").as_deref(),
        Some("miss"),
        "another request"
    );
    let cached = client_get_if_none_match(&api, &path, &token, &etag).await;
    assert_eq!(cached.status, 304, "a matching tag");

    // Multi-channel and filtered polls are kept the same way.
    for path in [
        format!("/poll?channel={c}&channel={d}&since=0"),
        format!("/poll/{c}?since=0&topic=nothing-has-it"),
    ] {
        let miss = api.get(&path, Some(&token)).await;
        let hit = api.get(&path, Some(&token)).await;
        assert_eq!(
            (miss.status, miss.header("x-edgehub-cache").as_deref()),
            (200, Some("miss")),
            "{path}: {}",
            miss.text()
        );
        assert_eq!(
            (hit.header("x-edgehub-cache").as_deref(), hit.text()),
            (Some("hit"), miss.text()),
            "{path}"
        );
    }

    // A publish through this isolate (`fill_more` then waits for the mirror by asking the
    // channel's object, not D1) drops the window.
    fill_more(&api, &c, 2).await;
    let fresh = api.get(&path, Some(&token)).await;
    assert_eq!(
        (
            fresh.status,
            event_ids(&fresh.json()),
            fresh.header("x-edgehub-cache").as_deref()
        ),
        (200, vec![1, 2], Some("miss")),
        "a publish through this isolate: the next poll reads D1"
    );
    let refreshed = client_get_if_none_match(&api, &path, &token, &etag).await;
    assert_eq!(
        (refreshed.status, event_ids(&refreshed.json())),
        (200, vec![1, 2]),
        "the old tag after the window was refreshed"
    );
    assert_eq!(refreshed.header("etag"), fresh.header("etag"));

    // A purge through this isolate drops it too.
    let purge = crate::api::client()
        .delete(format!("{}/channels/{c}/events", api.base))
        .bearer_auth(&token);
    assert_eq!(api.send(purge).await.status, 204);
    let after = api.get(&path, Some(&token)).await;
    assert_eq!(
        (
            event_ids(&after.json()),
            after.header("x-edgehub-cache").as_deref()
        ),
        (vec![], Some("miss")),
        "after a purge: {}",
        after.text()
    );
    hub.cleanup().await;
}

/// Publishes one more event (the `n`th) and waits until D1 has it, asking the channel's object
/// (a poll would refresh the isolate's cached window).
async fn fill_more(api: &Api, c: &str, n: u64) {
    let r = api.publish(c, &json!({"data": {"n": n}}), &admin()).await;
    assert_eq!(ids(&r.json()), vec![n], "{}", r.text());
    let started = Instant::now();
    let mut mirrored = 0;
    while mirrored < n && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        mirrored = crate::live::info(api, c).await["mirrored"]
            .as_u64()
            .unwrap_or(0);
    }
    assert_eq!(mirrored, n, "the mirror of {c}");
}

async fn client_get_if_none_match(
    api: &Api,
    path: &str,
    token: &str,
    etag: &str,
) -> crate::api::Resp {
    let req = crate::api::client()
        .get(format!("{}{path}", api.base))
        .bearer_auth(token);
    api.send(req.header("if-none-match", etag)).await
}

async fn cursor_none_ahead_of_head_and_unknown_channel(api: Api) {
    let c = channel("cursor");
    fill(&api, &c, 3).await;

    let r = api.poll(&c, None, None).await;
    let page = r.json();
    assert_eq!(r.status, 200, "{page}");
    assert_eq!(
        event_ids(&page),
        Vec::<u64>::new(),
        "no `since` means from now on: {page}"
    );
    assert_eq!(
        (page["next"].as_u64(), page["head"].as_u64()),
        (Some(3), Some(3)),
        "{page}"
    );
    assert!(r.header("etag").is_some(), "every 200 has an ETag");

    let r = api.poll(&c, Some(1000), None).await;
    let page = r.json();
    assert_eq!(
        r.status, 200,
        "a cursor ahead of the mirror is no error: {page}"
    );
    assert_eq!(event_ids(&page), Vec::<u64>::new(), "{page}");
    assert_eq!(
        (page["next"].as_u64(), page["more"].as_bool()),
        (Some(1000), Some(false)),
        "{page}"
    );
    assert_eq!(page["head"], json!(3));

    let r = api.poll(&c, Some(1), Some(1)).await;
    let page = r.json();
    assert_eq!(event_ids(&page), vec![2], "{page}");
    assert_eq!(
        (page["next"].as_u64(), page["more"].as_bool()),
        (Some(2), Some(true)),
        "{page}"
    );

    let unknown = channel("unknown");
    for since in [Some(0), None] {
        let r = api.poll(&unknown, since, None).await;
        let page = r.json();
        assert_eq!(r.status, 200, "unknown channel, since {since:?}: {page}");
        assert_eq!(event_ids(&page), Vec::<u64>::new(), "{page}");
        assert_eq!(
            (page["head"].as_u64(), page["next"].as_u64()),
            (Some(0), Some(0)),
            "{page}"
        );
        assert_eq!(page["channel"], json!(unknown));
    }
}

async fn bad_poll_parameters_are_400(api: Api) {
    let c = channel("params");
    let token = admin();
    let queries = [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=-1",
        "since=-1",
        "since=abc",
        "since=1.5",
        "since=0&limit=",
    ];
    for q in queries {
        let r = api.get(&format!("/poll/{c}?{q}"), Some(&token)).await;
        assert_problem(&r, 400, "bad_request", &format!("poll ?{q}"));
    }
}

/// The object's `instance` and `requests` from `GET /channels/{c}`.
async fn object(api: &Api, c: &str) -> (String, u64, Value) {
    let r = api.info(c).await;
    let info = r.json();
    assert_eq!(r.status, 200, "GET /channels/{c}: {}", r.text());
    let instance = info["object"]["instance"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (
        instance,
        info["object"]["requests"].as_u64().unwrap_or(0),
        info,
    )
}

async fn polling_leaves_the_durable_object_untouched(api: Api) {
    let c = channel("untouched");
    fill(&api, &c, 5).await;
    let token = admin();
    let mut reloads = 0;
    for attempt in 1..=5 {
        let (instance, requests, info) = object(&api, &c).await;
        assert!(
            !instance.is_empty() && requests >= 1,
            "object identity in {info}"
        );
        for key in ["head", "earliest", "retained"] {
            assert!(info[key].is_u64(), "channel info lacks {key}: {info}");
        }
        assert!(
            !info["mirrored"].is_null(),
            "channel info lacks mirrored: {info}"
        );
        assert_eq!(info["channel"], json!(c));
        assert_eq!(info["head"], json!(5));
        assert_eq!(info["subscribers"], json!({"sse": 0, "ws": 0}), "{info}");
        for i in 0..50 {
            let r = api.get(&format!("/poll/{c}?since=0"), Some(&token)).await;
            assert_eq!(r.status, 200, "poll {i}: {}", r.text());
            assert_eq!(event_ids(&r.json()).len(), 5);
        }
        let (after, requests_after, info_after) = object(&api, &c).await;
        if after != instance {
            eprintln!("note: {c}'s object was reloaded during attempt {attempt}; retrying");
            reloads += 1;
            continue;
        }
        assert_eq!(
            requests_after,
            requests + 1,
            "50 polls must not reach the object: {info} then {info_after}"
        );
        break;
    }
    assert!(
        reloads < 5,
        "the channel object was reloaded during every one of 5 attempts"
    );
}
