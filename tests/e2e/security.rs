//! The auth matrix against the real runtime: every route × every kind of credential, each cell
//! the status and problem `code` (and the `WWW-Authenticate` challenge of a 401) the code gives,
//! printed whole when any cell differs. Plus the edges of the door around it: a non-Bearer
//! `Authorization` on the routes that need nothing, and methods the Worker does not know.

use std::fmt::Write as _;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edgehub::auth::{sign, Claims};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha384;

use crate::api::{channel, claims, client, now_secs, token, Api, Resp};
use crate::harness::SECRET;
use crate::publish::assert_problem;
use crate::sse_client::SseStream;
use crate::ws_client::WsClient;
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(auth_matrix_every_route_by_every_credential),
        case!(routes_that_need_no_token_ignore_a_non_bearer_authorization),
        case!(methods_the_worker_crate_does_not_name_are_405_not_get),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    Demo,
    Health,
    Publish,
    Purge,
    Info,
    Poll,
    Sse,
    Ws,
    Mint,
}

const ROUTES: [Route; 9] = [
    Route::Demo,
    Route::Health,
    Route::Publish,
    Route::Purge,
    Route::Info,
    Route::Poll,
    Route::Sse,
    Route::Ws,
    Route::Mint,
];

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Demo => "GET /",
            Route::Health => "GET /healthz",
            Route::Publish => "POST events",
            Route::Purge => "DELETE events",
            Route::Info => "GET /channels/c",
            Route::Poll => "GET /poll/c",
            Route::Sse => "GET /sse/c",
            Route::Ws => "GET /ws/c",
            Route::Mint => "POST /tokens",
        }
    }
    fn success(self) -> u16 {
        match self {
            Route::Publish | Route::Mint => 201,
            Route::Purge => 204,
            Route::Ws => 101,
            _ => 200,
        }
    }
    fn needs_nothing(self) -> bool {
        matches!(self, Route::Demo | Route::Health)
    }
    /// Where `?token=` is read (docs/API.md#sending-tokens).
    fn reads_query_token(self) -> bool {
        matches!(self, Route::Poll | Route::Sse | Route::Ws)
    }
    fn subscribes(self) -> bool {
        matches!(self, Route::Info | Route::Poll | Route::Sse | Route::Ws)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cred {
    None,
    Malformed,
    BadSignature,
    AlgNone,
    AlgHs384,
    Expired,
    NoExp,
    NbfFuture,
    WrongScope,
    RightScope,
    QueryLong,
    QueryShort,
    PublicAnonymous,
}

const CREDS: [Cred; 13] = [
    Cred::None,
    Cred::Malformed,
    Cred::BadSignature,
    Cred::AlgNone,
    Cred::AlgHs384,
    Cred::Expired,
    Cred::NoExp,
    Cred::NbfFuture,
    Cred::WrongScope,
    Cred::RightScope,
    Cred::QueryLong,
    Cred::QueryShort,
    Cred::PublicAnonymous,
];

/// One cell: status, problem code, and for a 401 whether the challenge says `invalid_token`.
#[derive(Clone, Debug, PartialEq)]
struct Cell {
    status: u16,
    code: Option<String>,
    invalid_token: Option<bool>,
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        match self.invalid_token {
            Some(true) => write!(f, " [invalid_token]"),
            Some(false) => write!(f, " [Bearer]"),
            None => Ok(()),
        }
    }
}

fn refused(status: u16, code: &str, invalid_token: bool) -> Cell {
    Cell {
        status,
        code: Some(code.to_string()),
        invalid_token: (status == 401).then_some(invalid_token),
    }
}

/// What the hub answers, by the rules of docs/API.md#auth and #problems.
fn expected(route: Route, cred: Cred) -> Cell {
    let ok = Cell {
        status: route.success(),
        code: None,
        invalid_token: None,
    };
    if route.needs_nothing() {
        return ok;
    }
    let anonymous = refused(401, "unauthorized", false);
    match cred {
        Cred::None => anonymous,
        Cred::Malformed
        | Cred::BadSignature
        | Cred::AlgNone
        | Cred::AlgHs384
        | Cred::NoExp
        | Cred::NbfFuture => refused(401, "unauthorized", true),
        Cred::Expired => refused(401, "token_expired", true),
        Cred::WrongScope => refused(403, "forbidden", false),
        Cred::RightScope => ok,
        Cred::QueryLong if route.reads_query_token() => {
            refused(401, "query_token_too_long_lived", true)
        }
        Cred::QueryShort if route.reads_query_token() => ok,
        Cred::QueryLong | Cred::QueryShort => anonymous,
        Cred::PublicAnonymous if route.subscribes() => ok,
        Cred::PublicAnonymous => anonymous,
    }
}

/// The HMAC-SHA-384 token the hub must refuse for its algorithm, whatever the key.
fn hs384(c: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS384","typ":"JWT"}"#);
    let payload = serde_json::to_vec(&claims(&[c], &[c], Some(now_secs() + 600))).unwrap();
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let mut mac = Hmac::<Sha384>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{sig}")
}

/// The channel a credential is tried on, and its bearer or query token.
fn credential(cred: Cred, c: &str, public: &str) -> (String, Option<String>, Option<String>) {
    let signed = |claims: Claims| sign(&claims, SECRET);
    let payload = |t: &str| t.split('.').nth(1).unwrap_or("").to_string();
    let right = token(&[c], &[c], 600);
    let bearer = |t: String| (c.to_string(), Some(t), None);
    match cred {
        Cred::None => (c.to_string(), None, None),
        Cred::Malformed => bearer("not-a-jwt".into()),
        Cred::BadSignature => bearer(sign(
            &claims(&[c], &[c], Some(now_secs() + 600)),
            b"not-the-hub-secret",
        )),
        // {"alg":"none","typ":"JWT"}, the payload of a good token, no signature.
        Cred::AlgNone => bearer(format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            payload(&right)
        )),
        Cred::AlgHs384 => bearer(hs384(c)),
        // Beyond the 30 s of clock skew.
        Cred::Expired => bearer(token(&[c], &[c], -120)),
        Cred::NoExp => bearer(signed(claims(&[c], &[c], None))),
        Cred::NbfFuture => {
            let mut cl = claims(&[c], &[c], Some(now_secs() + 600));
            cl.nbf = Some(now_secs() + 300);
            bearer(signed(cl))
        }
        Cred::WrongScope => bearer(token(&["other:*"], &["other:*"], 600)),
        Cred::RightScope => bearer(right),
        Cred::QueryLong => (c.to_string(), None, Some(token(&[c], &[c], 3600))),
        Cred::QueryShort => (c.to_string(), None, Some(token(&[c], &[c], 120))),
        Cred::PublicAnonymous => (public.to_string(), None, None),
    }
}

/// Tries one cell against the hub.
async fn try_cell(api: &Api, route: Route, cred: Cred, c: &str, public: &str) -> (Cell, String) {
    let (ch, bearer, query) = credential(cred, c, public);
    let q = query.map(|t| format!("?token={t}")).unwrap_or_default();
    let path = match route {
        Route::Demo => format!("/{q}"),
        Route::Health => format!("/healthz{q}"),
        Route::Publish | Route::Purge => format!("/channels/{ch}/events{q}"),
        Route::Info => format!("/channels/{ch}{q}"),
        Route::Poll => format!("/poll/{ch}{q}"),
        Route::Sse => format!("/sse/{ch}{q}"),
        Route::Ws => format!("/ws/{ch}{q}"),
        Route::Mint => format!("/tokens{q}"),
    };
    let resp = match route {
        Route::Ws => match WsClient::open(api, &path, bearer.as_deref()).await {
            Ok(ws) => {
                ws.close().await;
                return (observed_ok(101), path);
            }
            Err(r) => r,
        },
        Route::Sse => {
            let auth = bearer.as_ref().map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            match SseStream::open(api, &path, &headers).await {
                Ok(_stream) => return (observed_ok(200), path),
                Err(r) => r,
            }
        }
        _ => {
            let url = format!("{}{path}", api.base);
            let mut req = match route {
                Route::Publish => client()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(r#"{"data":"matrix"}"#),
                Route::Purge => client().delete(url),
                Route::Mint => client()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(json!({"subscribe": [ch], "ttl": 60}).to_string()),
                _ => client().get(url),
            };
            if let Some(t) = &bearer {
                req = req.bearer_auth(t);
            }
            api.send(req).await
        }
    };
    (observe(&resp), path)
}

fn observed_ok(status: u16) -> Cell {
    Cell {
        status,
        code: None,
        invalid_token: None,
    }
}

fn observe(r: &Resp) -> Cell {
    let is_problem = r.content_type().starts_with("application/problem+json");
    let code = is_problem.then(|| r.json()["code"].as_str().unwrap_or("?").to_string());
    let challenge = r.header("www-authenticate");
    Cell {
        status: r.status,
        code,
        invalid_token: (r.status == 401).then(|| {
            challenge
                .as_deref()
                .is_some_and(|c| c.contains("invalid_token"))
        }),
    }
    .with_challenge_check(challenge.as_deref())
}

impl Cell {
    /// A 401 without a `Bearer` challenge is shown as its own fault.
    fn with_challenge_check(mut self, challenge: Option<&str>) -> Cell {
        if self.status == 401 && !challenge.is_some_and(|c| c.starts_with("Bearer")) {
            self.code = Some(format!(
                "{} (WWW-Authenticate {challenge:?})",
                self.code.unwrap_or_default()
            ));
        }
        self
    }
}

async fn auth_matrix_every_route_by_every_credential(api: Api) {
    let c = channel("matrix");
    let public = format!("public:{}", channel("matrix"));
    let mut table = String::new();
    let mut wrong = 0;
    for cred in CREDS {
        let _ = writeln!(table, "{cred:?}:");
        for route in ROUTES {
            let want = expected(route, cred);
            let (got, path) = try_cell(&api, route, cred, &c, &public).await;
            let mark = if got == want {
                String::new()
            } else {
                wrong += 1;
                format!("   <-- want {want}  ({path})")
            };
            let _ = writeln!(table, "    {:<16} {got}{mark}", route.label());
        }
    }
    assert_eq!(wrong, 0, "{wrong} cells differ:\n{table}");
}

/// docs/API.md#health: `/healthz` and `/` need nothing, so a header meant for something else
/// (a proxy's Basic credentials) must not turn them into a 401.
async fn routes_that_need_no_token_ignore_a_non_bearer_authorization(api: Api) {
    let c = channel("basic");
    for path in ["/healthz", "/"] {
        let req = client()
            .get(format!("{}{path}", api.base))
            .header("authorization", "Basic dXNlcjpwYXNzd29yZA==");
        let r = api.send(req).await;
        assert_eq!(
            r.status,
            200,
            "GET {path} with Authorization: Basic: {}",
            r.text()
        );
    }
    // Where a token is needed the header is the only credential looked at: 401, even public.
    for path in [format!("/poll/{c}"), format!("/poll/public:{c}")] {
        let req = client()
            .get(format!("{}{path}", api.base))
            .header("authorization", "Basic dXNlcjpwYXNzd29yZA==");
        let r = api.send(req).await;
        assert_problem(&r, 401, "unauthorized", &format!("GET {path} with Basic"));
    }
}

/// workerd passes methods such as QUERY or PROPFIND through to the Worker, and the `worker`
/// crate's `Method::from` turns every name it does not know into GET: the hub must not answer
/// them as GETs (docs/API.md#routing: another method on a known path is 405 with `Allow`).
async fn methods_the_worker_crate_does_not_name_are_405_not_get(api: Api) {
    let c = channel("methods");
    let admin = token(&["*"], &["*"], 600);
    let mut report = String::new();
    for method in ["QUERY", "PROPFIND", "SEARCH", "PURGE"] {
        for (path, allow) in [
            ("/healthz".to_string(), "GET, HEAD"),
            (format!("/poll/{c}"), "GET, HEAD"),
            (format!("/channels/{c}"), "GET, HEAD"),
        ] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let req = client()
                .request(m, format!("{}{path}", api.base))
                .bearer_auth(&admin);
            let r = api.send(req).await;
            let got_allow = r.header("allow").unwrap_or_default();
            if r.status != 405 || got_allow != allow {
                let _ = writeln!(
                    report,
                    "{method} {path}: {} allow={got_allow:?} {}",
                    r.status,
                    r.text().chars().take(80).collect::<String>()
                );
            }
        }
    }
    assert!(report.is_empty(), "want 405 with Allow:\n{report}");
}
