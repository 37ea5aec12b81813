//! CORS in the shell: answers preflights and adds the allow headers to every answer for an
//! admitted origin. The rules are in `protocol::cors`.

use super::http::internal;
use super::http::Inbound;
use crate::config::Config;
use crate::error::Error;
use crate::protocol::cors::{
    allow_origin, credentials_header, preflight_headers, response_headers,
};
use crate::protocol::mercure::HUB_PATH;
use crate::protocol::route::match_path;
use worker::{Headers, Response};

/// `OPTIONS` on a known path: 204 with the path's methods for an admitted origin; 403 for an
/// origin that is not configured; 404 for an unknown path.
pub fn preflight(req: &Inbound, origin: Option<&str>, config: &Config) -> Result<Response, Error> {
    let path = req.target()?.path;
    let (methods, _) = match_path("OPTIONS", &path)?;
    let allowed = origin
        .and_then(|o| allow_origin(&config.cors_origins, o))
        .ok_or_else(|| {
            Error::Forbidden("this origin may not call the hub (CORS_ORIGINS)".into())
        })?;
    let headers = Headers::new();
    let cookies = (path == HUB_PATH)
        .then(|| credentials_header(&allowed))
        .flatten();
    for (name, value) in preflight_headers(&allowed, methods)
        .into_iter()
        .chain(cookies)
    {
        headers.set(name, &value).map_err(internal("answering"))?;
    }
    headers
        .set("cache-control", "no-store")
        .map_err(internal("answering"))?;
    Ok(Response::builder()
        .with_status(204)
        .with_headers(headers)
        .empty())
}

/// Adds the CORS headers for an admitted origin. Headers of an answer passed through from the
/// channel object are immutable, so they are copied first. WebSocket upgrades are left alone:
/// browsers do not apply CORS to them.
/// `cookies`: the path reads cookies (the Mercure face), so a named origin may send them.
pub fn decorate(
    response: Response,
    origin: Option<&str>,
    config: &Config,
    cookies: bool,
) -> Response {
    let Some(allowed) = origin.and_then(|o| allow_origin(&config.cors_origins, o)) else {
        return response;
    };
    if response.status_code() == 101 {
        return response;
    }
    let headers = Headers::new();
    for (name, value) in response.headers().entries() {
        let _ = headers.set(&name, &value);
    }
    let credentials = cookies.then(|| credentials_header(&allowed)).flatten();
    for (name, value) in response_headers(&allowed).into_iter().chain(credentials) {
        let _ = headers.set(name, &value);
    }
    response.with_headers(headers)
}
