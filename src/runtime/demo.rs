//! The demo page at `/`: one static HTML file (`assets/demo.html`) with a small configuration
//! object filled in. Under the development config it carries a development token, so the page
//! works right after `make dev`; in production it carries none.

use super::access::{now_s, secret};
use super::http::{internal, respond};
use crate::auth::{sign, Claims, Rights};
use crate::config::Config;
use crate::error::Error;
use worker::{Env, Response};

const PAGE: &str = include_str!("../../assets/demo.html");
/// The JavaScript client's build (`clients/js/build.mjs`, which `make build` runs first).
const CLIENT: &str = include_str!("../../clients/js/dist/index.js");
const PLACEHOLDER: &str = "/*EDGEHUB_CONFIG*/{}";
/// Inline script and style, and the client from this origin; the page talks to its own origin
/// alone.
const CSP: &str =
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

pub fn page(env: &Env, config: &Config) -> Result<Response, Error> {
    let token = if config.development {
        Some(dev_token(env, config)?)
    } else {
        None
    };
    let settings = serde_json::json!({
        "channel": "public:demo",
        "token": token,
        "heartbeat_seconds": config.heartbeat_seconds,
    });
    // `</` inside a script would end it; JSON allows the escaped form.
    let settings = settings.to_string().replace("</", "<\\/");
    let html = PAGE.replacen(PLACEHOLDER, &settings, 1);
    let response = respond(200, "text/html; charset=utf-8", html).map_err(internal("answering"))?;
    response
        .headers()
        .set("content-security-policy", CSP)
        .map_err(internal("answering"))?;
    Ok(response)
}

/// `GET /client.js`: the client as an ES module, for the demo page and for any page that wants
/// it from the hub (`import { EdgeHub } from "https://hub.example/client.js"`): readable from
/// any origin, cached for five minutes.
pub fn client() -> Result<Response, Error> {
    let response = respond(200, "text/javascript; charset=utf-8", CLIENT.to_string())
        .map_err(internal("answering"))?;
    let headers = response.headers();
    for (name, value) in [
        ("cache-control", "public, max-age=300"),
        ("access-control-allow-origin", "*"),
        ("x-content-type-options", "nosniff"),
    ] {
        headers.set(name, value).map_err(internal("answering"))?;
    }
    Ok(response)
}

/// Every right on every channel, for `TOKEN_MAX_TTL_SECONDS`, with the `sub` `*` so the page can
/// mint each tab a presence member of its own: only ever made under the local development
/// config, whose secret is public anyway.
fn dev_token(env: &Env, config: &Config) -> Result<String, Error> {
    let now = now_s();
    let claims = Claims {
        exp: Some(now + config.token_max_ttl_seconds),
        iat: Some(now),
        nbf: None,
        sub: Some(crate::auth::delegate::ANY_SUB.into()),
        edgehub: Rights {
            publish: vec!["*".into()],
            subscribe: vec!["*".into()],
            info: None,
        },
    };
    Ok(sign(&claims, secret(env)?.as_bytes()))
}
