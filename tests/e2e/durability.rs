//! What outlives the runtime: each test runs its own hub, stops or kills the whole process group,
//! starts it again on the same persist dir, and checks the log, the mirror and the counter.

use serde_json::{json, Value};

use crate::api::{admin, channel, ids, Api};
use crate::harness::{Hub, HubOptions};
use crate::{case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case_own_hub!(events_and_the_id_counter_survive_a_restart),
        case_own_hub!(acknowledged_events_survive_sigkill_of_the_runtime),
    ]
}

async fn start() -> Hub {
    let started = Hub::start(HubOptions::default()).await;
    started.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"))
}

async fn restarted(hub: &mut Hub, how: &str) -> Api {
    let base = hub.restart().await;
    Api::new(&base.unwrap_or_else(|why| panic!("starting again after {how}: {why}")))
}

/// Publishes `n` single events `{"i": 1..=n}` one after the other; waits for the mirror.
async fn publish_n(api: &Api, c: &str, n: u64) {
    let token = admin();
    for i in 1..=n {
        let r = api
            .publish(c, &json!({"type": "tick", "data": {"i": i}}), &token)
            .await;
        assert_eq!(r.status, 201, "publish {i}: {}", r.text());
        assert_eq!(ids(&r.json()), vec![i], "publish {i}");
    }
    assert_eq!(
        api.await_mirror(c, n).await,
        n,
        "the mirror never reached {n}"
    );
}

/// Everything retained in `c`, in id order.
async fn all_events(api: &Api, c: &str) -> Vec<Value> {
    api.poll_all(c, 0, 1000, 5).await.0
}

/// After a restart: the same events, head `n`, and the next publish gets `n + 1` everywhere.
async fn assert_intact(api: &Api, c: &str, before: &[Value], how: &str) {
    let n = before.len() as u64;
    let after = all_events(api, c).await;
    assert_eq!(
        after, before,
        "poll after {how} must return the same {n} events unchanged"
    );
    let info = api.info(c).await;
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(
        info.json()["head"],
        json!(n),
        "channel head after {how}: {}",
        info.text()
    );

    let r = api.publish(c, &json!({"data": "after"}), &admin()).await;
    assert_eq!(r.status, 201, "first publish after {how}: {}", r.text());
    assert_eq!(
        ids(&r.json()),
        vec![n + 1],
        "the id counter must continue after {how}"
    );
    let info = api.info(c).await;
    assert_eq!(info.json()["head"], json!(n + 1), "{}", info.text());
    assert_eq!(api.await_mirror(c, n + 1).await, n + 1);
    let (tail, _) = api.poll_all(c, n, 10, 2).await;
    assert_eq!(tail.len(), 1, "exactly one event after {n}: {tail:?}");
    assert_eq!(
        tail.first().map(|e| (e["id"].clone(), e["data"].clone())),
        Some((json!(n + 1), json!("after")))
    );
}

async fn events_and_the_id_counter_survive_a_restart(_shared: Api) {
    let mut hub = start().await;
    let api = Api::new(hub.base());
    let c = channel("restart");
    publish_n(&api, &c, 30).await;
    let before = all_events(&api, &c).await;
    assert_eq!(before.len(), 30, "before the restart: {before:?}");

    let api = restarted(&mut hub, "a stop (SIGTERM to the group)").await;
    assert_intact(&api, &c, &before, "a stop and start").await;
    hub.cleanup().await;
}

async fn acknowledged_events_survive_sigkill_of_the_runtime(_shared: Api) {
    let mut hub = start().await;
    let api = Api::new(hub.base());
    let c = channel("sigkill");
    publish_n(&api, &c, 10).await;
    let before = all_events(&api, &c).await;
    assert_eq!(before.len(), 10, "before the crash: {before:?}");

    hub.kill9().await;
    let api = restarted(&mut hub, "SIGKILL").await;
    assert_intact(&api, &c, &before, "SIGKILL").await;
    hub.cleanup().await;
}
