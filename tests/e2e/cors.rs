//! CORS (docs/API.md#cors) on hubs of their own: preflights from admitted origins name each
//! path's methods; other origins get a 403 preflight and no CORS headers at all; every ordinary
//! answer to an admitted origin (200, 201, 204, 304, problems, the SSE stream) is readable by its
//! script; credentials are never allowed; `CORS_ORIGINS=*` admits any origin as `*`.

use std::fmt::Write as _;

use serde_json::json;

use crate::api::{admin, channel, client, token, Api, Resp};
use crate::harness::{Hub, HubOptions};
use crate::publish::assert_problem;
use crate::sse_client::SseStream;
use crate::{case_own_hub, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case_own_hub!(cors_admits_exactly_the_listed_origins),
        case_own_hub!(cors_star_admits_any_origin_as_star),
    ]
}

const APP: &str = "https://app.example";
const VITE: &str = "http://127.0.0.1:5173";
const ALLOW_HEADERS: &str =
    "authorization, content-type, idempotency-key, if-none-match, last-event-id";
const EXPOSE_HEADERS: &str = "etag, www-authenticate, allow";

/// Each path the hub knows and the methods its preflight must name.
fn paths(c: &str) -> Vec<(String, &'static str)> {
    vec![
        ("/".into(), "GET, HEAD"),
        ("/healthz".into(), "GET, HEAD"),
        (format!("/channels/{c}/events"), "POST, DELETE"),
        (format!("/channels/{c}"), "GET, HEAD"),
        (format!("/poll/{c}"), "GET, HEAD"),
        (format!("/sse/{c}"), "GET"),
        (format!("/ws/{c}"), "GET"),
        ("/tokens".into(), "POST"),
    ]
}

async fn preflight(api: &Api, path: &str, origin: Option<&str>) -> Resp {
    let mut req = client()
        .request(reqwest::Method::OPTIONS, format!("{}{path}", api.base))
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        );
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    api.send(req).await
}

/// Everything wrong with a 204 preflight answer to `origin` (`allowed`: the expected echo).
fn preflight_faults(r: &Resp, allowed: &str, methods: &str) -> Vec<String> {
    let mut faults = Vec::new();
    let mut want = |name: &str, value: &str| {
        let got = r.header(name).unwrap_or_default();
        if !got.eq_ignore_ascii_case(value) {
            faults.push(format!("{name}: {got:?}, want {value:?}"));
        }
    };
    want("access-control-allow-origin", allowed);
    want("access-control-allow-methods", methods);
    want("access-control-allow-headers", ALLOW_HEADERS);
    want("access-control-max-age", "600");
    want("vary", "origin");
    if r.status != 204 {
        faults.push(format!("status {}: {}", r.status, r.text()));
    }
    if r.headers.contains_key("access-control-allow-credentials") {
        faults.push("access-control-allow-credentials is set".into());
    }
    faults
}

/// Everything wrong with the CORS headers of an ordinary answer to an admitted origin.
fn answer_faults(headers: &reqwest::header::HeaderMap, allowed: &str) -> Vec<String> {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut faults = Vec::new();
    if get("access-control-allow-origin") != allowed {
        faults.push(format!(
            "allow-origin {:?}",
            get("access-control-allow-origin")
        ));
    }
    if get("access-control-expose-headers") != EXPOSE_HEADERS {
        faults.push(format!(
            "expose-headers {:?}",
            get("access-control-expose-headers")
        ));
    }
    if !get("vary").to_ascii_lowercase().contains("origin") {
        faults.push(format!("vary {:?}", get("vary")));
    }
    if headers.contains_key("access-control-allow-credentials") {
        faults.push("allow-credentials is set".into());
    }
    faults
}

fn cors_headers(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

/// One answer of each kind, sent with `origin`: (what, expected status, answer).
async fn ordinary_answers(api: &Api, origin: Option<&str>) -> Vec<(&'static str, u16, Resp)> {
    let c = channel("cors");
    let base = &api.base;
    let with = |req: reqwest::RequestBuilder| match origin {
        Some(o) => req.header("origin", o),
        None => req,
    };
    let publish = |tok: Option<String>| {
        let mut req = client()
            .post(format!("{base}/channels/{c}/events"))
            .header("content-type", "application/json")
            .body(r#"{"data":"cors"}"#);
        if let Some(t) = tok {
            req = req.bearer_auth(t);
        }
        with(req)
    };
    let mut out = Vec::new();
    let health = with(client().get(format!("{base}/healthz")));
    out.push(("200 healthz", 200, api.send(health).await));
    out.push(("201 publish", 201, api.send(publish(Some(admin()))).await));
    let poll_url = format!("{base}/poll/{c}?since=0");
    let first = api
        .send(with(client().get(&poll_url).bearer_auth(admin())))
        .await;
    let etag = first.header("etag").unwrap_or_default();
    out.push(("200 poll", 200, first));
    let again = client()
        .get(&poll_url)
        .bearer_auth(admin())
        .header("if-none-match", etag);
    out.push(("304 poll", 304, api.send(with(again)).await));
    out.push(("401 publish", 401, api.send(publish(None)).await));
    let other = token(&["other"], &[], 60);
    out.push(("403 publish", 403, api.send(publish(Some(other))).await));
    let gone = with(client().get(format!("{base}/no/such/path")));
    out.push(("404", 404, api.send(gone).await));
    let wrong = with(client().delete(format!("{base}/poll/{c}")));
    out.push(("405", 405, api.send(wrong).await));
    let bad = with(client().get(format!("{base}/poll/a%20b")));
    out.push(("400", 400, api.send(bad).await));
    let purge = client()
        .delete(format!("{base}/channels/{c}/events"))
        .bearer_auth(admin());
    out.push(("204 purge", 204, api.send(with(purge)).await));
    out
}

async fn sse_headers(api: &Api, origin: &str) -> reqwest::header::HeaderMap {
    let c = format!("public:{}", channel("cors"));
    match SseStream::open(api, &format!("/sse/{c}"), &[("origin", origin)]).await {
        Ok(s) => {
            let mut h = reqwest::header::HeaderMap::new();
            for name in [
                "access-control-allow-origin",
                "access-control-expose-headers",
                "vary",
                "access-control-allow-credentials",
            ] {
                if let Some(v) = s.header(name) {
                    h.insert(name, v.parse().unwrap());
                }
            }
            h
        }
        Err(r) => panic!("SSE from {origin}: {} {}", r.status, r.text()),
    }
}

async fn cors_admits_exactly_the_listed_origins(_shared: Api) {
    let listed = format!("{APP},{VITE}");
    let hub = Hub::start(HubOptions::with_vars(&[("CORS_ORIGINS", &listed)]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(hub.base());
    let c = channel("cors");
    let mut report = String::new();

    for (origin, routes) in [(APP, paths(&c)), (VITE, paths(&c)[2..4].to_vec())] {
        for (path, methods) in routes {
            let faults =
                preflight_faults(&preflight(&api, &path, Some(origin)).await, origin, methods);
            if !faults.is_empty() {
                let _ = writeln!(report, "OPTIONS {path} from {origin}: {faults:?}");
            }
        }
    }
    for origin in [
        Some("https://evil.example"),
        Some("https://app.example.evil"),
        Some("http://app.example"),
        Some("https://app.example:8443"),
        Some("null"),
        None,
    ] {
        let r = preflight(&api, &format!("/poll/{c}"), origin).await;
        assert_problem(&r, 403, "forbidden", &format!("preflight from {origin:?}"));
        assert!(
            cors_headers(&r.headers).is_empty(),
            "{origin:?}: {:?}",
            r.headers
        );
    }
    assert_problem(
        &preflight(&api, "/nope", Some(APP)).await,
        404,
        "not_found",
        "OPTIONS /nope",
    );
    assert_problem(
        &preflight(&api, "/poll/a%20b", Some(APP)).await,
        400,
        "bad_request",
        "OPTIONS bad channel",
    );

    for (what, status, r) in ordinary_answers(&api, Some(APP)).await {
        let mut faults = answer_faults(&r.headers, APP);
        if r.status != status {
            faults.push(format!("status {} {}", r.status, r.text()));
        }
        if !faults.is_empty() {
            let _ = writeln!(report, "{what} to {APP}: {faults:?}");
        }
    }
    let faults = answer_faults(&sse_headers(&api, VITE).await, VITE);
    if !faults.is_empty() {
        let _ = writeln!(report, "SSE stream to {VITE}: {faults:?}");
    }
    for origin in [Some("https://evil.example"), None] {
        for (what, status, r) in ordinary_answers(&api, origin).await {
            let extra = cors_headers(&r.headers);
            if r.status != status || !extra.is_empty() {
                let _ = writeln!(report, "{what} to {origin:?}: {} {extra:?}", r.status);
            }
        }
    }
    hub.cleanup().await;
    assert!(report.is_empty(), "CORS faults:\n{report}");
}

async fn cors_star_admits_any_origin_as_star(_shared: Api) {
    let hub = Hub::start(HubOptions::with_vars(&[("CORS_ORIGINS", "*")]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let api = Api::new(hub.base());
    let c = channel("corsstar");
    let mut report = String::new();
    for origin in ["https://anything.example", "http://localhost:3000"] {
        for (path, methods) in paths(&c) {
            let faults =
                preflight_faults(&preflight(&api, &path, Some(origin)).await, "*", methods);
            if !faults.is_empty() {
                let _ = writeln!(report, "OPTIONS {path} from {origin}: {faults:?}");
            }
        }
        for (what, status, r) in ordinary_answers(&api, Some(origin)).await {
            let mut faults = answer_faults(&r.headers, "*");
            if r.status != status {
                faults.push(format!("status {} {}", r.status, r.text()));
            }
            if !faults.is_empty() {
                let _ = writeln!(report, "{what} to {origin}: {faults:?}");
            }
        }
    }
    let faults = answer_faults(&sse_headers(&api, "https://x.example").await, "*");
    if !faults.is_empty() {
        let _ = writeln!(report, "SSE stream: {faults:?}");
    }
    // No Origin, no CORS: a plain client gets none of it.
    for (what, _, r) in ordinary_answers(&api, None).await {
        let extra = cors_headers(&r.headers);
        if !extra.is_empty() {
            let _ = writeln!(report, "{what} without Origin: {extra:?}");
        }
    }
    let r = api
        .send(client().get(format!("{}/healthz", api.base)))
        .await;
    assert_eq!(r.json(), json!({"status": "ok"}));
    hub.cleanup().await;
    assert!(report.is_empty(), "CORS faults:\n{report}");
}
