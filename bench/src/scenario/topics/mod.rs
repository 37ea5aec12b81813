//! Scenario 7: topics (docs/API.md#topics) and the Mercure face (docs/mercure.md), one event in
//! flight at a time as in scenario 1, each figure beside a comparison from the same pass. The
//! Mercure pass: a 0.x subscriber (`GET /.well-known/mercure?topic=…`, read as plain SSE) and a
//! native `/sse/{c}` one, an update to each in turn. The filtered passes (SSE, then WebSocket): a
//! subscriber with 10 URL patterns beside an unfiltered one, and a twin channel without it.
//! `mercure` is the Mercure client; the native subscribers are `crate::streams`'.

mod mercure;

use std::future::Future;
use std::time::{Duration, Instant};

use self::mercure::MercureSub;
use super::{Plan, Setup};
use crate::client;
use crate::stats::{percentile_ms, Figures, Unit};
use crate::streams::{Kind, Next, Sub};

const SCENARIO: &str = "topics";
/// The most one round may wait for its delivery.
const ROUND_WAIT: Duration = Duration::from_secs(10);
/// The most one pass may take, however many rounds are left.
const PASS_BUDGET: Duration = Duration::from_secs(240);
/// The filtered passes' topics: `{TOPIC_BASE}/g/{item % GROUPS}/items/{item}`, `TOPICS` items
/// cycled. The filter names groups 0 to `PATTERNS − 1`, so one event in `GROUPS / PATTERNS`
/// matches.
const TOPIC_BASE: &str = "https://bench.example";
const TOPICS: u64 = 1000;
const GROUPS: u64 = 100;
const PATTERNS: u64 = 10;

pub async fn run(plan: &Plan, setup: &Setup) -> Result<Figures, String> {
    let mut f = Figures::default();
    add_mercure(&mut f, mercure_pass(plan, setup).await?);
    for kind in [Kind::Sse, Kind::Ws] {
        add_filtered(&mut f, kind, filtered_pass(plan, setup, kind).await?);
    }
    f.note(format!(
        "topics: one event at a time as in scenario 1 (the next once the last was delivered and \
         answered), {warmup} unmeasured first. Mercure pass: {m} updates to a 0.x subscriber \
         (`GET /.well-known/mercure?topic=<a topic URL of the pass's own>`, anonymous: \
         `MERCURE_ANONYMOUS=1`), each a form (`topic`, `data`, a unique `id`) with Mercure's \
         development token, checked by id and data; after each, one JSON event to a native \
         `/sse/{{c}}` subscriber on a fresh channel, checked by id",
        warmup = plan.topics_warmup,
        m = plan.topics_mercure_events,
    ));
    f.note(format!(
        "topics, filtered: for SSE, then WebSocket, two fresh channels; on the first a \
         subscriber with {PATTERNS} `topic_pattern`s (`{TOPIC_BASE}/g/<k>/items/:id`, k < \
         {PATTERNS}) and an unfiltered one, on the twin a lone unfiltered one. {n} events \
         (after {warmup} unmeasured) each with one of {TOPICS} topics \
         (`{TOPIC_BASE}/g/<i mod {GROUPS}>/items/<i mod {TOPICS}>`: one in {ratio} matches), \
         each published to the first channel, then the same to the twin. Filtered figures are \
         over the matching events ({matching} a pass), beside the unfiltered subscriber's time \
         for the same events; a last matching event checks that the filtered subscriber got no \
         other. \"vs\" figures are a share of the comparison's figure in the same run (100 % = \
         as fast)",
        n = plan.topics_events,
        warmup = plan.topics_warmup,
        ratio = GROUPS / PATTERNS,
        matching = plan.topics_events * PATTERNS / GROUPS,
    ));
    Ok(f)
}

/// Publish → delivered and publish → answered, per measured event, of the Mercure pass.
#[derive(Default)]
struct MercureTimes {
    mercure: Vec<Duration>,
    mercure_answered: Vec<Duration>,
    native: Vec<Duration>,
    native_answered: Vec<Duration>,
}

/// One Mercure subscriber and one native SSE subscriber; each round an update to the first,
/// then an event to the second.
async fn mercure_pass(plan: &Plan, setup: &Setup) -> Result<MercureTimes, String> {
    let unique = client::channel("merc");
    let topic = format!("{TOPIC_BASE}/mercure/{unique}");
    let native_channel = client::channel("merc-native");
    let mut mercure = MercureSub::open(&setup.hub, &topic).await?;
    let mut native = Sub::open(
        Kind::Sse,
        &setup.hub,
        setup.hub_port,
        &native_channel,
        Some(0),
    )
    .await?;
    let mut t = MercureTimes::default();
    let started = Instant::now();
    for i in 1..=plan.topics_warmup + plan.topics_mercure_events {
        within_budget(started, "Mercure pass", i)?;
        let measured = i > plan.topics_warmup;
        let id = format!("{unique}-{i}");
        let form = format!(
            "topic={}&data={i}&id={}",
            client::encode(&topic),
            client::encode(&id)
        );
        let deadline = tokio::time::Instant::now() + ROUND_WAIT;
        let sent = Instant::now();
        let ((answer, answered), (got, delivered)) = tokio::join!(
            timed(mercure::publish(&setup.hub, form)),
            timed(mercure.next(deadline)),
        );
        let answer = answer?;
        match got {
            Ok(Some(u)) if u.id == id && u.data == i.to_string() && answer == id => {}
            other => {
                return Err(format!(
                    "Mercure update {i}: published {id:?} (answered {answer:?}), got {other:?}"
                ))
            }
        }
        if measured {
            t.mercure.push(delivered - sent);
            t.mercure_answered.push(answered - sent);
        }
        let body = format!(r#"{{"data":{{"i":{i}}}}}"#).into_bytes();
        let deadline = tokio::time::Instant::now() + ROUND_WAIT;
        let sent = Instant::now();
        let ((ids, answered), (got, delivered)) = tokio::join!(
            timed(client::publish(&setup.hub, &native_channel, body)),
            timed(native.next_event(deadline)),
        );
        expect(got, ids?.first().copied(), "native SSE, Mercure pass", i)?;
        if measured {
            t.native.push(delivered - sent);
            t.native_answered.push(answered - sent);
        }
    }
    Ok(t)
}

/// Per measured event of a filtered pass: publish → delivered to the filtered subscriber and to
/// the unfiltered one beside it (matching events only), and publish → answered on the channel
/// with the filtered subscriber and on its twin without (every event).
#[derive(Default)]
struct FilterTimes {
    filtered: Vec<Duration>,
    unfiltered: Vec<Duration>,
    answered_with: Vec<Duration>,
    answered_without: Vec<Duration>,
}

/// Subscribers of `kind`: filtered and unfiltered on one channel, a lone unfiltered one on its
/// twin. Each round one event to the first channel (read by the unfiltered subscriber, and by
/// the filtered one when it matches), then the same to the twin.
async fn filtered_pass(plan: &Plan, setup: &Setup, kind: Kind) -> Result<FilterTimes, String> {
    let (base, port) = (setup.hub.as_str(), setup.hub_port);
    let with = client::channel(&format!("top-{}", kind.name()));
    let twin = client::channel(&format!("top0-{}", kind.name()));
    let query = format!("since=0&{}", filter_query());
    let mut filtered = Sub::open_query(kind, base, port, &with, &query).await?;
    let mut unfiltered = Sub::open(kind, base, port, &with, Some(0)).await?;
    let mut alone = Sub::open(kind, base, port, &twin, Some(0)).await?;
    let what = format!("{} filtered pass", kind.label());
    let rounds = plan.topics_warmup + plan.topics_events;
    let mut t = FilterTimes::default();
    let started = Instant::now();
    // The round after the last is the check: one more matching event, which must be the
    // filtered subscriber's next, so that nothing it should not get slipped through unseen.
    for i in 0..=rounds {
        within_budget(started, &what, i)?;
        let check = i == rounds;
        let measured = i >= plan.topics_warmup && !check;
        let (topic, matches) = match check {
            true => (topic(0), true),
            false => (topic(i), matching(i)),
        };
        let body = serde_json::json!({"data": {"i": i}, "topics": [topic]})
            .to_string()
            .into_bytes();
        let deadline = tokio::time::Instant::now() + ROUND_WAIT;
        let sent = Instant::now();
        let ((ids, answered), (got, delivered), matched) = tokio::join!(
            timed(client::publish(base, &with, body.clone())),
            timed(unfiltered.next_event(deadline)),
            async {
                match matches {
                    true => Some(timed(filtered.next_event(deadline)).await),
                    false => None,
                }
            },
        );
        let want = ids?.first().copied();
        expect(got, want, &format!("{what}, unfiltered"), i)?;
        if let Some((got, at)) = matched {
            expect(got, want, &format!("{what}, filtered ({topic})"), i)?;
            if measured {
                t.filtered.push(at - sent);
                t.unfiltered.push(delivered - sent);
            }
        }
        if check {
            break;
        }
        let deadline = tokio::time::Instant::now() + ROUND_WAIT;
        let sent_twin = Instant::now();
        let ((ids, answered_twin), (got, _)) = tokio::join!(
            timed(client::publish(base, &twin, body)),
            timed(alone.next_event(deadline)),
        );
        expect(got, ids?.first().copied(), &format!("{what}, twin"), i)?;
        if measured {
            t.answered_with.push(answered - sent);
            t.answered_without.push(answered_twin - sent_twin);
        }
    }
    Ok(t)
}

fn add_mercure(f: &mut Figures, t: MercureTimes) {
    let (m, n) = (quantiles(t.mercure), quantiles(t.native));
    let (ma, na) = (quantiles(t.mercure_answered), quantiles(t.native_answered));
    add_pair(
        f,
        "topics.mercure",
        "Mercure 0.x subscriber (`topic=`): publish → deliver",
        m,
    );
    add_pair(
        f,
        "topics.mercure.native",
        "native SSE subscriber, same pass: publish → deliver",
        n,
    );
    add_ratio(
        f,
        "topics.mercure.vs_native",
        "Mercure vs native SSE: publish → deliver",
        m,
        n,
    );
    add_pair(
        f,
        "topics.mercure.publish",
        "Mercure publish (form, 0.x token) answered (200)",
        ma,
    );
    add_pair(
        f,
        "topics.mercure.native_publish",
        "native publish, same pass, answered (201)",
        na,
    );
    add_ratio(
        f,
        "topics.mercure.publish_vs_native",
        "Mercure publish vs native: answered",
        ma,
        na,
    );
}

fn add_filtered(f: &mut Figures, kind: Kind, t: FilterTimes) {
    let (k, who) = (kind.name(), kind.label());
    let (fl, un) = (quantiles(t.filtered), quantiles(t.unfiltered));
    let (with, without) = (quantiles(t.answered_with), quantiles(t.answered_without));
    add_pair(
        f,
        &format!("topics.{k}.filtered"),
        &format!("{who} with {PATTERNS} URL patterns, events it matches: publish → deliver"),
        fl,
    );
    add_pair(
        f,
        &format!("topics.{k}.unfiltered"),
        &format!("{who} unfiltered, same channel, same events: publish → deliver"),
        un,
    );
    add_ratio(
        f,
        &format!("topics.{k}.filtered_vs_unfiltered"),
        &format!("{who} filtered vs unfiltered, same events:"),
        fl,
        un,
    );
    add_pair(
        f,
        &format!("topics.{k}.publish_with"),
        &format!("{who} pass: publish answered, filtered subscriber present"),
        with,
    );
    add_pair(
        f,
        &format!("topics.{k}.publish_without"),
        &format!("{who} pass: publish answered, twin channel without it"),
        without,
    );
    add_ratio(
        f,
        &format!("topics.{k}.publish_with_vs_without"),
        &format!("{who} pass: publish answered with vs without it:"),
        with,
        without,
    );
}

/// p50 and p99 of `times`, in ms.
fn quantiles(mut times: Vec<Duration>) -> [f64; 2] {
    times.sort();
    [0.5, 0.99].map(|q| percentile_ms(&times, q))
}

/// `{id}.p50` and `{id}.p99`, in ms.
fn add_pair(f: &mut Figures, id: &str, label: &str, q: [f64; 2]) {
    for (name, v) in ["p50", "p99"].into_iter().zip(q) {
        let (id, label) = (format!("{id}.{name}"), format!("{label} {name}"));
        f.add(SCENARIO, &id, &label, Unit::Ms, None, v);
    }
}

/// `{id}.p50` and `{id}.p99`: `a`'s as a share of `b`'s.
fn add_ratio(f: &mut Figures, id: &str, label: &str, a: [f64; 2], b: [f64; 2]) {
    for ((name, a), b) in ["p50", "p99"].into_iter().zip(a).zip(b) {
        let share = if b > 0.0 { 100.0 * a / b } else { f64::NAN };
        let (id, label) = (format!("{id}.{name}"), format!("{label} {name}"));
        f.add(SCENARIO, &id, &label, Unit::Percent, None, share);
    }
}

/// The output of `fut` and when it came.
async fn timed<T>(fut: impl Future<Output = T>) -> (T, Instant) {
    let out = fut.await;
    (out, Instant::now())
}

fn within_budget(started: Instant, what: &str, round: u64) -> Result<(), String> {
    match started.elapsed() > PASS_BUDGET {
        true => Err(format!("{what}: over {PASS_BUDGET:?} after {round} rounds")),
        false => Ok(()),
    }
}

/// `got` must be the event `want` (not a gap).
fn expect(got: Next, want: Option<u64>, what: &str, round: u64) -> Result<(), String> {
    match got {
        Next::Event(e) if !e.gap && e.id.is_some() && e.id == want => Ok(()),
        other => Err(format!(
            "{what}, round {round}: published {want:?}, got {other:?}"
        )),
    }
}

/// The topic of event `i`: one of `TOPICS`, cycled.
fn topic(i: u64) -> String {
    let item = i % TOPICS;
    format!("{TOPIC_BASE}/g/{}/items/{item}", item % GROUPS)
}

/// Whether `topic(i)` is one the filter lets through.
fn matching(i: u64) -> bool {
    i % TOPICS % GROUPS < PATTERNS
}

/// `topic_pattern=…&…`: groups 0 to `PATTERNS − 1`, percent-encoded.
fn filter_query() -> String {
    let patterns: Vec<String> = (0..PATTERNS)
        .map(|k| {
            let pattern = format!("{TOPIC_BASE}/g/{k}/items/:id");
            format!("topic_pattern={}", client::encode(&pattern))
        })
        .collect();
    patterns.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgehub::protocol::filter::{EventTopics, Filter, FilterSpec};
    use edgehub::protocol::topics::Topics;

    #[test]
    fn the_hubs_filter_lets_through_one_topic_in_ten_and_exactly_those_matching_says() {
        let spec = FilterSpec::from_query(&filter_query()).unwrap();
        assert_eq!(spec.topic_pattern.len(), PATTERNS as usize);
        let filter = Filter::parse(&spec).unwrap().unwrap();
        let mut passed = 0;
        for i in 0..TOPICS {
            let topics = Topics::parse(vec![topic(i)]).unwrap();
            let through = filter.matches(&EventTopics::new(Some(&topics)));
            assert_eq!(through, matching(i), "{}", topic(i));
            passed += u64::from(through);
        }
        assert_eq!(passed, TOPICS * PATTERNS / GROUPS);
        assert_eq!(topic(1234), "https://bench.example/g/34/items/234");
    }
}
