//! `POST /tokens` (docs/API.md#minting): no escalation, `ttl` bounds, a minted token never
//! outlives its caller and grants exactly what it names; a short one works as `?token=` on the
//! streams and polls, and an SSE stream opened with one ends by itself when it expires.

use std::fmt::Write as _;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edgehub::auth::{verify, TokenSource};
use serde_json::{json, Value};

use crate::api::{admin, channel, client, now_secs, token, Api, Resp};
use crate::harness::SECRET;
use crate::publish::assert_problem;
use crate::sse_client::{event_ids, SseStream};
use crate::sse_parser::Item;
use crate::ws_client::WsClient;
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(mint_refuses_escalation_bad_ttls_and_bad_bodies),
        case!(minted_token_never_outlives_its_caller),
        case!(minted_token_grants_what_it_names_and_nothing_else),
        case!(minted_short_token_works_as_query_token_on_poll_sse_and_ws),
        case!(sse_on_a_minted_query_token_ends_when_the_token_expires),
    ]
}

/// The `POST /tokens` body limit.
const MINT_BODY_BYTES: usize = 16 * 1024;
const WAIT: Duration = Duration::from_secs(30);

/// `POST /tokens` with a raw body, a content type and a bearer token, each optional.
async fn mint_raw(
    api: &Api,
    query: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
    bearer: Option<&str>,
) -> Resp {
    let mut req = client()
        .post(format!("{}/tokens{query}", api.base))
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    api.send(req).await
}

async fn mint(api: &Api, body: &Value, bearer: &str) -> Resp {
    let bytes = body.to_string().into_bytes();
    mint_raw(api, "", bytes, Some("application/json"), Some(bearer)).await
}

/// Mints and returns the new token; panics unless 201.
async fn minted(api: &Api, body: &Value, bearer: &str) -> String {
    let r = mint(api, body, bearer).await;
    assert_eq!(r.status, 201, "mint {body}: {}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

/// A token's payload, decoded without checking it.
fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap_or("");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap_or_default()).unwrap_or_default()
}

/// `POST /tokens` bodies from a caller that may publish to `P:pub:*` and subscribe to `P:*`
/// (`P` a fresh prefix): status, code, what, body.
const MINT_TABLE: &str = r#"
201 -                     | inside the caller's prefix  | {"subscribe": ["P:x"], "ttl": 60}
201 -                     | publish inside              | {"publish": ["P:pub:a"], "ttl": 60}
201 -                     | the caller's own patterns   | {"publish": ["P:pub:*"], "subscribe": ["P:*"], "ttl": 60}
403 forbidden             | publish *                   | {"publish": ["*"], "ttl": 60}
403 forbidden             | subscribe *                 | {"subscribe": ["*"], "ttl": 60}
403 forbidden             | subscribe right as publish  | {"publish": ["P:x"], "ttl": 60}
403 forbidden             | a wider prefix              | {"publish": ["P:pub*"], "ttl": 60}
403 forbidden             | another channel             | {"subscribe": ["elsewhere"], "ttl": 60}
403 forbidden             | one good, one escalating    | {"subscribe": ["P:x", "other"], "ttl": 60}
400 bad_request           | ttl 0                       | {"subscribe": ["P:x"], "ttl": 0}
400 bad_request           | ttl -1                      | {"subscribe": ["P:x"], "ttl": -1}
400 bad_request           | ttl over the max            | {"subscribe": ["P:x"], "ttl": 3601}
201 -                     | ttl at the max              | {"subscribe": ["P:x"], "ttl": 3600}
400 bad_request           | ttl 1.5                     | {"subscribe": ["P:x"], "ttl": 1.5}
400 bad_request           | ttl as a string             | {"subscribe": ["P:x"], "ttl": "60"}
400 bad_request           | no ttl                      | {"subscribe": ["P:x"]}
400 bad_request           | no pattern                  | {"ttl": 60}
400 bad_request           | bad pattern                 | {"subscribe": ["a b"], "ttl": 60}
400 bad_request           | star in the middle          | {"subscribe": ["*x"], "ttl": 60}
400 bad_request           | unknown member              | {"subscribe": ["P:x"], "ttl": 60, "admin": true}
400 bad_request           | a JSON array                | [{"subscribe": ["P:x"], "ttl": 60}]
400 bad_request           | a member twice              | {"subscribe": ["P:x"], "ttl": 60, "ttl": 9999}
400 bad_request,invalid_json | not JSON                 | nope
"#;

async fn mint_refuses_escalation_bad_ttls_and_bad_bodies(api: Api) {
    let p = channel("mint");
    let caller = token(&[&format!("{p}:pub:*")], &[&format!("{p}:*")], 600);
    let json_ct = Some("application/json");
    let mut report = String::new();
    let mut check = |what: &str, r: &Resp, status: u16, codes: &str| {
        let code = r.json()["code"].as_str().unwrap_or("-").to_string();
        if r.status != status || !codes.split(',').any(|c| c == code) {
            let _ = writeln!(
                report,
                "{what}: want {status} {codes}, got {} {}",
                r.status,
                r.text()
            );
        }
    };
    let rows: Vec<&str> = MINT_TABLE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(rows.len(), 23, "MINT_TABLE rows");
    for line in rows {
        let mut cols = line.splitn(3, '|').map(str::trim);
        let (want, what, body) = (
            cols.next().unwrap(),
            cols.next().unwrap(),
            cols.next().unwrap(),
        );
        let (status, codes) = want.split_once(' ').unwrap();
        let body = body.replace("\"P:", &format!("\"{p}:")).into_bytes();
        let r = mint_raw(&api, "", body, json_ct, Some(&caller)).await;
        check(what, &r, status.parse().unwrap(), codes);
    }
    for (what, len, status, code) in [
        ("sub of 256 bytes", 256, 201, "-"),
        ("sub of 257 bytes", 257, 400, "bad_request"),
    ] {
        // Naming a sub takes a backend's `*` token.
        let body = json!({"subscribe": [format!("{p}:x")], "ttl": 60, "sub": "s".repeat(len)});
        let backend = crate::api::backend();
        check(what, &mint(&api, &body, &backend).await, status, code);
    }

    let good = json!({"subscribe": [format!("{p}:x")], "ttl": 60}).to_string();
    let body = || good.clone().into_bytes();
    let expired = token(&["*"], &["*"], -120);
    // A query token is not read here: the request counts as anonymous.
    let query = format!("?token={}", token(&["*"], &["*"], 60));
    let r = mint_raw(&api, "", body(), Some("text/plain"), Some(&caller)).await;
    check("text/plain", &r, 415, "unsupported_media_type");
    let r = mint_raw(&api, "", body(), None, Some(&caller)).await;
    check("no content type", &r, 415, "unsupported_media_type");
    let r = mint_raw(
        &api,
        "",
        padded(&good, MINT_BODY_BYTES + 1),
        json_ct,
        Some(&caller),
    )
    .await;
    check("body over 16 KiB", &r, 413, "too_large");
    let r = mint_raw(
        &api,
        "",
        padded(&good, MINT_BODY_BYTES),
        json_ct,
        Some(&caller),
    )
    .await;
    check("body of exactly 16 KiB", &r, 201, "-");
    let r = mint_raw(&api, "", body(), json_ct, None).await;
    check("no token", &r, 401, "unauthorized");
    let r = mint_raw(&api, "", body(), json_ct, Some(&expired)).await;
    check("expired caller", &r, 401, "token_expired");
    let r = mint_raw(&api, &query, body(), json_ct, None).await;
    check("short query token, no header", &r, 401, "unauthorized");
    assert!(report.is_empty(), "POST /tokens:\n{report}");
}

/// `json` followed by spaces up to `len` bytes: still the same JSON document.
fn padded(json: &str, len: usize) -> Vec<u8> {
    let mut body = json.as_bytes().to_vec();
    body.resize(len.max(body.len()), b' ');
    body
}

async fn minted_token_never_outlives_its_caller(api: Api) {
    let c = channel("mintexp");
    let short_caller = token(&[], &[&c], 40);
    let caller_exp = payload(&short_caller)["exp"].as_i64().unwrap();
    for (caller, ttl, what) in [
        (short_caller.clone(), 300, "a caller with 40 s left"),
        (token(&[], &[&c], 3600), 120, "a caller with an hour left"),
    ] {
        let before = now_secs();
        let r = mint(&api, &json!({"subscribe": [c], "ttl": ttl}), &caller).await;
        let after = now_secs();
        assert_eq!(r.status, 201, "{what}: {}", r.text());
        let body = r.json();
        let t = body["token"].as_str().unwrap();
        let claims = payload(t);
        let (exp, iat) = (
            claims["exp"].as_i64().unwrap(),
            claims["iat"].as_i64().unwrap(),
        );
        // The hub's clock is this machine's: iat is "now" give or take the request.
        assert!(
            (before - 2..=after + 2).contains(&iat),
            "{what}: iat {iat}, now {before}..{after}"
        );
        let caller_exp_here = payload(&caller)["exp"].as_i64().unwrap();
        assert_eq!(exp, (iat + ttl).min(caller_exp_here), "{what}: {claims}");
        let expires_at = edgehub::protocol::envelope::format_time(exp * 1000).unwrap();
        assert_eq!(body["expires_at"], json!(expires_at), "{what}");
        assert_eq!(
            claims["sub"],
            json!("edgehub-e2e"),
            "{what}: sub defaults to the caller's"
        );
        let grant = verify(t, SECRET, now_secs(), TokenSource::Header, 300);
        assert!(
            grant.is_ok(),
            "{what}: the minted token verifies: {grant:?}"
        );
    }
    assert_eq!(
        payload(&minted(&api, &json!({"subscribe": [c], "ttl": 300}), &short_caller).await)["exp"],
        json!(caller_exp)
    );
    // Only a backend's `*` token names another sub; any other keeps its own.
    let body = json!({"subscribe": [c], "ttl": 60, "sub": "browser-7", "info": {"name": "Ada"}});
    let named = minted(&api, &body, &crate::api::backend()).await;
    assert_eq!(payload(&named)["sub"], json!("browser-7"));
    assert_eq!(payload(&named)["edgehub"]["info"], json!({"name": "Ada"}));
    let r = mint(&api, &body, &admin()).await;
    assert_eq!(
        r.status,
        403,
        "another's sub from a user's token: {}",
        r.text()
    );
    // A user's token mints tokens that keep its sub and its info.
    let again = minted(&api, &json!({"subscribe": [c], "ttl": 60}), &named).await;
    assert_eq!(payload(&again)["sub"], json!("browser-7"));
    assert_eq!(payload(&again)["edgehub"]["info"], json!({"name": "Ada"}));
    for (info, what) in [
        (json!([1]), "an array"),
        (json!("Ada"), "a string"),
        (json!({"n": "x".repeat(1100)}), "over 1 KiB"),
    ] {
        let body = json!({"subscribe": [c], "ttl": 60, "sub": "u", "info": info});
        let r = mint(&api, &body, &crate::api::backend()).await;
        assert_eq!(r.status, 400, "info {what}: {}", r.text());
    }
}

async fn minted_token_grants_what_it_names_and_nothing_else(api: Api) {
    let c = channel("mintuse");
    let other = channel("mintuse");
    let sub_prefix = format!("{c}:sub:");
    let t = minted(
        &api,
        &json!({"publish": [c], "subscribe": [c, format!("{sub_prefix}*")], "ttl": 600}),
        &admin(),
    )
    .await;
    let read_only = format!("{sub_prefix}x");
    let body = json!({"data": "minted"});
    let r = api.publish(&c, &body, &t).await;
    assert_eq!(r.status, 201, "publish where it may: {}", r.text());
    for ch in [&other, &read_only] {
        assert_problem(
            &api.publish(ch, &body, &t).await,
            403,
            "forbidden",
            &format!("publish to {ch}"),
        );
    }
    for ch in [&c, &read_only] {
        for path in [format!("/poll/{ch}?since=0"), format!("/channels/{ch}")] {
            let r = api.get(&path, Some(&t)).await;
            assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        }
    }
    for path in [format!("/poll/{other}"), format!("/channels/{other}")] {
        assert_problem(&api.get(&path, Some(&t)).await, 403, "forbidden", &path);
    }
    let purge = |ch: &str| {
        let req = client()
            .delete(format!("{}/channels/{ch}/events", api.base))
            .bearer_auth(&t);
        api.send(req)
    };
    assert_problem(&purge(&other).await, 403, "forbidden", "purge elsewhere");
    assert_problem(
        &purge(&read_only).await,
        403,
        "forbidden",
        "purge a read-only channel",
    );

    // On a socket: publish frames where it may publish, a 403 frame where it may only read.
    let (mut ws, _) = WsClient::subscribe(&api, &c, None, Some(&t)).await;
    ws.send_text(r#"{"op":"publish","data":1,"ref":"a"}"#).await;
    let frames = ws.frames_through(2, WAIT).await;
    assert_eq!(
        frames.last().map(|f| f["id"].clone()),
        Some(json!(2)),
        "{frames:?}"
    );
    ws.close().await;
    let (mut ws, _) = WsClient::subscribe(&api, &read_only, None, Some(&t)).await;
    ws.send_text(r#"{"op":"publish","data":1,"ref":"b"}"#).await;
    let e = ws.next_json(WAIT).await;
    assert_eq!(
        (&e["op"], &e["status"]),
        (&json!("error"), &json!(403)),
        "{e}"
    );
    ws.close().await;

    // Minting again from a minted token stays inside it.
    assert_eq!(
        mint(&api, &json!({"subscribe": [read_only], "ttl": 60}), &t)
            .await
            .status,
        201
    );
    let r = mint(&api, &json!({"publish": [read_only], "ttl": 60}), &t).await;
    assert_problem(
        &r,
        403,
        "forbidden",
        "re-mint publish on a read-only channel",
    );
}

async fn minted_short_token_works_as_query_token_on_poll_sse_and_ws(api: Api) {
    let c = channel("mintq");
    let q = minted(&api, &json!({"subscribe": [c], "ttl": 300}), &admin()).await;
    let r = api.get(&format!("/poll/{c}?since=0&token={q}"), None).await;
    assert_eq!(
        r.status,
        200,
        "poll with a minted query token: {}",
        r.text()
    );
    match SseStream::open(&api, &format!("/sse/{c}?token={q}"), &[]).await {
        Ok(mut s) => {
            let first = s.next_item(WAIT).await;
            assert!(matches!(first, Some(Item::Comment(_))), "SSE: {first:?}");
        }
        Err(r) => panic!("SSE with a minted query token: {} {}", r.status, r.text()),
    }
    match WsClient::open(&api, &format!("/ws/{c}?token={q}"), None).await {
        Ok(mut ws) => {
            assert_eq!(ws.next_json(WAIT).await["op"], json!("ready"));
            ws.close().await;
        }
        Err(r) => panic!("WS with a minted query token: {} {}", r.status, r.text()),
    }
    // One second over QUERY_TOKEN_MAX_SECONDS: fine in a header, refused in a URL.
    let long = minted(&api, &json!({"subscribe": [c], "ttl": 301}), &admin()).await;
    let r = api.get(&format!("/poll/{c}?token={long}"), None).await;
    assert_problem(
        &r,
        401,
        "query_token_too_long_lived",
        "a 301 s minted query token",
    );
    assert_eq!(
        api.get(&format!("/poll/{c}"), Some(&long)).await.status,
        200
    );
}

/// docs/API.md#streams-end-at-expiry, the `EventSource` way: a token minted for 5 s, sent as
/// `?token=`, ends its stream by itself when the token stops being accepted (`exp` plus the
/// 30 s of skew), after delivering what was published; a reconnect with it is then refused.
async fn sse_on_a_minted_query_token_ends_when_the_token_expires(api: Api) {
    let c = channel("mintsse");
    let q = minted(&api, &json!({"subscribe": [c], "ttl": 5}), &admin()).await;
    let exp = payload(&q)["exp"].as_i64().unwrap();
    let mut s = match SseStream::open(&api, &format!("/sse/{c}?since=0&token={q}"), &[]).await {
        Ok(s) => s,
        Err(r) => panic!("SSE: {} {}", r.status, r.text()),
    };
    let r = api
        .publish(&c, &json!({"data": "before expiry"}), &admin())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let got = s.read_to_end(Duration::from_secs(60)).await;
    let lived = s.opened.elapsed();
    assert!(
        s.ended(),
        "a stream on a 5 s token was still open after 60 s"
    );
    assert_eq!(event_ids(&got), vec![1]);
    assert!(
        now_secs() >= exp + 29 && lived < Duration::from_secs(50),
        "ended {lived:?} after opening; exp {exp}, now {}",
        now_secs()
    );
    // Reconnecting with the spent token (EventSource would, 2 s later) is refused: the stream
    // lived exactly as long as the token is accepted, so there is no reconnect loop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    match SseStream::open(&api, &format!("/sse/{c}?token={q}"), &[]).await {
        Ok(_) => panic!("a stream opened on a token past exp plus skew"),
        Err(r) => assert_eq!(r.status, 401, "{}", r.text()),
    }
}
