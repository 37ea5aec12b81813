//! Tokens and rights, pure: HS256 JWT signing and verification, the `edgehub` claim, channel
//! patterns, and the `Grant` a verified token yields. No clock (`now` is passed in as unix
//! seconds) and no runtime: reading headers, query strings and secrets is the caller's job.
//! Errors never carry a token's contents: a refusal is only a coarse `TokenFault`.

pub mod delegate;

use crate::error::{Error, TokenFault};
use crate::protocol::names::{ChannelName, CHANNEL_MAX_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;
use std::fmt;

/// Leeway, in seconds, granted on both `exp` and `nbf`: a token stays valid until
/// `exp + CLOCK_SKEW_SECONDS` and is accepted from `nbf - CLOCK_SKEW_SECONDS`, so a minting
/// server whose clock runs a little ahead of or behind Cloudflare's does not see spurious 401s.
pub const CLOCK_SKEW_SECONDS: i64 = 30;

/// The longest token `verify` looks at. Checked before any decoding, so an oversized header or
/// query string costs nothing; real tokens with a handful of patterns are far below it.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The only accepted algorithm. Anything else, `none` above all, is refused before the
/// signature is even looked at (the classic JWT algorithm-confusion attacks).
pub const ALGORITHM: &str = "HS256";

/// The header `sign` writes: `{"alg":"HS256","typ":"JWT"}`, base64url-encoded.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

/// Where the token came from. A query-string token ends up in access logs, so it must be
/// short-lived (see `verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
}

/// A set of channels: an exact channel name, a channel-name prefix followed by `*`
/// (`orders:*`), or `*` alone (every channel).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern(String);

impl Pattern {
    /// Exact names are checked with the channel grammar; a prefix must be empty or itself follow
    /// that grammar, so a pattern can never match by way of `/`, spaces or control characters.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let valid = match s.strip_suffix('*') {
            Some("") => true,
            Some(prefix) => ChannelName::parse(prefix).is_ok(),
            None => ChannelName::parse(s).is_ok(),
        };
        if valid {
            Ok(Pattern(s.to_string()))
        } else {
            Err(Error::bad_request(
                "channel patterns are a channel name, a channel-name prefix followed by `*`, or `*`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix of a `prefix*` pattern; `None` for an exact name (names never contain `*`).
    fn prefix(&self) -> Option<&str> {
        self.0.strip_suffix('*')
    }

    pub fn matches(&self, channel: &ChannelName) -> bool {
        match self.prefix() {
            Some(prefix) => channel.as_str().starts_with(prefix),
            None => channel.as_str() == self.0,
        }
    }

    /// True when every channel `other` matches is also matched by `self`, so rights handed on
    /// (a minted token) can be checked never to exceed the rights they come from.
    pub fn covers(&self, other: &Pattern) -> bool {
        match (self.prefix(), other.prefix()) {
            (Some(mine), Some(theirs)) => theirs.starts_with(mine),
            (Some(mine), None) => other.0.starts_with(mine),
            (None, None) => self.0 == other.0,
            // A prefix pattern matches many channels, unless its prefix is already a name of the
            // maximum length: then it matches that one name only.
            (None, Some(theirs)) => theirs.len() == CHANNEL_MAX_LEN && theirs == self.0,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Pattern::parse(&s).map_err(|_| serde::de::Error::custom("invalid channel pattern"))
    }
}

/// Parses a comma-separated pattern list from configuration (`PUBLIC_CHANNELS`, e.g.
/// `"public:*, demo"`). Blank and invalid entries are skipped: a typo narrows access, never
/// widens it.
pub fn patterns(list: &str) -> Vec<Pattern> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| Pattern::parse(entry).ok())
        .collect()
}

/// The `edgehub` claim: the patterns a token may publish to and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// A token's payload. Unknown registered claims (`iss`, `aud`, …) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default)]
    pub edgehub: Rights,
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub sub: Option<String>,
    pub publish: Vec<Pattern>,
    pub subscribe: Vec<Pattern>,
    pub exp: i64,
    pub iat: Option<i64>,
}

impl Grant {
    pub fn allows(&self, action: Action, channel: &ChannelName) -> bool {
        let patterns = match action {
            Action::Publish => &self.publish,
            Action::Subscribe => &self.subscribe,
        };
        patterns.iter().any(|p| p.matches(channel))
    }
}

/// The keyed MAC over a token's signing input. HMAC takes keys of any length, so this is `None`
/// only in theory.
fn mac(secret: &[u8], signing_input: &str) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(signing_input.as_bytes());
    Some(mac)
}

/// Signs `claims` as an HS256 JWT: `{"alg":"HS256","typ":"JWT"}`, base64url without padding.
pub fn sign(claims: &Claims, secret: &[u8]) -> String {
    // Serializing strings, integers and options cannot fail; were it ever to, the empty payload
    // makes a token that `verify` refuses as malformed: failing closed.
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let signing_input = format!("{HEADER_B64}.{}", URL_SAFE_NO_PAD.encode(payload));
    let signature = mac(secret, &signing_input)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn refuse(fault: TokenFault) -> Error {
    Error::Unauthorized(fault)
}

/// Strict base64url: no padding, no stray characters, canonical trailing bits.
fn decode(part: &str) -> Result<Vec<u8>, Error> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| refuse(TokenFault::Malformed))
}

/// The header must name HS256 exactly. `crit` is refused: RFC 7515 §4.1.11 requires rejecting
/// critical extensions one does not understand, and we understand none.
fn check_header(header_b64: &str) -> Result<(), Error> {
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header_b64)?).map_err(|_| refuse(TokenFault::Malformed))?;
    let header = header
        .as_object()
        .ok_or_else(|| refuse(TokenFault::Malformed))?;
    if header.contains_key("crit") {
        return Err(refuse(TokenFault::Malformed));
    }
    match header.get("alg").and_then(|alg| alg.as_str()) {
        Some(ALGORITHM) => Ok(()),
        _ => Err(refuse(TokenFault::Algorithm)),
    }
}

/// Any pattern that does not parse makes the whole token malformed: silently dropping it would
/// hide a minting bug, and guessing at it could widen access.
fn parse_all(list: &[String]) -> Result<Vec<Pattern>, Error> {
    list.iter()
        .map(|p| Pattern::parse(p).map_err(|_| refuse(TokenFault::Malformed)))
        .collect()
}

/// Verifies `token` at time `now` (unix seconds) and returns what it grants.
///
/// Order matters: the length is bounded before decoding; the algorithm is checked before the
/// signature; the signature is checked (in constant time) before the payload is parsed, so
/// nothing an attacker wrote is trusted before it is proven to come from a holder of `secret`.
/// A `Query` token must carry `iat`, not be issued in the future, and live at most
/// `query_max_lifetime` seconds (`exp - iat`), since URLs end up in logs.
pub fn verify(
    token: &str,
    secret: &[u8],
    now: i64,
    source: TokenSource,
    query_max_lifetime: i64,
) -> Result<Grant, Error> {
    if secret.is_empty() {
        // Anyone could forge tokens for an empty key: a configuration error, never a pass.
        return Err(Error::Internal("AUTH_SECRET is empty".into()));
    }
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(refuse(TokenFault::Malformed));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(TokenFault::Malformed));
    };

    check_header(header_b64)?;

    let signature = decode(signature_b64)?;
    let signing_input = token
        .strip_suffix(signature_b64)
        .and_then(|s| s.strip_suffix('.'))
        .ok_or_else(|| refuse(TokenFault::Malformed))?;
    mac(secret, signing_input)
        .ok_or_else(|| refuse(TokenFault::Signature))?
        .verify_slice(&signature)
        .map_err(|_| refuse(TokenFault::Signature))?;

    let claims: Claims =
        serde_json::from_slice(&decode(payload_b64)?).map_err(|_| refuse(TokenFault::Malformed))?;
    let grant = check_claims(claims, now)?;
    if source == TokenSource::Query {
        check_query_lifetime(&grant, now, query_max_lifetime)?;
    }
    Ok(grant)
}

fn check_claims(claims: Claims, now: i64) -> Result<Grant, Error> {
    let exp = claims
        .exp
        .ok_or_else(|| refuse(TokenFault::MissingExpiry))?;
    if now > exp.saturating_add(CLOCK_SKEW_SECONDS) {
        return Err(refuse(TokenFault::Expired));
    }
    if let Some(nbf) = claims.nbf {
        if now.saturating_add(CLOCK_SKEW_SECONDS) < nbf {
            return Err(refuse(TokenFault::NotYetValid));
        }
    }
    Ok(Grant {
        sub: claims.sub,
        publish: parse_all(&claims.edgehub.publish)?,
        subscribe: parse_all(&claims.edgehub.subscribe)?,
        exp,
        iat: claims.iat,
    })
}

/// An `iat` in the future would let `exp - iat` stay small while `exp` lies far ahead, so it is
/// refused too: a logged URL stays usable for at most `max_lifetime` plus twice the clock skew.
fn check_query_lifetime(grant: &Grant, now: i64, max_lifetime: i64) -> Result<(), Error> {
    let iat = grant.iat.ok_or_else(|| refuse(TokenFault::QueryLifetime))?;
    if iat > now.saturating_add(CLOCK_SKEW_SECONDS) || grant.exp.saturating_sub(iat) > max_lifetime
    {
        return Err(refuse(TokenFault::QueryLifetime));
    }
    Ok(())
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), or `None`
/// for another scheme, an empty token, or a token with spaces in it.
pub fn bearer(authorization_header: &str) -> Option<&str> {
    let (scheme, token) = authorization_header
        .trim()
        .split_once(|c: char| c.is_ascii_whitespace())?;
    let token = token.trim();
    let well_formed = !token.is_empty() && !token.contains(|c: char| c.is_ascii_whitespace());
    (scheme.eq_ignore_ascii_case("bearer") && well_formed).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"test-secret";
    const NOW: i64 = 1_700_000_000;
    const QUERY_MAX: i64 = 300;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with any header and payload text, correctly HS256-signed with `secret`.
    fn forge(header: &str, payload: &str, secret: &[u8]) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(&mac.finalize().into_bytes()))
    }

    fn claims(exp: Option<i64>, iat: Option<i64>, nbf: Option<i64>) -> Claims {
        Claims {
            exp,
            iat,
            nbf,
            sub: Some("alice".into()),
            edgehub: Rights {
                publish: vec!["orders:*".into()],
                subscribe: vec!["*".into()],
            },
        }
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    fn fault(result: Result<Grant, Error>) -> Result<(), TokenFault> {
        match result {
            Ok(_) => Ok(()),
            Err(Error::Unauthorized(fault)) => Err(fault),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn verify_outcomes_table() {
        use TokenFault::*;
        use TokenSource::{Header, Query};
        let good = sign(&claims(Some(NOW + 60), Some(NOW), None), SECRET);
        let payload = r#"{"exp":1700000060}"#;
        let mut tampered: Vec<String> = good.split('.').map(String::from).collect();
        tampered[1] = b64(br#"{"exp":1700000060,"edgehub":{"publish":["*"]}}"#);
        let tampered = tampered.join(".");
        let (head, sig) = good.rsplit_once('.').unwrap();
        let padded = format!("{head}.{sig}=");
        let too_long = format!("{good}{}", "A".repeat(MAX_TOKEN_BYTES));
        let bad_pattern = r#"{"exp":1700000060,"edgehub":{"subscribe":["a/b"]}}"#;
        let cases: Vec<(&str, String, TokenSource, Result<(), TokenFault>)> = vec![
            ("good", good.clone(), Header, Ok(())),
            (
                "expired",
                sign(&claims(Some(NOW - 31), None, None), SECRET),
                Header,
                Err(Expired),
            ),
            (
                "expired within skew",
                sign(&claims(Some(NOW - 30), None, None), SECRET),
                Header,
                Ok(()),
            ),
            (
                "nbf in the future",
                sign(&claims(Some(NOW + 60), None, Some(NOW + 31)), SECRET),
                Header,
                Err(NotYetValid),
            ),
            (
                "nbf within skew",
                sign(&claims(Some(NOW + 60), None, Some(NOW + 30)), SECRET),
                Header,
                Ok(()),
            ),
            (
                "alg none, no signature",
                format!(
                    "{}.{}.",
                    b64(br#"{"alg":"none","typ":"JWT"}"#),
                    b64(payload.as_bytes())
                ),
                Header,
                Err(Algorithm),
            ),
            (
                "alg none, signed",
                forge(r#"{"alg":"none"}"#, payload, SECRET),
                Header,
                Err(Algorithm),
            ),
            (
                "alg HS384",
                forge(r#"{"alg":"HS384","typ":"JWT"}"#, payload, SECRET),
                Header,
                Err(Algorithm),
            ),
            (
                "alg lowercase",
                forge(r#"{"alg":"hs256"}"#, payload, SECRET),
                Header,
                Err(Algorithm),
            ),
            (
                "alg not a string",
                forge(r#"{"alg":256}"#, payload, SECRET),
                Header,
                Err(Algorithm),
            ),
            (
                "missing alg",
                forge(r#"{"typ":"JWT"}"#, payload, SECRET),
                Header,
                Err(Algorithm),
            ),
            (
                "header not JSON",
                forge("HS256", payload, SECRET),
                Header,
                Err(Malformed),
            ),
            (
                "header not an object",
                forge(r#"["HS256"]"#, payload, SECRET),
                Header,
                Err(Malformed),
            ),
            (
                "crit header",
                forge(r#"{"alg":"HS256","crit":["exp"]}"#, payload, SECRET),
                Header,
                Err(Malformed),
            ),
            (
                "bad signature",
                sign(&claims(Some(NOW + 60), None, None), b"another-secret"),
                Header,
                Err(Signature),
            ),
            ("tampered payload", tampered, Header, Err(Signature)),
            ("padded signature", padded, Header, Err(Malformed)),
            (
                "two parts",
                good.rsplit_once('.').unwrap().0.to_string(),
                Header,
                Err(Malformed),
            ),
            ("four parts", format!("{good}.x"), Header, Err(Malformed)),
            ("empty", String::new(), Header, Err(Malformed)),
            ("non-base64", "!!!.@@@.###".into(), Header, Err(Malformed)),
            ("too long", too_long, Header, Err(Malformed)),
            (
                "payload not JSON",
                forge(r#"{"alg":"HS256"}"#, "exp=1", SECRET),
                Header,
                Err(Malformed),
            ),
            (
                "exp not an integer",
                forge(r#"{"alg":"HS256"}"#, r#"{"exp":"soon"}"#, SECRET),
                Header,
                Err(Malformed),
            ),
            (
                "invalid pattern",
                forge(r#"{"alg":"HS256"}"#, bad_pattern, SECRET),
                Header,
                Err(Malformed),
            ),
            (
                "missing exp",
                sign(&claims(None, Some(NOW), None), SECRET),
                Header,
                Err(MissingExpiry),
            ),
            (
                "query, too long-lived",
                sign(&claims(Some(NOW + 301), Some(NOW), None), SECRET),
                Query,
                Err(QueryLifetime),
            ),
            (
                "header, long-lived",
                sign(&claims(Some(NOW + 301), Some(NOW), None), SECRET),
                Header,
                Ok(()),
            ),
            (
                "query, no iat",
                sign(&claims(Some(NOW + 60), None, None), SECRET),
                Query,
                Err(QueryLifetime),
            ),
            (
                "query, iat in the future",
                sign(&claims(Some(NOW + 3600), Some(NOW + 3400), None), SECRET),
                Query,
                Err(QueryLifetime),
            ),
            (
                "query, short-lived",
                sign(&claims(Some(NOW + 300), Some(NOW), None), SECRET),
                Query,
                Ok(()),
            ),
        ];
        for (name, token, source, expected) in cases {
            assert_eq!(
                fault(verify(&token, SECRET, NOW, source, QUERY_MAX)),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn an_empty_secret_never_verifies() {
        let token = sign(&claims(Some(NOW + 60), None, None), b"");
        let result = verify(&token, b"", NOW, TokenSource::Header, QUERY_MAX);
        assert!(matches!(result, Err(Error::Internal(_))));
    }

    #[test]
    fn a_good_token_grants_its_rights() {
        let token = sign(&claims(Some(NOW + 60), Some(NOW), None), SECRET);
        let grant = verify(&token, SECRET, NOW, TokenSource::Header, QUERY_MAX).unwrap();
        assert_eq!(grant.sub.as_deref(), Some("alice"));
        assert_eq!((grant.exp, grant.iat), (NOW + 60, Some(NOW)));
        assert!(grant.allows(Action::Publish, &ch("orders:1")));
        assert!(!grant.allows(Action::Publish, &ch("chat")));
        assert!(grant.allows(Action::Subscribe, &ch("chat")));
        let nothing = Grant {
            publish: vec![],
            subscribe: vec![],
            ..grant
        };
        assert!(!nothing.allows(Action::Subscribe, &ch("chat")));
    }

    #[test]
    fn refusals_do_not_echo_the_token() {
        let mut c = claims(Some(NOW - 3600), None, None);
        c.sub = Some("sensitive-subject".into());
        let err = verify(
            &sign(&c, SECRET),
            SECRET,
            NOW,
            TokenSource::Header,
            QUERY_MAX,
        )
        .unwrap_err();
        let problem = serde_json::to_string(&err.problem()).unwrap();
        assert!(!problem.contains("sensitive-subject"), "{problem}");
    }

    /// Known answer computed independently with Python's standard library:
    /// `hmac.new(b"edgehub-kat-secret", b64(header) + b"." + b64(payload), hashlib.sha256)`.
    #[test]
    fn sign_known_answer() {
        let claims = Claims {
            exp: Some(1_700_003_600),
            iat: Some(1_700_000_000),
            nbf: None,
            sub: Some("alice".into()),
            edgehub: Rights {
                publish: vec!["orders:*".into()],
                subscribe: vec!["*".into(), "public:news".into()],
            },
        };
        assert_eq!(
            sign(&claims, b"edgehub-kat-secret"),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJleHAiOjE3MDAwMDM2MDAsImlhdCI6MTcwMDAwMDAwMCwic3ViIjoiYWxpY2UiLCJlZGdlaHViIjp7InB1Ymxpc2giOlsib3JkZXJzOioiXSwic3Vic2NyaWJlIjpbIioiLCJwdWJsaWM6bmV3cyJdfX0.\
             7eU4K91r84jFT2q3vhDv-NHidGQCn0yvqK6tCexVr40"
        );
    }

    /// The jwt.io sample token, signed elsewhere: its signature verifies, then the missing `exp`
    /// is what refuses it.
    #[test]
    fn verifies_a_foreign_hs256_signature() {
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                     eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
                     SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let verdict = |secret: &[u8]| fault(verify(token, secret, NOW, TokenSource::Header, 0));
        assert_eq!(
            verdict(b"your-256-bit-secret"),
            Err(TokenFault::MissingExpiry)
        );
        assert_eq!(verdict(b"not-the-secret"), Err(TokenFault::Signature));
    }

    #[test]
    fn claims_serialize_without_absent_fields() {
        let json = serde_json::to_string(&claims(Some(5), None, None)).unwrap();
        assert_eq!(
            json,
            r#"{"exp":5,"sub":"alice","edgehub":{"publish":["orders:*"],"subscribe":["*"]}}"#
        );
        let parsed: Claims = serde_json::from_str(r#"{"exp":5,"aud":"x","edgehub":{}}"#).unwrap();
        assert_eq!(
            parsed,
            Claims {
                exp: Some(5),
                ..Claims::default()
            }
        );
    }

    #[test]
    fn pattern_grammar_table() {
        let long = "a".repeat(CHANNEL_MAX_LEN);
        let long_prefix = format!("{long}*");
        let too_long_prefix = format!("{long}a*");
        for (s, ok) in [
            ("*", true),
            ("orders", true),
            ("orders:*", true),
            ("o*", true),
            (long.as_str(), true),
            (long_prefix.as_str(), true),
            (too_long_prefix.as_str(), false),
            ("", false),
            ("**", false),
            ("a**", false),
            ("*a", false),
            ("or*ders", false),
            (":*", false),
            (".*", false),
            ("a/*", false),
            ("a b*", false),
            (" orders", false),
        ] {
            assert_eq!(Pattern::parse(s).is_ok(), ok, "{s:?}");
        }
    }

    #[test]
    fn pattern_matches_table() {
        for (pattern, channel, expected) in [
            ("*", "anything", true),
            ("orders", "orders", true),
            ("orders", "orders:1", false),
            ("orders", "order", false),
            ("orders:*", "orders:1", true),
            ("orders:*", "orders:", true),
            ("orders:*", "orders", false),
            ("orders*", "orders", true),
            ("orders*", "ordersx", true),
            ("orders:*", "chat", false),
        ] {
            assert_eq!(
                pat(pattern).matches(&ch(channel)),
                expected,
                "{pattern} ~ {channel}"
            );
        }
    }

    #[test]
    fn pattern_covers_table() {
        let long = "a".repeat(CHANNEL_MAX_LEN);
        let long_prefix = format!("{long}*");
        for (wide, narrow, expected) in [
            ("*", "*", true),
            ("*", "orders:*", true),
            ("*", "orders", true),
            ("orders:*", "*", false),
            ("orders:*", "orders:*", true),
            ("orders:*", "orders:eu:*", true),
            ("orders:*", "orders:1", true),
            ("orders:*", "orders", false),
            ("orders:*", "orders*", false),
            ("orders*", "orders:*", true),
            ("orders", "orders", true),
            ("orders", "orders:1", false),
            ("orders", "orders*", false),
            ("orders", "*", false),
            (long.as_str(), long_prefix.as_str(), true),
            (long_prefix.as_str(), long.as_str(), true),
        ] {
            assert_eq!(
                pat(wide).covers(&pat(narrow)),
                expected,
                "{wide} covers {narrow}"
            );
        }
    }

    #[test]
    fn pattern_serde_is_the_plain_string() {
        assert_eq!(
            serde_json::to_string(&pat("orders:*")).unwrap(),
            r#""orders:*""#
        );
        let parsed: Vec<Pattern> = serde_json::from_str(r#"["*","demo"]"#).unwrap();
        assert_eq!(parsed, vec![pat("*"), pat("demo")]);
        assert!(serde_json::from_str::<Pattern>(r#""a/b""#).is_err());
    }

    #[test]
    fn config_pattern_lists() {
        assert_eq!(patterns(""), vec![]);
        assert_eq!(patterns(" , "), vec![]);
        assert_eq!(
            patterns("public:*, demo"),
            vec![pat("public:*"), pat("demo")]
        );
        assert_eq!(patterns("a/b,ok,*x"), vec![pat("ok")]);
    }

    #[test]
    fn bearer_table() {
        for (header, expected) in [
            ("Bearer abc.def.ghi", Some("abc.def.ghi")),
            ("bearer abc", Some("abc")),
            ("BEARER   abc  ", Some("abc")),
            ("  Bearer\tabc", Some("abc")),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearer a b", None),
            ("Basic abc", None),
            ("Bearerabc", None),
            ("", None),
        ] {
            assert_eq!(bearer(header), expected, "{header:?}");
        }
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            "[A-Za-z0-9][A-Za-z0-9._:-]{0,20}",
            "[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\\*",
        ]
    }

    /// A small alphabet, so patterns and channels often overlap.
    fn small_pattern() -> impl Strategy<Value = Pattern> {
        "\\*|[ab][ab:]{0,3}\\*?".prop_map(|s| Pattern::parse(&s).unwrap())
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            token in "\\PC{0,300}",
            now in any::<i64>(),
            max in any::<i64>(),
            query in any::<bool>(),
        ) {
            let source = if query { TokenSource::Query } else { TokenSource::Header };
            let _ = verify(&token, SECRET, now, source, max);
        }

        #[test]
        fn verify_never_panics_on_token_shaped_input(
            token in "[A-Za-z0-9_=-]{0,60}(\\.[A-Za-z0-9_=-]{0,60}){0,4}",
        ) {
            let _ = verify(&token, SECRET, NOW, TokenSource::Query, QUERY_MAX);
        }

        #[test]
        fn verify_never_panics_on_extreme_times(
            exp in any::<i64>(),
            iat in proptest::option::of(any::<i64>()),
            nbf in proptest::option::of(any::<i64>()),
            now in any::<i64>(),
            max in any::<i64>(),
        ) {
            let token = sign(&claims(Some(exp), iat, nbf), SECRET);
            let _ = verify(&token, SECRET, now, TokenSource::Query, max);
            let _ = verify(&token, SECRET, now, TokenSource::Header, max);
        }

        #[test]
        fn sign_then_verify_round_trips(
            publish in proptest::collection::vec(pattern_strategy(), 0..5),
            subscribe in proptest::collection::vec(pattern_strategy(), 0..5),
            sub in proptest::option::of("\\PC{0,20}"),
            age in 0i64..=CLOCK_SKEW_SECONDS,
            remaining in 0i64..=(QUERY_MAX - CLOCK_SKEW_SECONDS),
        ) {
            let iat = NOW - age;
            let exp = NOW + remaining;
            let claims = Claims {
                exp: Some(exp),
                iat: Some(iat),
                nbf: None,
                sub: sub.clone(),
                edgehub: Rights { publish: publish.clone(), subscribe: subscribe.clone() },
            };
            let token = sign(&claims, SECRET);
            let grant = verify(&token, SECRET, NOW, TokenSource::Query, QUERY_MAX).unwrap();
            prop_assert_eq!(grant.sub, sub);
            prop_assert_eq!((grant.exp, grant.iat), (exp, Some(iat)));
            let texts = |ps: &[Pattern]| ps.iter().map(|p| p.as_str().to_string()).collect::<Vec<_>>();
            prop_assert_eq!(texts(&grant.publish), publish);
            prop_assert_eq!(texts(&grant.subscribe), subscribe);
        }

        #[test]
        fn pattern_parse_never_panics(s in "\\PC{0,200}") {
            if let Ok(p) = Pattern::parse(&s) {
                prop_assert_eq!(p.as_str(), s.as_str());
                prop_assert!(!p.as_str().contains(['/', ' ', '\n', '\r', '%', '?', '#']));
            }
        }

        /// `covers` never claims more than `matches` shows, on random channels.
        #[test]
        fn covers_is_sound(
            wide in small_pattern(),
            narrow in small_pattern(),
            channels in proptest::collection::vec("[ab][ab:]{0,5}", 1..20),
        ) {
            if wide.covers(&narrow) {
                for c in channels {
                    let c = ChannelName::parse(&c).unwrap();
                    prop_assert!(!narrow.matches(&c) || wide.matches(&c), "{} {} {}", wide, narrow, c);
                }
            }
        }

        /// When `covers` says no, a channel that proves it exists.
        #[test]
        fn covers_is_complete(wide in small_pattern(), narrow in small_pattern()) {
            prop_assert!(wide.covers(&wide));
            if !wide.covers(&narrow) {
                let base = narrow.as_str().trim_end_matches('*');
                let witness = [base.to_string(), format!("{base}a"), format!("{base}b")]
                    .into_iter()
                    .filter_map(|c| ChannelName::parse(&c).ok())
                    .find(|c| narrow.matches(c) && !wide.matches(c));
                prop_assert!(witness.is_some(), "{} vs {}", wide, narrow);
            }
        }
    }
}
