//! Request-line helpers: percent-decoding of path segments and query values, query lookup, the
//! poll cursor and limit, and `If-None-Match` matching. Decoding happens once, here; what comes
//! out is then validated by the names' grammars, so `%2F` can never become a path separator.

use crate::error::Error;

/// The largest cursor: ids stay exact in a JavaScript number and in D1 (2^53 - 1).
pub const MAX_CURSOR: u64 = (1 << 53) - 1;

/// Percent-decodes `s`; `None` for a broken escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes every byte of `s` but the unreserved ones (RFC 3986 2.3), so the result is
/// ASCII and safe in a query value or a header.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The decoded value of the first `name=` in a query string (`+` is a space, as in forms).
pub fn query_param(query: &str, name: &str) -> Option<Result<String, Error>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            percent_decode(&value.replace('+', " ")).ok_or_else(|| {
                Error::bad_request(format!("query parameter {name} is badly encoded"))
            })
        })
    })
}

/// A cursor: "every event with id > N". Digits only, no sign, at most `MAX_CURSOR`.
pub fn parse_cursor(s: &str) -> Result<u64, Error> {
    let bad = || Error::bad_request("a cursor is a non-negative integer id");
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    s.parse::<u64>()
        .ok()
        .filter(|n| *n <= MAX_CURSOR)
        .ok_or_else(bad)
}

/// A page size in `1..=max`.
pub fn parse_limit(s: &str, max: u32) -> Result<u32, Error> {
    s.parse::<u32>()
        .ok()
        .filter(|n| (1..=max).contains(n) && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| Error::bad_request(format!("limit is an integer from 1 to {max}")))
}

/// True when an `If-None-Match` header value names `etag` (or is `*`). Weak comparison, as
/// RFC 9110 asks for this header.
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let want = strip(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || strip(t) == want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoding_round_trips_to_ascii() {
        for s in ["", "a b", "{\"sub\":\"Zoë\",\"n\":\"%2F\"}", "😀\n\u{0}"] {
            let encoded = percent_encode(s);
            assert!(encoded.bytes().all(|b| b.is_ascii_graphic()), "{encoded}");
            assert_eq!(percent_decode(&encoded).as_deref(), Some(s));
        }
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%3Ab").as_deref(), Some("a:b"));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%g1"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn params() {
        let q = "since=5&limit=10&x";
        assert_eq!(
            query_param(q, "since").and_then(Result::ok).as_deref(),
            Some("5")
        );
        assert_eq!(
            query_param(q, "x").and_then(Result::ok).as_deref(),
            Some("")
        );
        assert!(query_param(q, "token").is_none());
        assert!(query_param("since=%zz", "since").is_some_and(|r| r.is_err()));
    }

    #[test]
    fn cursors_and_limits() {
        assert_eq!(parse_cursor("0").ok(), Some(0));
        assert_eq!(parse_cursor("9007199254740991").ok(), Some(MAX_CURSOR));
        for bad in ["", "-1", "+1", "1.0", "9007199254740992", "abc", " 1"] {
            assert!(parse_cursor(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_limit("1000", 1000).ok(), Some(1000));
        for bad in ["0", "1001", "-5", "x", "+5"] {
            assert!(parse_limit(bad, 1000).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"a\"", "\"a\""));
        assert!(etag_matches("\"b\", W/\"a\"", "\"a\""));
        assert!(etag_matches("*", "\"a\""));
        assert!(!etag_matches("\"b\"", "\"a\""));
    }

    proptest! {
        #[test]
        fn cursor_parser_never_panics_and_bounds_hold(s in "\\PC{0,24}") {
            if let Ok(n) = parse_cursor(&s) {
                prop_assert!(n <= MAX_CURSOR);
            }
            let _ = percent_decode(&s);
        }
    }
}
