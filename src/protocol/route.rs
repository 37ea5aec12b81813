//! The route table: method and path in, a typed `Route` out, with the channel already decoded
//! and validated. 404 for an unknown path, 405 (with `Allow`) for a known path and wrong method.
//! `ROUTES` lists the same table for `docs/openapi.yaml`, and a test holds the two together.

use super::names::ChannelName;
use super::query::percent_decode;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Demo,
    /// `GET /client.js`: the JavaScript client (`clients/js`), as the demo page imports it.
    Client,
    Health,
    Publish(ChannelName),
    Purge(ChannelName),
    ChannelInfo(ChannelName),
    /// `GET /channels/{c}/presence`: who is on the channel.
    Presence(ChannelName),
    Poll(ChannelName),
    Sse(ChannelName),
    Ws(ChannelName),
    /// `/poll`, `/sse` and `/ws` without a channel in the path: many channels on one stream,
    /// named in the query (`protocol::stream`).
    PollMany,
    SseMany,
    WsMany,
    MintToken,
    /// `GET /.well-known/mercure`: a Mercure subscription (docs/mercure.md).
    MercureSubscribe,
    /// `POST /.well-known/mercure`: a Mercure publish.
    MercurePublish,
}

impl Route {
    /// Picks between the two routes one path holds: `other` for `DELETE`.
    fn for_method(self, method: &str, other: Route) -> Route {
        if method == "DELETE" {
            other
        } else {
            self
        }
    }

    /// Where a token may come from the query string: only where a client cannot set a header
    /// (`EventSource`, browser WebSockets) and on polls, which may be plain links.
    pub fn takes_query_token(&self) -> bool {
        matches!(
            self,
            Route::Poll(_)
                | Route::Sse(_)
                | Route::Ws(_)
                | Route::PollMany
                | Route::SseMany
                | Route::WsMany
        )
    }
}

const GET: &[&str] = &["GET", "HEAD"];
const POST: &[&str] = &["POST"];
const POST_DELETE: &[&str] = &["POST", "DELETE"];
/// Streams have no meaningful HEAD.
const GET_ONLY: &[&str] = &["GET"];
const GET_POST: &[&str] = &["GET", "POST"];

/// Every route as (method, path template), as `docs/openapi.yaml` lists them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/client.js"),
    ("HEAD", "/client.js"),
    ("GET", "/healthz"),
    ("HEAD", "/healthz"),
    ("POST", "/channels/{channel}/events"),
    ("DELETE", "/channels/{channel}/events"),
    ("GET", "/channels/{channel}"),
    ("HEAD", "/channels/{channel}"),
    ("GET", "/channels/{channel}/presence"),
    ("HEAD", "/channels/{channel}/presence"),
    ("GET", "/poll/{channel}"),
    ("HEAD", "/poll/{channel}"),
    ("GET", "/sse/{channel}"),
    ("GET", "/ws/{channel}"),
    ("GET", "/poll"),
    ("HEAD", "/poll"),
    ("GET", "/sse"),
    ("GET", "/ws"),
    ("POST", "/tokens"),
    ("GET", "/.well-known/mercure"),
    ("POST", "/.well-known/mercure"),
];

/// The path alone: which route it is and which methods it takes.
pub fn match_path(method: &str, path: &str) -> Result<(&'static [&'static str], Route), Error> {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    Ok(match segments.as_slice() {
        [""] => (GET, Route::Demo),
        ["client.js"] => (GET, Route::Client),
        ["healthz"] => (GET, Route::Health),
        ["tokens"] => (POST, Route::MintToken),
        ["channels", c, "events"] => {
            let c = channel(c)?;
            (
                POST_DELETE,
                Route::Publish(c.clone()).for_method(method, Route::Purge(c)),
            )
        }
        ["channels", c] => (GET, Route::ChannelInfo(channel(c)?)),
        ["channels", c, "presence"] => (GET, Route::Presence(channel(c)?)),
        ["poll", c] => (GET, Route::Poll(channel(c)?)),
        ["sse", c] => (GET_ONLY, Route::Sse(channel(c)?)),
        ["ws", c] => (GET_ONLY, Route::Ws(channel(c)?)),
        ["poll"] => (GET, Route::PollMany),
        ["sse"] => (GET_ONLY, Route::SseMany),
        ["ws"] => (GET_ONLY, Route::WsMany),
        [".well-known", "mercure"] => (
            GET_POST,
            match method {
                "POST" => Route::MercurePublish,
                _ => Route::MercureSubscribe,
            },
        ),
        _ => return Err(Error::NotFound),
    })
}

/// Matches `method` and `path` (the path only, without the query).
pub fn route(method: &str, path: &str) -> Result<Route, Error> {
    let (allowed, found) = match_path(method, path)?;
    if allowed.contains(&method) {
        Ok(found)
    } else {
        Err(Error::MethodNotAllowed(allowed))
    }
}

/// A request URL as the runtime serializes it (WHATWG: `scheme://host[:port]/path?query#frag`,
/// the path and query already percent-encoded), cut into its origin, path and query without a
/// full parse: the `url` crate's parse was about 0.17 ms of every request (a CPU profile of
/// 2,000 publishes). `None` for anything else (userinfo, no `://`): then the caller parses.
pub fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let host_start = url.find("://")? + 3;
    let rest = url.get(host_start..)?;
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if rest.get(..authority_len)?.contains('@') {
        return None;
    }
    let origin = url.get(..host_start + authority_len)?;
    let tail = rest.get(authority_len..)?;
    let tail = &tail[..tail.find('#').unwrap_or(tail.len())];
    let (path, query) = match tail.find('?') {
        Some(q) => (&tail[..q], &tail[q + 1..]),
        None => (tail, ""),
    };
    Some((origin, if path.is_empty() { "/" } else { path }, query))
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
    fn a_serialized_url_is_cut_into_origin_path_and_query() {
        let cases = [
            (
                "http://127.0.0.1:8787/healthz",
                ("http://127.0.0.1:8787", "/healthz", ""),
            ),
            (
                "https://hub.example/channels/a%2Fb/events?since=3&token=x#top",
                (
                    "https://hub.example",
                    "/channels/a%2Fb/events",
                    "since=3&token=x",
                ),
            ),
            ("http://h/?", ("http://h", "/", "")),
            ("http://h", ("http://h", "/", "")),
            ("http://h?x=1", ("http://h", "/", "x=1")),
            ("http://h/p#f?not-a-query", ("http://h", "/p", "")),
        ];
        for (url, want) in cases {
            assert_eq!(split_url(url), Some(want), "{url}");
        }
        assert_eq!(split_url("http://user:pw@h/p"), None, "userinfo: parse it");
        assert_eq!(split_url("/relative"), None);
    }

    proptest::proptest! {
        /// On any URL the runtime could serialize, the cut agrees with a full parse.
        #[test]
        fn the_cut_agrees_with_the_url_crate(
            host in "[a-z0-9.-]{1,20}",
            port in proptest::option::of(1u16..),
            path in "(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,12}){0,4}",
            query in proptest::option::of("[A-Za-z0-9._~%!$&'()*+,;=:@/?-]{0,20}"),
            fragment in proptest::option::of("[A-Za-z0-9?#/]{0,8}"),
        ) {
            let port = port.map_or(String::new(), |p| format!(":{p}"));
            let query = query.map_or(String::new(), |q| format!("?{q}"));
            let fragment = fragment.map_or(String::new(), |f| format!("#{f}"));
            let raw = format!("http://{host}{port}{path}{query}{fragment}");
            let Ok(parsed) = url::Url::parse(&raw) else { return Ok(()) };
            let serialized = parsed.as_str().to_string();
            let (origin, path, query) = split_url(&serialized).unwrap();
            proptest::prop_assert_eq!(origin, parsed.origin().ascii_serialization());
            proptest::prop_assert_eq!(path, parsed.path());
            proptest::prop_assert_eq!(query, parsed.query().unwrap_or(""));
        }
    }

    #[test]
    fn table() {
        assert_eq!(route("GET", "/healthz"), Ok(Route::Health));
        assert_eq!(route("GET", "/"), Ok(Route::Demo));
        assert_eq!(
            route("POST", "/channels/orders/events"),
            Ok(Route::Publish(ch("orders")))
        );
        assert_eq!(
            route("GET", "/channels/a%3Ab"),
            Ok(Route::ChannelInfo(ch("a:b")))
        );
        assert_eq!(
            route("GET", "/channels/a%3Ab/presence"),
            Ok(Route::Presence(ch("a:b")))
        );
        assert_eq!(route("GET", "/poll/x.y"), Ok(Route::Poll(ch("x.y"))));
        assert_eq!(route("HEAD", "/poll/x"), Ok(Route::Poll(ch("x"))));
        assert_eq!(route("GET", "/sse/x"), Ok(Route::Sse(ch("x"))));
        assert_eq!(route("GET", "/ws/x"), Ok(Route::Ws(ch("x"))));
        assert_eq!(route("POST", "/tokens"), Ok(Route::MintToken));
        assert_eq!(route("GET", "/poll"), Ok(Route::PollMany));
        assert_eq!(route("GET", "/sse"), Ok(Route::SseMany));
        assert_eq!(route("GET", "/ws"), Ok(Route::WsMany));
        assert_eq!(
            route("GET", "/.well-known/mercure"),
            Ok(Route::MercureSubscribe)
        );
        assert_eq!(
            route("POST", "/.well-known/mercure"),
            Ok(Route::MercurePublish)
        );
        assert!(route("GET", "/sse").unwrap().takes_query_token());
        assert_eq!(
            route("DELETE", "/channels/c/events"),
            Ok(Route::Purge(ch("c")))
        );
        assert!(matches!(
            route("POST", "/ws/x"),
            Err(Error::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn every_listed_route_matches_and_nothing_else_does() {
        for (method, template) in ROUTES {
            let path = template.replace("{channel}", "c");
            assert!(route(method, &path).is_ok(), "{method} {template}");
        }
        let listed = |m: &str, t: &str| ROUTES.contains(&(m, t));
        for template in [
            "/",
            "/healthz",
            "/tokens",
            "/channels/{channel}/events",
            "/channels/{channel}",
            "/poll/{channel}",
            "/sse/{channel}",
            "/ws/{channel}",
            "/poll",
            "/sse",
            "/ws",
            "/.well-known/mercure",
        ] {
            for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"] {
                let ok = route(method, &template.replace("{channel}", "c")).is_ok();
                assert_eq!(ok, listed(method, template), "{method} {template}");
            }
        }
    }

    /// The operations `docs/openapi.yaml` documents, as (METHOD, template).
    fn documented() -> Vec<(String, String)> {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"));
        let paths = doc.split("\npaths:\n").nth(1).unwrap_or("");
        let paths = paths.split("\ncomponents:\n").next().unwrap_or("");
        let mut current = String::new();
        let mut found = Vec::new();
        for line in paths.lines() {
            if let Some(path) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                current = format!("/{path}");
            } else if let Some(method) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
            {
                if ["get", "head", "post", "put", "delete", "patch"].contains(&method) {
                    found.push((method.to_uppercase(), current.clone()));
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, t)| (m.to_string(), t.to_string()))
            .collect();
        routes.sort();
        assert_eq!(documented(), routes, "docs/openapi.yaml and ROUTES differ");
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

    #[test]
    fn query_tokens_only_where_headers_are_hard() {
        assert!(route("GET", "/sse/x").unwrap().takes_query_token());
        assert!(route("GET", "/ws/x").unwrap().takes_query_token());
        assert!(route("GET", "/poll/x").unwrap().takes_query_token());
        assert!(!route("POST", "/channels/x/events")
            .unwrap()
            .takes_query_token());
        assert!(!route("GET", "/channels/x").unwrap().takes_query_token());
        assert!(!route("POST", "/tokens").unwrap().takes_query_token());
    }
}
