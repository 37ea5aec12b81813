//! Tokens and rights, pure: HS256 JWT signing and verification, the `edgehub` claim, channel
//! patterns, and the `Grant` a verified token yields. No clock (`now` is passed in as unix
//! seconds) and no runtime: reading headers, query strings and secrets is the caller's job.
//! Errors never carry a token's contents: a refusal is only a coarse `TokenFault`.

pub mod delegate;
pub mod info;
pub mod mercure;
pub mod verified;

pub use info::Info;

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

/// The `edgehub` claim: the patterns a token may publish to and subscribe to, and the info its
/// holder shows as a presence member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights {
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Info>,
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
    pub info: Option<Info>,
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

/// Who is publishing, as far as idempotency keys go: a digest of the token's `sub`, or of the
/// token itself when it has none. Keys are scoped to it, so one publisher can neither squat
/// another's keys nor learn whether a key was used. Hex on the wire between the Worker and the
/// channel's object; the digest keeps subjects out of storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publisher([u8; 16]);

impl Publisher {
    pub fn of(sub: Option<&str>, token: &str) -> Publisher {
        use sha2::Digest;
        let mut hash = Sha256::new();
        match sub {
            Some(sub) => hash.update([b"sub\0".as_slice(), sub.as_bytes()].concat()),
            None => hash.update([b"token\0".as_slice(), token.as_bytes()].concat()),
        }
        let mut id = [0u8; 16];
        for (to, from) in id.iter_mut().zip(hash.finalize()) {
            *to = from;
        }
        Publisher(id)
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads `hex` back; `None` unless it is exactly what `hex` writes.
    pub fn parse(hex: &str) -> Option<Publisher> {
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, to) in id.iter_mut().enumerate() {
            *to = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Publisher(id))
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

/// The JOSE header members `verify` reads. Parsing refuses a member named twice: RFC 7515 §4
/// lets a parser either refuse duplicates or read the last, and two readers that choose
/// differently (a gateway, this hub) would then disagree on the algorithm.
struct JoseHeader {
    alg: Option<serde_json::Value>,
    crit: bool,
}

impl<'de> Deserialize<'de> for JoseHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JoseHeader;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JoseHeader, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut header = JoseHeader {
                    alg: None,
                    crit: false,
                };
                while let Some(name) = map.next_key::<String>()? {
                    match name.as_str() {
                        "alg" => header.alg = Some(map.next_value()?),
                        "crit" => {
                            header.crit = true;
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                    if !seen.insert(name) {
                        return Err(serde::de::Error::custom("a header member is named twice"));
                    }
                }
                Ok(header)
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// The header must name HS256 exactly, each member once. `crit` is refused: RFC 7515 §4.1.11
/// requires rejecting critical extensions one does not understand, and we understand none.
fn check_header(header_b64: &str) -> Result<(), Error> {
    let header: JoseHeader =
        serde_json::from_slice(&decode(header_b64)?).map_err(|_| refuse(TokenFault::Malformed))?;
    if header.crit {
        return Err(refuse(TokenFault::Malformed));
    }
    match header.alg.as_ref().and_then(|alg| alg.as_str()) {
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
        info: claims.edgehub.info,
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
mod tests;
