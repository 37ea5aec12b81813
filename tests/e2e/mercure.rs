//! The Mercure face (`/.well-known/mercure`, DESIGN.md "Mercure"), driven as Mercure's own
//! clients drive it: form-encoded publishes, `EventSource`-style subscriptions in both protocol
//! versions (0.x `topic=`, 1.0 `match…=`), tokens of both profiles signed here with Mercure's
//! development key, private updates, resuming by update id, and token expiry. Every test on the
//! shared hub uses topics and ids under its own unique prefix: the Mercure channel is hub-wide.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::api::{admin, channel, client, now_secs, Api, Resp};
use crate::harness::{Hub, HubOptions, MERCURE_AUDIENCE, MERCURE_ISSUER, MERCURE_KEY};
use crate::sse_client::SseStream;
use crate::sse_parser::SseEvent;
use crate::{case, case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(mercure_publish_answers_200_text_plain_with_the_given_or_a_generated_id),
        case!(mercure_publish_refuses_bad_updates_with_400_and_other_bodies_with_415),
        case!(mercure_publish_without_a_valid_token_is_401_with_a_bearer_challenge),
        case!(mercure_publish_0x_token_not_covering_every_topic_is_403_and_stores_nothing),
        case!(mercure_publish_1_0_tokens_need_the_hubs_aud_and_iss_and_a_matching_grant),
        case!(mercure_tokens_from_cookies_and_the_authorization_header_wins),
        case!(mercure_subscribe_headers_come_first_and_the_next_update_is_delivered),
        case!(mercure_subscribe_0x_topic_selectors_exact_wildcard_and_uri_templates),
        case!(mercure_subscribe_1_0_match_exact_and_urlpattern_absolute_and_relative),
        case!(mercure_subscribe_bad_parameters_are_400),
        case!(mercure_sse_framing_id_event_retry_and_one_data_line_per_line),
        case!(mercure_private_updates_reach_only_subscribers_whose_selectors_match_a_topic),
        case!(mercure_resume_after_a_known_id_by_header_or_query_in_both_versions),
        case!(mercure_resume_earliest_unknown_and_reused_ids),
        case!(mercure_subscriber_token_exp_closes_the_stream),
        case!(mercure_root_is_still_the_demo_page),
        case_own_hub!(mercure_own_hub_without_anonymous_refuses_tokenless_subscribers),
        case_own_hub!(mercure_own_hub_earliest_on_an_empty_history_replays_nothing),
    ]
}

const HUB_PATH: &str = "/.well-known/mercure";
const FORM: &str = "application/x-www-form-urlencoded";
const DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";
/// The response headers that name where a resumed stream starts: 0.x, then 1.0.
const V0_RESUMED: &str = "last-event-id";
const V1_RESUMED: &str = "mercure-last-event-id";
/// How long any one awaited update may take to arrive.
const WAIT: Duration = Duration::from_secs(30);

// ---- tokens --------------------------------------------------------------------------------

/// A compact JWS over `header` and `claims`, HS256 with Mercure's development key.
fn jwt(header: &Value, claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let input = format!("{}.{}", part(header), part(claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(MERCURE_KEY.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{signature}")
}

/// A 0.x JWS (no `typ`) with these claims.
fn v0(claims: Value) -> String {
    jwt(&json!({"alg": "HS256"}), &claims)
}

/// A 0.x token with a `mercure` claim, without `exp` (as the conformance suite's).
fn v0_token(publish: &[&str], subscribe: &[&str]) -> String {
    v0(json!({"mercure": {"publish": publish, "subscribe": subscribe}}))
}

/// The 0.x token that may publish anywhere.
fn publisher() -> String {
    v0_token(&["*"], &[])
}

/// 1.0 access-token claims for this hub: its `aud` and `iss`, an hour to live.
fn v1_claims(details: &[Value]) -> Value {
    json!({
        "aud": MERCURE_AUDIENCE,
        "iss": MERCURE_ISSUER,
        "exp": now_secs() + 3600,
        "authorization_details": details,
    })
}

/// A 1.0 `at+jwt` access token with these claims.
fn v1(claims: Value) -> String {
    jwt(&json!({"alg": "HS256", "typ": "at+jwt"}), &claims)
}

fn v1_token(details: &[Value]) -> String {
    v1(v1_claims(details))
}

/// A Mercure authorization detail.
fn detail(actions: &[&str], topics: &[Value]) -> Value {
    json!({"type": DETAIL_TYPE, "actions": actions, "topics": topics})
}

fn exact(topic: &str) -> Value {
    json!({"match": topic})
}

fn pattern(p: &str) -> Value {
    json!({"match": p, "match_type": "urlpattern"})
}

// ---- requests ------------------------------------------------------------------------------

/// Percent-encodes every byte but the unreserved ones.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `name=value&…`, form-encoded, repeats kept.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The hub's path with this query.
fn hub(pairs: &[(&str, &str)]) -> String {
    format!("{HUB_PATH}?{}", form(pairs))
}

/// `POST /.well-known/mercure` with this body and these headers, nothing added.
async fn post(api: &Api, body: String, headers: &[(&str, &str)]) -> Resp {
    let mut req = client().post(format!("{}{HUB_PATH}", api.base)).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    api.send(req).await
}

/// A form publish with a bearer token (or none).
async fn publish(api: &Api, fields: &[(&str, &str)], token: Option<&str>) -> Resp {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", FORM)];
    headers.extend(bearer.as_deref().map(|b| ("authorization", b)));
    post(api, form(fields), &headers).await
}

/// Publishes with the all-topics publisher token; asserts 200 and returns the update's id.
async fn published(api: &Api, fields: &[(&str, &str)]) -> String {
    let r = publish(api, fields, Some(&publisher())).await;
    assert_eq!(r.status, 200, "publish {fields:?}: {}", r.text());
    r.text()
}

/// Opens a subscription; panics on a refusal.
async fn subscribe(api: &Api, path: &str, headers: &[(&str, &str)]) -> SseStream {
    match SseStream::open(api, path, headers).await {
        Ok(s) => s,
        Err(r) => panic!("GET {path}: {} {}", r.status, r.text()),
    }
}

/// Opens a subscription that must be refused; returns the refusal.
async fn refused(api: &Api, path: &str, headers: &[(&str, &str)]) -> Resp {
    match SseStream::open(api, path, headers).await {
        Ok(_) => panic!("GET {path} {headers:?}: opened, want a refusal"),
        Err(r) => r,
    }
}

/// Events until the one whose id is `last` (included); panics if it does not come.
async fn until(s: &mut SseStream, last: &str) -> Vec<SseEvent> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while let Some(e) = s
        .next_event(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        let done = e.last_event_id == last;
        got.push(e);
        if done {
            return got;
        }
    }
    let seen: Vec<&str> = got.iter().map(|e| e.last_event_id.as_str()).collect();
    panic!("update {last:?} never arrived; got {seen:?}");
}

/// The ids of `events` that this test published (they start with `prefix`), in order.
fn mine(events: &[SseEvent], prefix: &str) -> Vec<String> {
    events
        .iter()
        .map(|e| e.last_event_id.clone())
        .filter(|id| id.starts_with(prefix))
        .collect()
}

/// A refusal's challenge, asserting it is a Bearer one.
fn challenge(r: &Resp, what: &str) -> String {
    let c = r.header("www-authenticate").unwrap_or_default();
    assert!(c.starts_with("Bearer"), "{what}: WWW-Authenticate {c:?}");
    c
}

fn assert_401_invalid_token(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let c = challenge(r, what);
    assert!(c.contains(r#"error="invalid_token""#), "{what}: {c:?}");
}

fn assert_401_no_error_code(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let c = challenge(r, what);
    assert!(
        !c.contains("error="),
        "{what}: a missing token has no code: {c:?}"
    );
}

fn is_uuid_v4_urn(id: &str) -> bool {
    let Some(uuid) = id.strip_prefix("urn:uuid:") else {
        return false;
    };
    let groups: Vec<&str> = uuid.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = uuid
        .chars()
        .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c));
    hex && lens == [8, 4, 4, 4, 12]
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

// ---- publish -------------------------------------------------------------------------------

async fn mercure_publish_answers_200_text_plain_with_the_given_or_a_generated_id(api: Api) {
    let p = channel("m");
    let topic = format!("https://example.com/{p}/books/1");
    let alternate = format!("https://example.com/{p}/alternate");
    let id = format!("{p}-id-[\"1\"]:/x");
    let data = "line one\r\n\r\n        indented";
    let fields = [
        ("topic", topic.as_str()),
        ("topic", alternate.as_str()),
        ("data", data),
        ("id", id.as_str()),
        ("private", ""),
        ("type", "book.updated"),
        ("retry", "5000"),
        ("unknown_field", "ignored"),
    ];
    let r = publish(&api, &fields, Some(&publisher())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.content_type(), "text/plain; charset=utf-8");
    assert_eq!(r.text(), id, "the publisher's id, verbatim");

    // A reused id is accepted (the conformance suite reuses ids), and answered with itself.
    let again = publish(&api, &fields, Some(&publisher())).await;
    assert_eq!((again.status, again.text()), (200, id.clone()), "duplicate");

    // Browsers send a charset parameter; the hub makes an id when none (or an empty one) is given.
    let t = topic.as_str();
    for (fields, content_type) in [
        (
            vec![("topic", t)],
            "application/x-www-form-urlencoded;charset=UTF-8",
        ),
        (vec![("topic", t), ("id", "")], FORM),
    ] {
        let bearer = format!("Bearer {}", publisher());
        let headers = [("content-type", content_type), ("authorization", &bearer)];
        let r = post(&api, form(&fields), &headers).await;
        assert_eq!(r.status, 200, "{fields:?}: {}", r.text());
        assert!(r.content_type().starts_with("text/plain"), "{r:?}");
        assert!(is_uuid_v4_urn(&r.text()), "generated id {:?}", r.text());
    }
}

async fn mercure_publish_refuses_bad_updates_with_400_and_other_bodies_with_415(api: Api) {
    let p = channel("m");
    let topic = format!("https://example.com/{p}/bad");
    let t = topic.as_str();
    let mut watcher = subscribe(&api, &hub(&[("topic", t)]), &[]).await;

    let hub_topic = format!("{}{HUB_PATH}/subscriptions/x", api.base);
    let bad: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no topic", vec![("data", "x")]),
        ("empty topic", vec![("topic", "")]),
        ("topic *", vec![("topic", "*")]),
        ("topic in the hub's namespace", vec![("topic", &hub_topic)]),
        (
            "another host's hub namespace",
            vec![("topic", "https://example.com/.well-known/mercure/x")],
        ),
        (
            "relative hub namespace",
            vec![("topic", "/.well-known/mercure/x")],
        ),
        ("alternate * ", vec![("topic", t), ("topic", "*")]),
        ("id starting with #", vec![("topic", t), ("id", "#frag")]),
        ("id earliest", vec![("topic", t), ("id", "earliest")]),
        ("id with LF", vec![("topic", t), ("id", "a\nid: forged")]),
        ("id with NUL", vec![("topic", t), ("id", "a\0b")]),
        ("id with U+200B", vec![("topic", t), ("id", "a\u{200b}b")]),
        ("type with CR", vec![("topic", t), ("type", "t\rdata: x")]),
        ("type mercure", vec![("topic", t), ("type", "mercure")]),
        ("retry with a letter", vec![("topic", t), ("retry", "12a")]),
        ("negative retry", vec![("topic", t), ("retry", "-1")]),
    ];
    for (what, fields) in &bad {
        let r = publish(&api, fields, Some(&publisher())).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
    }

    let body = form(&[("topic", t), ("id", "not-stored")]);
    let bearer = format!("Bearer {}", publisher());
    for content_type in [Some("application/json"), Some("text/plain"), None] {
        let mut headers = vec![("authorization", bearer.as_str())];
        headers.extend(content_type.map(|ct| ("content-type", ct)));
        let r = post(&api, body.clone(), &headers).await;
        assert_eq!(r.status, 415, "content-type {content_type:?}: {}", r.text());
    }

    // None of them was stored: the next update on the topic is the first the watcher sees.
    let sentinel = published(&api, &[("topic", t), ("id", &format!("{p}-ok"))]).await;
    let got = until(&mut watcher, &sentinel).await;
    let ids: Vec<&str> = got.iter().map(|e| e.last_event_id.as_str()).collect();
    assert_eq!(ids, [sentinel.as_str()], "a refused update was dispatched");
}

async fn mercure_publish_without_a_valid_token_is_401_with_a_bearer_challenge(api: Api) {
    let p = channel("m");
    let topic = format!("https://example.com/{p}/auth");
    let fields = [("topic", topic.as_str())];

    let r = publish(&api, &fields, None).await;
    assert_401_no_error_code(&r, "no token");

    let good = publisher();
    let (head, _) = good.rsplit_once('.').unwrap();
    let other_key = {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"not the hub's key").unwrap();
        mac.update(head.as_bytes());
        format!(
            "{head}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    };
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"mercure":{"publish":["*"]}}"#)
    );
    let expired = v0(json!({"exp": now_secs() - 600, "mercure": {"publish": ["*"]}}));
    let v1_expired = v1(json!({
        "aud": MERCURE_AUDIENCE,
        "iss": MERCURE_ISSUER,
        "exp": now_secs() - 600,
        "authorization_details": [detail(&["publish"], &[exact("*")])],
    }));
    for (what, token) in [
        ("signed with another key", other_key.as_str()),
        ("alg none", none.as_str()),
        ("expired 0.x", expired.as_str()),
        ("expired 1.0", v1_expired.as_str()),
        ("not a JWT", "not-a-jwt"),
    ] {
        let r = publish(&api, &fields, Some(token)).await;
        assert_401_invalid_token(&r, what);
    }

    let bad_scheme = [
        ("content-type", FORM),
        ("authorization", "Basic dXNlcjpwdw=="),
    ];
    let r = post(&api, form(&fields), &bad_scheme).await;
    assert_eq!(r.status, 400, "a non-bearer Authorization: {}", r.text());
}

async fn mercure_publish_0x_token_not_covering_every_topic_is_403_and_stores_nothing(api: Api) {
    let p = channel("m");
    let allowed = format!("https://example.com/{p}/allowed");
    let other = format!("https://example.com/{p}/other");
    let token = v0_token(&[&allowed], &[]);
    let mut everything = subscribe(&api, &hub(&[("topic", "*")]), &[]).await;

    let refused_id = format!("{p}-refused");
    let fields = [
        ("topic", allowed.as_str()),
        ("topic", other.as_str()),
        ("id", refused_id.as_str()),
    ];
    let r = publish(&api, &fields, Some(&token)).await;
    assert_eq!(r.status, 403, "one topic not granted: {}", r.text());
    let c = challenge(&r, "403");
    assert!(c.contains(r#"error="insufficient_scope""#), "{c:?}");

    let no_claim = v0(json!({"sub": "nobody"}));
    let r = publish(&api, &[("topic", &allowed)], Some(&no_claim)).await;
    assert_eq!(r.status, 403, "no mercure.publish: {}", r.text());

    let ok_id = format!("{p}-ok");
    let ok = [("topic", allowed.as_str()), ("id", ok_id.as_str())];
    let r = publish(&api, &ok, Some(&token)).await;
    assert_eq!((r.status, r.text()), (200, ok_id.clone()), "granted topic");

    let got = until(&mut everything, &ok_id).await;
    assert_eq!(
        mine(&got, &p),
        [ok_id.as_str()],
        "the refused update went out"
    );
    let q = hub(&[("topic", &other), ("lastEventID", "earliest")]);
    let mut replay = subscribe(&api, &q, &[]).await;
    let sentinel = published(&api, &[("topic", &other), ("id", &format!("{p}-s"))]).await;
    let got = until(&mut replay, &sentinel).await;
    assert_eq!(mine(&got, &p), [sentinel], "the refused update was stored");
}

async fn mercure_publish_1_0_tokens_need_the_hubs_aud_and_iss_and_a_matching_grant(api: Api) {
    let p = channel("m");
    let books = format!("https://example.com/{p}/books/:id");
    let book = format!("https://example.com/{p}/books/1");
    let author = format!("https://example.com/{p}/authors/1");
    let grant = [detail(&["publish"], &[pattern(&books)])];

    let r = publish(&api, &[("topic", &book)], Some(&v1_token(&grant))).await;
    assert_eq!(r.status, 200, "a topic the pattern matches: {}", r.text());
    let r = publish(&api, &[("topic", &author)], Some(&v1_token(&grant))).await;
    assert_eq!(r.status, 403, "a topic it does not match: {}", r.text());
    assert!(challenge(&r, "1.0 403").contains(r#"error="insufficient_scope""#));
    let both = [("topic", book.as_str()), ("topic", author.as_str())];
    let r = publish(&api, &both, Some(&v1_token(&grant))).await;
    assert_eq!(
        r.status,
        403,
        "an alternate it does not match: {}",
        r.text()
    );
    let subscribe_only = [detail(&["subscribe"], &[exact("*")])];
    let r = publish(&api, &[("topic", &book)], Some(&v1_token(&subscribe_only))).await;
    assert_eq!(r.status, 403, "a subscribe-only grant: {}", r.text());

    let bent = |key: &str, value: Value| {
        let mut claims = v1_claims(&grant);
        claims[key] = value;
        v1(claims)
    };
    let wrong: [(&str, String); 5] = [
        (
            "wrong aud",
            bent("aud", json!("https://other.example/.well-known/mercure")),
        ),
        ("wrong iss", bent("iss", json!("https://evil.example"))),
        ("no exp", bent("exp", Value::Null)),
        ("no aud", bent("aud", Value::Null)),
        ("no iss", bent("iss", Value::Null)),
    ];
    for (what, token) in &wrong {
        let r = publish(&api, &[("topic", &book)], Some(token)).await;
        assert_401_invalid_token(&r, what);
    }
    let in_a_list = bent("aud", json!(["https://x.example", MERCURE_AUDIENCE]));
    let r = publish(&api, &[("topic", &book)], Some(&in_a_list)).await;
    assert_eq!(r.status, 200, "aud as a list holding the hub: {}", r.text());
}

async fn mercure_tokens_from_cookies_and_the_authorization_header_wins(api: Api) {
    let p = channel("m");
    let topic = format!("https://example.com/{p}/cookies");

    // Subscribers: a private update reaches the subscriber whose cookie grants it.
    let v0_cookie = format!("mercureAuthorization={}", v0_token(&[], &[&topic]));
    let v1_grant = v1_token(&[detail(&["subscribe"], &[exact(&topic)])]);
    let v1_cookie = format!("mercure_access_token={v1_grant}");
    let mut by_v0 = subscribe(&api, &hub(&[("topic", &topic)]), &[("cookie", &v0_cookie)]).await;
    let mut by_v1 = subscribe(&api, &hub(&[("match", &topic)]), &[("cookie", &v1_cookie)]).await;
    let id = format!("{p}-private");
    published(&api, &[("topic", &topic), ("private", "on"), ("id", &id)]).await;
    assert_eq!(
        mine(&until(&mut by_v0, &id).await, &p),
        [id.as_str()],
        "0.x cookie"
    );
    assert_eq!(
        mine(&until(&mut by_v1, &id).await, &p),
        [id.as_str()],
        "1.0 cookie"
    );

    // Publishers (same-origin, as a browser sends a cookie). The 1.0 cookie comes last, so a
    // failure there leaves the other cases checked.
    let v0_publisher = publisher();
    let v1_publisher = v1_token(&[detail(&["publish"], &[exact("*")])]);
    let garbage = "mercureAuthorization=garbage; mercure_access_token=garbage".to_string();
    let cases: [(&str, String, Option<&str>, u16); 4] = [
        (
            "0.x cookie",
            format!("mercureAuthorization={v0_publisher}"),
            None,
            200,
        ),
        (
            "the header wins over bad cookies",
            garbage,
            Some(&v0_publisher),
            200,
        ),
        (
            "a bad header wins over a good cookie",
            format!("mercureAuthorization={v0_publisher}"),
            Some("bad"),
            401,
        ),
        (
            "1.0 cookie",
            format!("other=1; mercure_access_token={v1_publisher}"),
            None,
            200,
        ),
    ];
    for (what, cookie, token, want) in &cases {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            ("content-type", FORM),
            ("origin", &api.base),
            ("cookie", cookie),
        ];
        headers.extend(bearer.as_deref().map(|b| ("authorization", b)));
        let r = post(&api, form(&[("topic", &topic)]), &headers).await;
        assert_eq!(r.status, *want, "{what}: {}", r.text());
    }

    // CSRF: a publish authorised by a cookie from no origin, or another site's, is refused
    // (400 `invalid_request`, as a malformed token presentation); a header token needs none.
    let cookie = format!("mercureAuthorization={v0_publisher}");
    let bearer = format!("Bearer {v0_publisher}");
    let refused: [(&str, Vec<(&str, &str)>); 3] = [
        ("no Origin", vec![]),
        ("another Origin", vec![("origin", "https://evil.example")]),
        (
            "another Referer",
            vec![("referer", "https://evil.example/page")],
        ),
    ];
    for (what, extra) in refused {
        let mut headers = vec![("content-type", FORM), ("cookie", cookie.as_str())];
        headers.extend(extra);
        let r = post(&api, form(&[("topic", &topic)]), &headers).await;
        assert_eq!(r.status, 400, "cookie from {what}: {}", r.text());
        let challenge = r
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            challenge,
            Some("Bearer error=\"invalid_request\""),
            "cookie from {what}"
        );
    }
    let headers = [("content-type", FORM), ("authorization", bearer.as_str())];
    let r = post(&api, form(&[("topic", &topic)]), &headers).await;
    assert_eq!(r.status, 200, "a header token from no Origin: {}", r.text());
}

// ---- subscribe -----------------------------------------------------------------------------

async fn mercure_subscribe_headers_come_first_and_the_next_update_is_delivered(api: Api) {
    let p = channel("m");
    let topic = format!("https://example.com/{p}/first");
    for query in [hub(&[("topic", &topic)]), hub(&[("match", &topic)])] {
        // `open` returns once the status and headers are in, and nothing is published yet.
        let mut s = subscribe(&api, &query, &[]).await;
        let ct = s.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("text/event-stream"),
            "{query}: content-type {ct:?}"
        );
        let cache = s.header("cache-control").unwrap_or_default();
        assert!(
            cache.contains("no-cache"),
            "{query}: cache-control {cache:?}"
        );
        for name in [V0_RESUMED, V1_RESUMED] {
            assert_eq!(
                s.header(name),
                None,
                "{query}: {name} without a last event id"
            );
        }
        let id = published(&api, &[("topic", &topic), ("data", "hello")]).await;
        let got = until(&mut s, &id).await;
        assert_eq!(got.len(), 1, "{query}: {got:?}");
        assert_eq!(
            (got[0].kind.as_str(), got[0].data.as_str()),
            ("message", "hello")
        );
    }
}

/// Subscribes with each query, publishes `updates` (topics, space-separated, the first the
/// canonical one; id) and a sentinel every query matches, and returns, per query, the ids of
/// `updates` it got.
async fn deliveries(
    api: &Api,
    p: &str,
    queries: &[String],
    updates: &[(String, String)],
    sentinel_topic: &str,
) -> Vec<Vec<String>> {
    let mut streams = Vec::new();
    for q in queries {
        streams.push(subscribe(api, q, &[]).await);
    }
    for (topics, id) in updates {
        let mut fields: Vec<(&str, &str)> = topics.split(' ').map(|t| ("topic", t)).collect();
        fields.push(("id", id));
        published(api, &fields).await;
    }
    let sentinel = format!("{p}-sentinel");
    published(api, &[("topic", sentinel_topic), ("id", &sentinel)]).await;
    let mut out = Vec::new();
    for s in &mut streams {
        let got = mine(&until(s, &sentinel).await, p);
        out.push(got.into_iter().filter(|id| *id != sentinel).collect());
    }
    out
}

async fn mercure_subscribe_0x_topic_selectors_exact_wildcard_and_uri_templates(api: Api) {
    let p = channel("m");
    let base = format!("https://example.com/{p}");
    let template = format!("{base}/books/{{id}}");
    let broken = format!("{base}/broken/{{id");
    let update = |path: &str, id: &str| (format!("{base}/{path}"), format!("{p}-{id}"));
    let updates = [
        update("books/1", "book"),
        update("books/1/2", "deeper"),
        update("books/{id}", "template-itself"),
        update("broken/{id", "broken-itself"),
        update("broken/1", "broken-1"),
        update("authors/1", "author"),
        (
            format!("{base}/authors/2 {base}/books/2"),
            format!("{p}-alternate"),
        ),
    ];
    let sentinel = format!("{base}/sentinel");
    let queries = [
        hub(&[("topic", &format!("{base}/books/1")), ("topic", &sentinel)]),
        hub(&[("topic", "*")]),
        hub(&[("topic", &template), ("topic", &sentinel)]),
        // Not a valid RFC 6570 template: 0.x then compares it as a plain string.
        hub(&[("topic", &broken), ("topic", &sentinel)]),
    ];
    let got = deliveries(&api, &p, &queries, &updates, &sentinel).await;
    let ids =
        |names: &[&str]| -> Vec<String> { names.iter().map(|n| format!("{p}-{n}")).collect() };
    assert_eq!(got[0], ids(&["book"]), "exact");
    let all = ids(&[
        "book",
        "deeper",
        "template-itself",
        "broken-itself",
        "broken-1",
        "author",
        "alternate",
    ]);
    assert_eq!(got[1], all, "*");
    assert_eq!(
        got[2],
        ids(&["book", "template-itself", "alternate"]),
        "URI template (and itself, and an alternate topic)"
    );
    assert_eq!(
        got[3],
        ids(&["broken-itself"]),
        "a broken template is an exact selector"
    );
}

async fn mercure_subscribe_1_0_match_exact_and_urlpattern_absolute_and_relative(api: Api) {
    let p = channel("m");
    let base = format!("https://example.com/{p}");
    let local = format!("{}/{p}", api.base);
    let updates = [
        (format!("{base}/books/1"), format!("{p}-book")),
        (format!("{base}/books/1/2"), format!("{p}-deeper")),
        (format!("{base}/books/:id"), format!("{p}-pattern-itself")),
        (format!("{local}/books/7"), format!("{p}-local-book")),
        (format!("/{p}/books/8"), format!("{p}-relative-book")),
        (format!("{base}/authors/1"), format!("{p}-author")),
    ];
    let sentinel = format!("{base}/sentinel");
    let queries = [
        hub(&[("match", &format!("{base}/books/1")), ("match", &sentinel)]),
        hub(&[
            ("match_exact", &format!("{base}/books/:id")),
            ("match", &sentinel),
        ]),
        hub(&[
            ("match_urlpattern", &format!("{base}/books/:id")),
            ("match", &sentinel),
        ]),
        // Relative: resolved against the hub's URL (http://127.0.0.1:PORT/.well-known/mercure).
        hub(&[
            ("match_urlpattern", &format!("/{p}/books/:id")),
            ("match", &sentinel),
        ]),
        hub(&[("match_exact", "*")]),
    ];
    let got = deliveries(&api, &p, &queries, &updates, &sentinel).await;
    let ids =
        |names: &[&str]| -> Vec<String> { names.iter().map(|n| format!("{p}-{n}")).collect() };
    assert_eq!(got[0], ids(&["book"]), "match= is exact");
    assert_eq!(
        got[1],
        ids(&["pattern-itself"]),
        "match_exact= does not read patterns"
    );
    assert_eq!(
        got[2],
        ids(&["book", "pattern-itself"]),
        "absolute URL pattern"
    );
    assert_eq!(
        got[3],
        ids(&["local-book", "relative-book"]),
        "relative URL pattern, against the hub's URL {}",
        api.base
    );
    assert_eq!(
        got[4].len(),
        updates.len(),
        "* under match_exact: {:?}",
        got[4]
    );
}

async fn mercure_subscribe_bad_parameters_are_400(api: Api) {
    let p = channel("m");
    let t = format!("https://example.com/{p}/x");
    let t = t.as_str();
    let bad: [(&str, String); 14] = [
        ("no parameter", HUB_PATH.to_string()),
        (
            "no matcher",
            hub(&[("foo", "bar"), ("lastEventID", "earliest")]),
        ),
        ("matchFoo", hub(&[("matchFoo", t)])),
        ("MATCH", hub(&[("MATCH", t)])),
        ("Match_urlpattern", hub(&[("Match_urlpattern", t)])),
        ("match_uritemplate", hub(&[("match_uritemplate", t)])),
        (
            "matchFoo beside match",
            hub(&[("match", t), ("matchFoo", t)]),
        ),
        ("topic and match", hub(&[("topic", t), ("match", t)])),
        (
            "bad URL pattern",
            hub(&[("match_urlpattern", "https://example.com/(")]),
        ),
        (
            "bad relative URL pattern",
            hub(&[("match_urlpattern", "/books/:id(")]),
        ),
        ("empty topic", hub(&[("topic", "")])),
        ("empty match", hub(&[("match", "")])),
        ("control character", hub(&[("match", "a\nb")])),
        ("format character", hub(&[("topic", "a\u{202e}b")])),
    ];
    for (what, path) in &bad {
        let r = refused(&api, path, &[]).await;
        assert_eq!(r.status, 400, "{what} ({path}): {}", r.text());
    }
}

// ---- framing -------------------------------------------------------------------------------

/// The lines of the raw SSE block whose `id:` is `id`.
fn block<'a>(raw: &'a str, id: &str) -> Vec<&'a str> {
    let want = format!("id: {id}");
    raw.split("\n\n")
        .map(|b| b.lines().collect::<Vec<_>>())
        .find(|lines| lines.contains(&want.as_str()))
        .unwrap_or_else(|| panic!("no block with {want:?} in {raw:?}"))
}

async fn mercure_sse_framing_id_event_retry_and_one_data_line_per_line(api: Api) {
    let p = channel("m");
    let topic = format!("https://example.com/{p}/framing");
    let mut s = subscribe(&api, &hub(&[("topic", &topic)]), &[]).await;
    let typed = format!("{p}-typed");
    let data = "a\r\nb\rc\nd\n\n   e";
    published(
        &api,
        &[
            ("topic", &topic),
            ("id", &typed),
            ("type", "book.updated"),
            ("retry", "5000"),
            ("data", data),
        ],
    )
    .await;
    let plain = format!("{p}-plain");
    published(&api, &[("topic", &topic), ("id", &plain), ("data", "x")]).await;
    let generated = published(&api, &[("topic", &topic)]).await;

    let got = until(&mut s, &generated).await;
    let raw = String::from_utf8_lossy(&s.raw).into_owned();

    let typed_block = block(&raw, &typed);
    let (data_lines, mut others): (Vec<&str>, Vec<&str>) =
        typed_block.iter().partition(|l| l.starts_with("data"));
    others.sort_unstable();
    let id_line = format!("id: {typed}");
    assert_eq!(
        others,
        ["event: book.updated", id_line.as_str(), "retry: 5000"],
        "the type, the retry and the id, nothing else"
    );
    assert_eq!(
        data_lines,
        [
            "data: a",
            "data: b",
            "data: c",
            "data: d",
            "data: ",
            "data:    e"
        ],
        "one data field per line, split on CRLF, CR and LF"
    );
    assert_eq!(
        block(&raw, &plain),
        [format!("id: {plain}"), "data: x".to_string()],
        "no event: or retry: without a type or retry"
    );
    assert_eq!(
        block(&raw, &generated),
        [format!("id: {generated}"), "data: ".to_string()],
        "no data: one empty data field, so the event is still dispatched"
    );

    let seen: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|e| (e.kind.as_str(), e.data.as_str(), e.last_event_id.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("book.updated", "a\nb\nc\nd\n\n   e", typed.as_str()),
            ("message", "x", plain.as_str()),
            ("message", "", generated.as_str()),
        ],
        "as an EventSource sees them"
    );
}

// ---- private updates -----------------------------------------------------------------------

async fn mercure_private_updates_reach_only_subscribers_whose_selectors_match_a_topic(api: Api) {
    let p = channel("m");
    let canonical = format!("https://example.com/{p}/private/1");
    let alternate = format!("https://example.com/{p}/users/alice/{{?topic}}");
    let other = format!("https://example.com/{p}/other");
    let template = format!("https://example.com/{p}/private/{{id}}");
    let privates = format!("https://example.com/{p}/private/:id");
    let c = canonical.as_str();
    let bearer = |token: String| format!("Bearer {token}");
    let v0_canonical = bearer(v0_token(&[], &[c]));
    let v0_alternate = bearer(v0_token(&[], &[&alternate]));
    let v0_template = bearer(v0_token(&[], &[&template]));
    let v0_other = bearer(v0_token(&[], &[&other]));
    let v1_pattern = bearer(v1_token(&[detail(&["subscribe"], &[pattern(&privates)])]));
    let v1_other = bearer(v1_token(&[detail(&["subscribe"], &[exact(&other)])]));
    let v1_publish_only = bearer(v1_token(&[detail(&["publish"], &[exact("*")])]));

    // Two private updates: one on the canonical topic alone, one with an alternate topic.
    let only = format!("{p}-canonical-only");
    let both = format!("{p}-with-alternate");
    let (o, b) = (only.as_str(), both.as_str());
    let (topic, matcher) = (hub(&[("topic", c)]), hub(&[("match", c)]));
    #[rustfmt::skip]
    let subscribers: [(&str, &String, Option<&str>, Vec<&str>); 9] = [
        ("anonymous topic=*", &hub(&[("topic", "*")]), None, vec![]),
        ("anonymous match=", &matcher, None, vec![]),
        ("0.x selector = canonical", &topic, Some(&v0_canonical), vec![o, b]),
        ("0.x selector = alternate", &topic, Some(&v0_alternate), vec![b]),
        ("0.x template selector", &topic, Some(&v0_template), vec![o, b]),
        ("0.x other selector", &topic, Some(&v0_other), vec![]),
        ("1.0 pattern grant", &matcher, Some(&v1_pattern), vec![o, b]),
        ("1.0 other grant", &matcher, Some(&v1_other), vec![]),
        ("1.0 publish-only grant", &matcher, Some(&v1_publish_only), vec![]),
    ];
    let mut streams = Vec::new();
    for (what, path, bearer, _) in &subscribers {
        let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", *b)).collect();
        let s = SseStream::open(&api, path, &headers).await;
        streams.push(s.unwrap_or_else(|r| panic!("{what}: {} {}", r.status, r.text())));
    }

    published(&api, &[("topic", c), ("private", "on"), ("id", o)]).await;
    published(
        &api,
        &[
            ("topic", c),
            ("topic", &alternate),
            ("private", ""),
            ("id", b),
        ],
    )
    .await;
    let sentinel = published(&api, &[("topic", c), ("id", &format!("{p}-public"))]).await;
    for (s, (what, .., want)) in streams.iter_mut().zip(&subscribers) {
        let mut got = mine(&until(s, &sentinel).await, &p);
        assert_eq!(got.pop().as_ref(), Some(&sentinel), "{what}");
        assert_eq!(&got, want, "{what}");
    }

    // A replay is filtered the same way.
    let q = hub(&[("topic", c), ("lastEventID", "earliest")]);
    let mut anonymous = subscribe(&api, &q, &[]).await;
    let mut granted = subscribe(&api, &q, &[("authorization", &v0_canonical)]).await;
    let next = published(&api, &[("topic", c), ("id", &format!("{p}-after"))]).await;
    let got = mine(&until(&mut anonymous, &next).await, &p);
    assert_eq!(got, [sentinel.clone(), next.clone()], "anonymous replay");
    let got = mine(&until(&mut granted, &next).await, &p);
    assert_eq!(got, [only, both, sentinel, next], "granted replay");
}

// ---- resume --------------------------------------------------------------------------------

/// Opens `path`, publishes a sentinel on `topic`, and returns the stream and the ids of this
/// test's updates it got before the sentinel. `history` gains the sentinel.
async fn replayed(
    api: &Api,
    p: &str,
    path: &str,
    headers: &[(&str, &str)],
    topic: &str,
    history: &mut Vec<String>,
) -> (SseStream, Vec<String>) {
    let mut s = subscribe(api, path, headers).await;
    let sentinel = format!("{p}-s{}", history.len());
    published(api, &[("topic", topic), ("id", &sentinel)]).await;
    history.push(sentinel.clone());
    let mut got = mine(&until(&mut s, &sentinel).await, p);
    got.pop();
    (s, got)
}

async fn mercure_resume_after_a_known_id_by_header_or_query_in_both_versions(api: Api) {
    let p = channel("m");
    let topic = format!("https://example.com/{p}/resume");
    let elsewhere = format!("https://example.com/{p}/elsewhere");
    let t = topic.as_str();
    let mut history = Vec::new();
    for name in ["a", "b"] {
        history.push(published(&api, &[("topic", t), ("id", &format!("{p}-{name}"))]).await);
    }
    // Not of this subscription's matchers: never replayed to it.
    published(&api, &[("topic", &elsewhere), ("id", &format!("{p}-x"))]).await;
    history.push(published(&api, &[("topic", t), ("id", &format!("{p}-c"))]).await);
    let (a, b, c) = (history[0].clone(), history[1].clone(), history[2].clone());

    // (what, query, Last-Event-ID header, resumed after, response header)
    #[rustfmt::skip]
    let cases: [(&str, String, Option<&str>, &str, &str); 5] = [
        ("0.x header", hub(&[("topic", t)]), Some(&a), &a, V0_RESUMED),
        ("1.0 header", hub(&[("match", t)]), Some(&a), &a, V1_RESUMED),
        ("0.x query", hub(&[("topic", t), ("lastEventID", &b)]), None, &b, V0_RESUMED),
        ("1.0 query", hub(&[("match", t), ("last_event_id", &b)]), None, &b, V1_RESUMED),
        ("header wins", hub(&[("match", t), ("last_event_id", &a)]), Some(&c), &c, V1_RESUMED),
    ];
    for (what, path, header, after, response_header) in cases {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("last-event-id", *h)).collect();
        let from = history.iter().position(|id| id == after).unwrap() + 1;
        let want = history[from..].to_vec();
        let (s, got) = replayed(&api, &p, &path, &headers, t, &mut history).await;
        assert_eq!(got, want, "{what}: replayed after {after}");
        assert_eq!(s.header(response_header).as_deref(), Some(after), "{what}");
        let other = match response_header {
            V0_RESUMED => V1_RESUMED,
            _ => V0_RESUMED,
        };
        assert_eq!(s.header(other), None, "{what}: only {response_header}");
    }

    for path in [hub(&[("topic", t)]), hub(&[("match", t)])] {
        let (s, got) = replayed(&api, &p, &path, &[], t, &mut history).await;
        assert!(
            got.is_empty(),
            "{path}: no last event id, no replay: {got:?}"
        );
        assert_eq!(s.header(V0_RESUMED), None, "{path}");
        assert_eq!(s.header(V1_RESUMED), None, "{path}");
    }
}

async fn mercure_resume_earliest_unknown_and_reused_ids(api: Api) {
    let p = channel("m");
    let topic = format!("https://example.com/{p}/history");
    let t = topic.as_str();
    let reused = format!("{p}-reused");
    let mut history = Vec::new();
    for id in [format!("{p}-first"), reused.clone(), format!("{p}-between")] {
        history.push(published(&api, &[("topic", t), ("id", &id)]).await);
    }
    history.push(published(&api, &[("topic", t), ("id", &reused)]).await);
    history.push(published(&api, &[("topic", t), ("id", &format!("{p}-last"))]).await);

    let unknown = format!("{p}-never-published");
    #[rustfmt::skip]
    let cases: [(&str, String, Option<&str>, &str); 4] = [
        ("0.x earliest", hub(&[("topic", t), ("lastEventID", "earliest")]), None, V0_RESUMED),
        ("1.0 earliest header", hub(&[("match", t)]), Some("earliest"), V1_RESUMED),
        ("1.0 unknown id", hub(&[("match", t), ("last_event_id", &unknown)]), None, V1_RESUMED),
        ("0.x unknown id header", hub(&[("topic", t)]), Some(&unknown), V0_RESUMED),
    ];
    for (what, path, header, response_header) in cases {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("last-event-id", *h)).collect();
        let want = history.clone();
        let (s, got) = replayed(&api, &p, &path, &headers, t, &mut history).await;
        assert_eq!(got, want, "{what}: everything retained");
        assert_eq!(
            s.header(response_header).as_deref(),
            Some("earliest"),
            "{what}"
        );
    }

    // 1.0: a reused id resolves to its earliest update; the later one is replayed.
    let want = history[2..].to_vec();
    assert_eq!(want[1], reused, "the reused id comes again");
    let path = hub(&[("match", t)]);
    let headers = [("last-event-id", reused.as_str())];
    let (s, got) = replayed(&api, &p, &path, &headers, t, &mut history).await;
    assert_eq!(
        got, want,
        "resumed after the first update with the reused id"
    );
    assert_eq!(s.header(V1_RESUMED), Some(reused));
}

// ---- expiry, anonymous, the root ----------------------------------------------------------

async fn mercure_subscriber_token_exp_closes_the_stream(api: Api) {
    const LIFETIME: i64 = 5;
    /// The spec says "no later than exp"; this margin only absorbs scheduling.
    const MARGIN: Duration = Duration::from_secs(10);
    /// How long to keep reading after the margin, to report when the stream did end.
    const REPORT: Duration = Duration::from_secs(45);
    let p = channel("m");
    let topic = format!("https://example.com/{p}/exp");
    let exp = now_secs() + LIFETIME;
    let v0_expiring = v0(json!({"exp": exp, "mercure": {"subscribe": [&topic]}}));
    let mut v1_claims = v1_claims(&[detail(&["subscribe"], &[exact(&topic)])]);
    v1_claims["exp"] = json!(exp);
    let v1_expiring = v1(v1_claims);
    let opened_at = Instant::now();
    let mut streams = Vec::new();
    for (path, token) in [
        (hub(&[("topic", &topic)]), v0_expiring),
        (hub(&[("match", &topic)]), v1_expiring),
    ] {
        let bearer = format!("Bearer {token}");
        streams.push((
            path.clone(),
            subscribe(&api, &path, &[("authorization", &bearer)]).await,
        ));
    }
    let id = published(
        &api,
        &[
            ("topic", &topic),
            ("private", ""),
            ("id", &format!("{p}-u")),
        ],
    )
    .await;
    for (path, s) in &mut streams {
        assert_eq!(
            mine(&until(s, &id).await, &p),
            [id.as_str()],
            "{path}: before exp"
        );
    }

    let exp_at = opened_at + Duration::from_secs(LIFETIME as u64);
    for (path, s) in &mut streams {
        s.read_to_end((exp_at + MARGIN).saturating_duration_since(Instant::now()))
            .await;
        if !s.ended() {
            s.read_to_end(REPORT).await;
            let when = match s.ended() {
                true => format!("ended {:?} after exp", exp_at.elapsed()),
                false => format!("still open {:?} after exp", exp_at.elapsed()),
            };
            panic!("{path}: the stream outlived its token's exp by more than {MARGIN:?}: {when}");
        }
    }
}

async fn mercure_root_is_still_the_demo_page(api: Api) {
    let r = api.get("/", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.content_type().starts_with("text/html"),
        "{}",
        r.content_type()
    );
}

async fn start(vars: &[(&str, &str)]) -> Hub {
    let started = Hub::start(HubOptions::with_vars(vars)).await;
    started.unwrap_or_else(|why| panic!("starting this test's own hub: {why}"))
}

async fn mercure_own_hub_without_anonymous_refuses_tokenless_subscribers(_: Api) {
    let hub_ = start(&[("MERCURE_ANONYMOUS", "0")]).await;
    let api = Api::new(hub_.base());
    let p = channel("m");
    let topic = format!("https://example.com/{p}/t");
    let bearer = format!("Bearer {}", v0(json!({"sub": "no mercure claim"})));
    let path = hub(&[("topic", &topic)]);
    let mut s = subscribe(&api, &path, &[("authorization", &bearer)]).await;
    let id = published(&api, &[("topic", &topic)]).await;
    let got = until(&mut s, &id).await;
    assert_eq!(got.len(), 1, "a valid token gets public updates");

    for path in [hub(&[("topic", "*")]), hub(&[("match", "*")])] {
        let r = refused(&api, &path, &[("authorization", "Bearer nope")]).await;
        assert_401_invalid_token(&r, &format!("bad token {path}"));
        let r = refused(&api, &path, &[]).await;
        assert_401_no_error_code(&r, &format!("anonymous {path}"));
    }
    drop(s);
    hub_.cleanup().await;
}

async fn mercure_own_hub_earliest_on_an_empty_history_replays_nothing(_: Api) {
    let name = channel("mchan");
    let hub_ = start(&[("MERCURE_CHANNEL", &name)]).await;
    let api = Api::new(hub_.base());
    let mut streams = Vec::new();
    for (path, header) in [
        (
            hub(&[("topic", "*"), ("lastEventID", "earliest")]),
            V0_RESUMED,
        ),
        (
            hub(&[("match", "*"), ("last_event_id", "anything")]),
            V1_RESUMED,
        ),
    ] {
        let s = subscribe(&api, &path, &[]).await;
        assert_eq!(s.header(header).as_deref(), Some("earliest"), "{path}");
        streams.push(s);
    }
    let topic = format!("https://example.com/{name}/first");
    let id = published(&api, &[("topic", &topic), ("data", "first")]).await;
    for s in &mut streams {
        let got = until(s, &id).await;
        assert_eq!(got.len(), 1, "nothing before the first update: {got:?}");
    }
    // The update went to the channel MERCURE_CHANNEL names, as its first event.
    let info = api.get(&format!("/channels/{name}"), Some(&admin())).await;
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json()["head"], json!(1), "{}", info.text());
    drop(streams);
    hub_.cleanup().await;
}
