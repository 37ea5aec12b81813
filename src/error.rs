//! The one error type: every failure a client can see, with its HTTP status and a stable code,
//! rendered as an RFC 9457 problem document in exactly one place (`Error::problem`). Internal
//! failures carry their detail for the log only; clients see a generic message.

use serde::Serialize;
use std::fmt;

/// Media type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Prefix of every problem `type`: a URN, so no host is implied. The codes are listed in
/// `docs/API.md#problems`.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:edgehub:problem:";

/// Why a token was refused. Kept coarse on the wire: the detail never echoes a token's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    Missing,
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    MissingExpiry,
    QueryLifetime,
}

impl TokenFault {
    fn detail(self) -> &'static str {
        match self {
            TokenFault::Missing => "a bearer token is required",
            TokenFault::Malformed => "the token is not a well-formed JWT",
            TokenFault::Algorithm => "only HS256 tokens are accepted",
            TokenFault::Signature => "the token's signature does not verify",
            TokenFault::Expired => "the token has expired",
            TokenFault::NotYetValid => "the token is not valid yet (nbf)",
            TokenFault::MissingExpiry => "the token has no exp claim",
            TokenFault::QueryLifetime => {
                "a token passed in the query string must be short-lived (exp - iat too long, or no iat)"
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// 400: a path, query or body that does not follow the grammar; the string says which rule.
    BadRequest(String),
    /// 400: a body that is not JSON at all.
    InvalidJson(String),
    /// 401: no usable credentials.
    Unauthorized(TokenFault),
    /// 403: a valid token without the right for this channel and action.
    Forbidden(String),
    NotFound,
    /// 405, with the methods the path does accept.
    MethodNotAllowed(&'static [&'static str]),
    /// 400: JSON nested deeper than the configured limit; the string names the limit.
    TooDeep(String),
    /// 413: a configured limit was passed; the string names the limit.
    TooLarge(String),
    /// 409: the channel's presence already holds `PRESENCE_MAX_MEMBERS`; the string names it.
    PresenceFull(String),
    /// 422: an `Idempotency-Key` reused with a different body.
    IdempotencyConflict,
    /// 415: the body is not `application/json`.
    /// The body's media type is not the one the route reads (named here).
    UnsupportedMediaType(&'static str),
    /// 426: a WebSocket route reached without `Upgrade: websocket`.
    UpgradeRequired,
    /// 500: never shown to the client beyond a generic title; the string is for the log.
    Internal(String),
    /// 503: a dependency (the channel's object, D1) did not answer.
    Unavailable(String),
}

/// The RFC 9457 document, plus `code`, a stable machine-readable name.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
}

/// One row of the table of client-visible failures: what `Error::kind` returns.
struct Kind {
    status: u16,
    code: &'static str,
    title: &'static str,
}

const fn kind(status: u16, code: &'static str, title: &'static str) -> Kind {
    Kind {
        status,
        code,
        title,
    }
}

impl Error {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Error::BadRequest(detail.into())
    }

    /// The table: each failure's HTTP status, stable code (also the last part of the problem
    /// `type`, listed in `docs/API.md#problems`) and title, in one place.
    fn kind(&self) -> Kind {
        match self {
            Error::BadRequest(_) => kind(400, "bad_request", "Bad request"),
            Error::InvalidJson(_) => kind(400, "invalid_json", "Body is not valid JSON"),
            Error::TooDeep(_) => kind(400, "too_deep", "Nested too deep"),
            Error::Unauthorized(TokenFault::QueryLifetime) => {
                kind(401, "query_token_too_long_lived", "Unauthorized")
            }
            Error::Unauthorized(TokenFault::Expired) => kind(401, "token_expired", "Unauthorized"),
            Error::Unauthorized(_) => kind(401, "unauthorized", "Unauthorized"),
            Error::Forbidden(_) => kind(403, "forbidden", "Forbidden"),
            Error::NotFound => kind(404, "not_found", "Not found"),
            Error::MethodNotAllowed(_) => kind(405, "method_not_allowed", "Method not allowed"),
            Error::TooLarge(_) => kind(413, "too_large", "Payload too large"),
            Error::UnsupportedMediaType(_) => {
                kind(415, "unsupported_media_type", "Unsupported media type")
            }
            Error::PresenceFull(_) => kind(409, "presence_full", "Presence is full"),
            Error::IdempotencyConflict => {
                kind(422, "idempotency_conflict", "Idempotency key reused")
            }
            Error::UpgradeRequired => kind(426, "upgrade_required", "Upgrade required"),
            Error::Internal(_) => kind(500, "internal", "Internal error"),
            Error::Unavailable(_) => kind(503, "unavailable", "Service unavailable"),
        }
    }

    pub fn status(&self) -> u16 {
        self.kind().status
    }

    /// Stable code, also the last part of the problem `type`.
    pub fn code(&self) -> &'static str {
        self.kind().code
    }

    fn title(&self) -> &'static str {
        self.kind().title
    }

    fn detail(&self) -> String {
        match self {
            Error::BadRequest(d)
            | Error::InvalidJson(d)
            | Error::Forbidden(d)
            | Error::TooDeep(d)
            | Error::TooLarge(d)
            | Error::PresenceFull(d) => d.clone(),
            Error::Unauthorized(fault) => fault.detail().to_string(),
            Error::NotFound => "no such route".to_string(),
            Error::MethodNotAllowed(allowed) => format!("allowed: {}", allowed.join(", ")),
            Error::UnsupportedMediaType(wanted) => format!("send the body as {wanted}"),
            Error::IdempotencyConflict => {
                "this idempotency key was used with a different body; use a new key".to_string()
            }
            Error::UpgradeRequired => {
                "this route is a WebSocket: send Upgrade: websocket".to_string()
            }
            // Internal detail goes to the log, never to the client.
            Error::Internal(_) => "the hub failed to handle this request".to_string(),
            Error::Unavailable(_) => "a dependency of the hub did not answer; retry".to_string(),
        }
    }

    pub fn problem(&self) -> Problem {
        let code = self.code();
        Problem {
            kind: format!("{PROBLEM_TYPE_PREFIX}{code}"),
            title: self.title(),
            status: self.status(),
            detail: self.detail(),
            code,
        }
    }

    /// Extra response headers the status calls for (`WWW-Authenticate`, `Allow`).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::Unauthorized(fault) => {
                let error = match fault {
                    TokenFault::Missing => return vec![("www-authenticate", "Bearer".into())],
                    _ => "invalid_token",
                };
                vec![("www-authenticate", format!("Bearer error=\"{error}\""))]
            }
            Error::MethodNotAllowed(allowed) => vec![("allow", allowed.join(", "))],
            Error::UpgradeRequired => vec![("upgrade", "websocket".into())],
            _ => Vec::new(),
        }
    }

    /// What a log line may say: the internal detail, never token contents.
    pub fn log_detail(&self) -> Option<&str> {
        match self {
            Error::Internal(d) | Error::Unavailable(d) => Some(d),
            _ => None,
        }
    }
}

/// `code: detail`, as a client would see it; internal details are not shown here either (see
/// `log_detail`).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.detail())
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::InvalidJson(format!("invalid JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_detail_is_hidden_from_the_client() {
        let p = Error::Internal("d1 said: secret stuff".into()).problem();
        assert_eq!(p.status, 500);
        assert!(!p.detail.contains("secret"));
    }

    #[test]
    fn problem_type_carries_the_code() {
        let p = Error::TooLarge("data over 65536 bytes".into()).problem();
        assert_eq!(p.kind, "urn:edgehub:problem:too_large");
        assert_eq!(p.status, 413);
        assert_eq!(p.detail, "data over 65536 bytes");
    }

    #[test]
    fn every_status_is_a_client_or_server_error_and_codes_are_unique() {
        let all = [
            Error::BadRequest(String::new()),
            Error::InvalidJson(String::new()),
            Error::TooDeep(String::new()),
            Error::Unauthorized(TokenFault::Missing),
            Error::Unauthorized(TokenFault::Expired),
            Error::Unauthorized(TokenFault::QueryLifetime),
            Error::Forbidden(String::new()),
            Error::NotFound,
            Error::MethodNotAllowed(&["GET"]),
            Error::TooLarge(String::new()),
            Error::UnsupportedMediaType("application/json"),
            Error::IdempotencyConflict,
            Error::PresenceFull(String::new()),
            Error::UpgradeRequired,
            Error::Internal(String::new()),
            Error::Unavailable(String::new()),
        ];
        let codes: std::collections::HashSet<&str> = all.iter().map(Error::code).collect();
        assert_eq!(codes.len(), all.len());
        assert!(all.iter().all(|e| (400..600).contains(&e.status())));
        assert_eq!(
            Error::TooDeep("at most 3".into()).to_string(),
            "too_deep: at most 3"
        );
        assert_eq!(
            Error::Internal("secret".into()).to_string(),
            "internal: the hub failed to handle this request"
        );
    }

    #[test]
    fn unauthorized_says_bearer() {
        let h = Error::Unauthorized(TokenFault::Missing).headers();
        assert_eq!(h, vec![("www-authenticate", "Bearer".to_string())]);
        let h = Error::Unauthorized(TokenFault::Expired).headers();
        assert!(h[0].1.starts_with("Bearer error="));
    }
}
