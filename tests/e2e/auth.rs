//! Tokens and rights at the door: 401 (with `WWW-Authenticate: Bearer`) for a missing, malformed,
//! forged or expired token, 403 for a valid token without the right, on publish, poll and
//! channel info; anonymous subscribing only on `PUBLIC_CHANNELS`.

use edgehub::auth::sign;
use serde_json::json;

use crate::api::{admin, channel, claims, client, now_secs, token, Api, Resp};
use crate::publish::{assert_problem, head};
use crate::{case, Case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(publish_needs_a_valid_token_with_the_publish_right),
        case!(poll_and_channel_info_need_the_subscribe_right_unless_public),
    ]
}

/// `{"alg":"none","typ":"JWT"}`: a token that claims to need no signature.
const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

/// `Authorization` values no hub may accept, each with what it is.
fn bad_credentials(c: &str) -> Vec<(String, String)> {
    let good = token(&[c], &[c], 600);
    let forbidden = token(&["other:*"], &["other:*"], 600);
    let part = |t: &str, i: usize| t.split('.').nth(i).unwrap_or("").to_string();
    let forged = format!(
        "{}.{}.{}",
        part(&good, 0),
        part(&good, 1),
        part(&forbidden, 2)
    );
    let unsigned = format!("{ALG_NONE_HEADER}.{}.", part(&good, 1));
    let other_secret = sign(
        &claims(&[c], &[c], Some(now_secs() + 600)),
        b"not-the-hub-secret",
    );
    let no_exp = sign(&claims(&[c], &[c], None), crate::harness::SECRET);
    vec![
        ("not a JWT".into(), "Bearer not-a-jwt".into()),
        ("three junk parts".into(), "Bearer a.b.c".into()),
        ("empty bearer".into(), "Bearer ".into()),
        ("Basic scheme".into(), "Basic dXNlcjpwYXNzd29yZA==".into()),
        (
            "signed with another secret".into(),
            format!("Bearer {other_secret}"),
        ),
        (
            "payload with a foreign signature".into(),
            format!("Bearer {forged}"),
        ),
        ("alg none".into(), format!("Bearer {unsigned}")),
        ("no exp".into(), format!("Bearer {no_exp}")),
    ]
}

async fn send(api: &Api, method: &str, path: &str, authorization: Option<&str>) -> Resp {
    let url = format!("{}{path}", api.base);
    let mut req = match method {
        "POST" => client()
            .post(url)
            .header("content-type", "application/json")
            .body(r#"{"data":"x"}"#),
        _ => client().get(url),
    };
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    api.send(req).await
}

/// A 401 problem with `code` and a `WWW-Authenticate: Bearer…` challenge.
fn assert_401(r: &Resp, code: &str, what: &str) {
    assert_problem(r, 401, code, what);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "{what}: WWW-Authenticate {challenge:?}"
    );
}

async fn publish_needs_a_valid_token_with_the_publish_right(api: Api) {
    let c = channel("authpub");
    let path = format!("/channels/{c}/events");

    let r = send(&api, "POST", &path, None).await;
    assert_401(&r, "unauthorized", "publish without a token");
    let expired = format!("Bearer {}", token(&["*"], &["*"], -120));
    assert_401(
        &send(&api, "POST", &path, Some(&expired)).await,
        "token_expired",
        "publish with an expired token",
    );
    for (what, auth) in bad_credentials(&c) {
        assert_401(
            &send(&api, "POST", &path, Some(&auth)).await,
            "unauthorized",
            &format!("publish, {what}"),
        );
    }

    let not_mine = [
        (
            "publish right for other:*",
            token(&["other:*"], &["*"], 600),
        ),
        ("subscribe-only token", token(&[], &[&c], 600)),
        (
            "exact name of another channel",
            token(&[&format!("{c}x")], &[], 600),
        ),
        (
            "prefix that does not cover it",
            token(&["e2e-authpub-zzz*"], &[], 600),
        ),
    ];
    for (what, t) in not_mine {
        let r = send(&api, "POST", &path, Some(&format!("Bearer {t}"))).await;
        assert_problem(&r, 403, "forbidden", &format!("publish, {what}"));
    }
    assert_eq!(
        head(&api, &c).await,
        0,
        "refused publishes must store nothing"
    );

    let mine = [
        ("exact name", token(&[&c], &[], 600)),
        ("prefix", token(&["e2e-authpub-*"], &[], 600)),
        ("star", token(&["*"], &[], 600)),
    ];
    for (n, (what, t)) in mine.iter().enumerate() {
        let r = send(&api, "POST", &path, Some(&format!("Bearer {t}"))).await;
        assert_eq!(r.status, 201, "publish, {what}: {}", r.text());
        assert_eq!(r.json()["events"][0]["id"], json!(n + 1), "publish, {what}");
    }

    let public = format!("public:{}", channel("anonpub"));
    let r = send(&api, "POST", &format!("/channels/{public}/events"), None).await;
    assert_401(&r, "unauthorized", "anonymous publish to a public channel");
}

async fn poll_and_channel_info_need_the_subscribe_right_unless_public(api: Api) {
    let c = channel("authsub");
    let r = api.publish(&c, &json!({"data": 1}), &admin()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let paths = [format!("/poll/{c}?since=0"), format!("/channels/{c}")];

    for path in &paths {
        assert_401(
            &send(&api, "GET", path, None).await,
            "unauthorized",
            &format!("GET {path} anonymously"),
        );
        let expired = format!("Bearer {}", token(&["*"], &["*"], -120));
        assert_401(
            &send(&api, "GET", path, Some(&expired)).await,
            "token_expired",
            &format!("GET {path}, expired"),
        );
        for (what, auth) in bad_credentials(&c) {
            assert_401(
                &send(&api, "GET", path, Some(&auth)).await,
                "unauthorized",
                &format!("GET {path}, {what}"),
            );
        }
        let not_mine = [
            (
                "subscribe right for other:*",
                token(&["*"], &["other:*"], 600),
            ),
            ("publish-only token", token(&[&c], &[], 600)),
            (
                "prefix that does not cover it",
                token(&[], &["e2e-authsub-zzz*"], 600),
            ),
        ];
        for (what, t) in not_mine {
            let r = send(&api, "GET", path, Some(&format!("Bearer {t}"))).await;
            assert_problem(&r, 403, "forbidden", &format!("GET {path}, {what}"));
        }
        for (what, t) in [
            ("exact", token(&[], &[&c], 600)),
            ("prefix", token(&[], &["e2e-authsub-*"], 600)),
        ] {
            let r = send(&api, "GET", path, Some(&format!("Bearer {t}"))).await;
            assert_eq!(
                r.status,
                200,
                "GET {path} with a subscribe token ({what}): {}",
                r.text()
            );
        }
    }

    let public = format!("public:{}", channel("anonsub"));
    let r = api
        .publish(&public, &json!({"data": "hello"}), &admin())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = send(&api, "GET", &format!("/channels/{public}"), None).await;
    assert_eq!(
        r.status,
        200,
        "anonymous channel info on a public channel: {}",
        r.text()
    );
    assert_eq!(r.json()["head"], json!(1));
    let r = send(&api, "GET", &format!("/poll/{public}?since=0"), None).await;
    assert_eq!(
        r.status,
        200,
        "anonymous poll of a public channel: {}",
        r.text()
    );
    assert_eq!(r.json()["channel"], json!(public));
    let near_miss = format!("publicx{}", channel("anonsub"));
    let r = send(&api, "GET", &format!("/poll/{near_miss}?since=0"), None).await;
    assert_401(
        &r,
        "unauthorized",
        "anonymous poll of a name that only looks public",
    );
}
