//! CORS: which origins may call the hub from a browser, and the headers that say so. The native
//! API's tokens travel in `Authorization` (or the query), never in cookies, so credentials are
//! not allowed there and `*` is safe when configured. The Mercure face reads cookies: there an
//! origin listed by name (never `*`, never reflected) may send credentials. See
//! `docs/API.md#cors` and `docs/mercure.md`.

/// Request headers a browser may send to the hub.
pub const ALLOW_HEADERS: &str =
    "authorization, content-type, idempotency-key, if-none-match, last-event-id";
/// Response headers a browser script may read.
pub const EXPOSE_HEADERS: &str = "etag, www-authenticate, allow";
/// How long a browser may cache a preflight answer, in seconds.
pub const MAX_AGE: &str = "600";

/// The `Access-Control-Allow-Origin` value for `origin`, if the configured list admits it:
/// `*` when the list holds `*`, else the origin itself when listed exactly.
pub fn allow_origin(configured: &[String], origin: &str) -> Option<String> {
    if configured.iter().any(|o| o == "*") {
        Some("*".to_string())
    } else {
        configured
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
            .then(|| origin.to_string())
    }
}

/// `Access-Control-Allow-Credentials` for an admitted origin on a path that reads cookies: only
/// for an origin the list names, not for `*`.
pub fn credentials_header(allowed_origin: &str) -> Option<(&'static str, String)> {
    (allowed_origin != "*").then(|| ("access-control-allow-credentials", "true".to_string()))
}

/// Headers for an ordinary (non-preflight) answer to an admitted origin.
pub fn response_headers(allowed_origin: &str) -> Vec<(&'static str, String)> {
    vec![
        ("access-control-allow-origin", allowed_origin.to_string()),
        ("access-control-expose-headers", EXPOSE_HEADERS.to_string()),
        ("vary", "origin".to_string()),
    ]
}

/// Headers for a preflight answer: the path's own methods, the headers the hub reads.
pub fn preflight_headers(allowed_origin: &str, methods: &[&str]) -> Vec<(&'static str, String)> {
    vec![
        ("access-control-allow-origin", allowed_origin.to_string()),
        ("access-control-allow-methods", methods.join(", ")),
        ("access-control-allow-headers", ALLOW_HEADERS.to_string()),
        ("access-control-max-age", MAX_AGE.to_string()),
        ("vary", "origin".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn credentials_only_for_a_named_origin() {
        assert_eq!(credentials_header("*"), None);
        assert_eq!(
            credentials_header("https://app.example"),
            Some(("access-control-allow-credentials", "true".to_string()))
        );
    }

    #[test]
    fn origins() {
        let configured = list(&["https://app.example", "http://127.0.0.1:5173"]);
        assert_eq!(
            allow_origin(&configured, "https://app.example").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(allow_origin(&configured, "https://evil.example"), None);
        assert_eq!(allow_origin(&configured, "https://app.example.evil"), None);
        assert_eq!(allow_origin(&[], "https://app.example"), None);
        assert_eq!(
            allow_origin(&list(&["*"]), "https://any.example").as_deref(),
            Some("*")
        );
    }

    #[test]
    fn preflight_names_the_path_methods_and_never_credentials() {
        let h = preflight_headers("https://app.example", &["GET", "HEAD"]);
        assert!(h.contains(&("access-control-allow-methods", "GET, HEAD".to_string())));
        assert!(h
            .iter()
            .all(|(k, _)| *k != "access-control-allow-credentials"));
    }
}
