//! The route table: method and path in, a typed `Route` out, with the channel already decoded
//! and validated. 404 for an unknown path, 405 (with `Allow`) for a known path and wrong method.
//! `docs/openapi.yaml` lists the same routes.

use super::names::ChannelName;
use super::query::percent_decode;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Publish(ChannelName),
    ChannelInfo(ChannelName),
    Poll(ChannelName),
    Sse(ChannelName),
    Ws(ChannelName),
}

const GET: &[&str] = &["GET", "HEAD"];
const POST: &[&str] = &["POST"];
/// Streams have no meaningful HEAD.
const GET_ONLY: &[&str] = &["GET"];

/// Matches `method` and `path` (the path only, without the query).
pub fn route(method: &str, path: &str) -> Result<Route, Error> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let (allowed, found): (&[&str], Route) = match segments.as_slice() {
        ["healthz"] => (GET, Route::Health),
        ["channels", c, "events"] => (POST, Route::Publish(channel(c)?)),
        ["channels", c] => (GET, Route::ChannelInfo(channel(c)?)),
        ["poll", c] => (GET, Route::Poll(channel(c)?)),
        ["sse", c] => (GET_ONLY, Route::Sse(channel(c)?)),
        ["ws", c] => (GET_ONLY, Route::Ws(channel(c)?)),
        _ => return Err(Error::NotFound),
    };
    if allowed.contains(&method) {
        Ok(found)
    } else {
        Err(Error::MethodNotAllowed(allowed))
    }
}

/// Decodes a path segment once and validates it: `a%2Fb` becomes `a/b`, which the grammar
/// refuses, so an encoded separator can never reach another route or another channel.
fn channel(segment: &str) -> Result<ChannelName, Error> {
    let decoded = percent_decode(segment)
        .ok_or_else(|| Error::bad_request("the channel name is badly percent-encoded"))?;
    ChannelName::parse(&decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn table() {
        assert_eq!(route("GET", "/healthz"), Ok(Route::Health));
        assert_eq!(
            route("POST", "/channels/orders/events"),
            Ok(Route::Publish(ch("orders")))
        );
        assert_eq!(
            route("GET", "/channels/a%3Ab"),
            Ok(Route::ChannelInfo(ch("a:b")))
        );
        assert_eq!(route("GET", "/poll/x.y"), Ok(Route::Poll(ch("x.y"))));
        assert_eq!(route("HEAD", "/poll/x"), Ok(Route::Poll(ch("x"))));
        assert_eq!(route("GET", "/sse/x"), Ok(Route::Sse(ch("x"))));
        assert_eq!(route("GET", "/ws/x"), Ok(Route::Ws(ch("x"))));
        assert!(matches!(
            route("POST", "/ws/x"),
            Err(Error::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn refusals() {
        assert_eq!(route("GET", "/nope"), Err(Error::NotFound));
        assert_eq!(route("GET", "/poll/a/b"), Err(Error::NotFound));
        assert_eq!(route("GET", "/poll/").map_err(|e| e.status()), Err(400));
        assert!(matches!(
            route("PUT", "/poll/x"),
            Err(Error::MethodNotAllowed(_))
        ));
        assert!(matches!(
            route("GET", "/channels/x/events"),
            Err(Error::MethodNotAllowed(_))
        ));
        for bad in [
            "/poll/a%2Fb",
            "/poll/%2e%2e",
            "/poll/a%20b",
            "/poll/%",
            "/poll/%C3%A9",
        ] {
            assert_eq!(route("GET", bad).map_err(|e| e.status()), Err(400), "{bad}");
        }
    }
}
