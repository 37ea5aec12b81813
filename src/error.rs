//! The one error type: every failure a client can see, with its HTTP status and a stable code,
//! rendered as an RFC 9457 problem document in exactly one place (`Error::problem`). Internal
//! failures carry their detail for the log only; clients see a generic message.

use serde::Serialize;

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
    /// 422: an `Idempotency-Key` reused with a different body.
    IdempotencyConflict,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
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

impl Error {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Error::BadRequest(detail.into())
    }

    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) | Error::InvalidJson(_) | Error::TooDeep(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::TooLarge(_) => 413,
            Error::UnsupportedMediaType => 415,
            Error::IdempotencyConflict => 422,
            Error::UpgradeRequired => 426,
            Error::Internal(_) => 500,
            Error::Unavailable(_) => 503,
        }
    }

    /// Stable code, also the last part of the problem `type`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::InvalidJson(_) => "invalid_json",
            Error::Unauthorized(TokenFault::QueryLifetime) => "query_token_too_long_lived",
            Error::Unauthorized(TokenFault::Expired) => "token_expired",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::TooDeep(_) => "too_deep",
            Error::TooLarge(_) => "too_large",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::IdempotencyConflict => "idempotency_conflict",
            Error::UpgradeRequired => "upgrade_required",
            Error::Internal(_) => "internal",
            Error::Unavailable(_) => "unavailable",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "Bad request",
            Error::InvalidJson(_) => "Body is not valid JSON",
            Error::Unauthorized(_) => "Unauthorized",
            Error::Forbidden(_) => "Forbidden",
            Error::NotFound => "Not found",
            Error::MethodNotAllowed(_) => "Method not allowed",
            Error::TooDeep(_) => "Nested too deep",
            Error::TooLarge(_) => "Payload too large",
            Error::UnsupportedMediaType => "Unsupported media type",
            Error::IdempotencyConflict => "Idempotency key reused",
            Error::UpgradeRequired => "Upgrade required",
            Error::Internal(_) => "Internal error",
            Error::Unavailable(_) => "Service unavailable",
        }
    }

    fn detail(&self) -> String {
        match self {
            Error::BadRequest(d)
            | Error::InvalidJson(d)
            | Error::Forbidden(d)
            | Error::TooDeep(d)
            | Error::TooLarge(d) => d.clone(),
            Error::Unauthorized(fault) => fault.detail().to_string(),
            Error::NotFound => "no such route".to_string(),
            Error::MethodNotAllowed(allowed) => format!("allowed: {}", allowed.join(", ")),
            Error::UnsupportedMediaType => "send the body as application/json".to_string(),
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
    fn unauthorized_says_bearer() {
        let h = Error::Unauthorized(TokenFault::Missing).headers();
        assert_eq!(h, vec![("www-authenticate", "Bearer".to_string())]);
        let h = Error::Unauthorized(TokenFault::Expired).headers();
        assert!(h[0].1.starts_with("Bearer error="));
    }
}
