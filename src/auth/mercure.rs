//! Mercure's two token profiles, pure: where a request presents its token (header, cookie, the
//! 0.x query parameter), verifying it as a 0.x JWS with a `mercure` claim or as a 1.0 RFC 9068
//! access token with `authorization_details`, and the `MercureGrant` it yields. No clock, no
//! runtime and no compiled matchers: matching is a closure the caller passes in. Errors are
//! RFC 6750's four outcomes and never carry a token's contents.

use super::{bearer, check_header, decode, mac, CLOCK_SKEW_SECONDS, MAX_TOKEN_BYTES};
use crate::protocol::json;
use crate::protocol::publish::compact;
use crate::protocol::topics::{check_topic, MatcherSpec, MAX_TOPIC_BYTES};
use hmac::Mac as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use url::Url;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternOptions};

/// Mercure's own configuration names for the publisher's and the subscriber's HS256 secrets.
pub const PUBLISHER_KEY_VAR: &str = "MERCURE_PUBLISHER_JWT_KEY";
pub const SUBSCRIBER_KEY_VAR: &str = "MERCURE_SUBSCRIBER_JWT_KEY";
/// 0.x: the cookie and the query parameter that may carry the token.
pub const COOKIE_0X: &str = "mercureAuthorization";
pub const QUERY_PARAM_0X: &str = "authorization";
/// 1.0: the recommended cookie, then the name Mercure's playground uses.
pub const COOKIE_V1: &str = "__Secure-mercure_access_token";
pub const COOKIE_V1_PLAIN: &str = "mercure_access_token";
/// The `type` of a Mercure authorization detail, compared byte for byte.
pub const DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";
/// The most selectors one token carries (0.x: `publish` and `subscribe` together; 1.0: `topics`
/// entries over all Mercure details). Each 1.0 URL pattern is compiled once to validate it, so
/// this also bounds what one token costs to verify.
pub const MAX_SELECTORS: usize = 100;
/// The longest selector, in bytes: the longest topic.
pub const MAX_SELECTOR_BYTES: usize = MAX_TOPIC_BYTES;
/// The deepest payload: it goes out in subscription events to other subscribers' JSON readers.
pub const MAX_PAYLOAD_DEPTH: usize = 32;

const ANY: &str = "*";
const ACTION_PUBLISH: &str = "publish";
const ACTION_SUBSCRIBE: &str = "subscribe";
const MATCH_EXACT: &str = "exact";
const MATCH_URLPATTERN: &str = "urlpattern";

/// What the hub trusts: the HS256 secrets, and for 1.0 tokens its resource identifier (`aud`,
/// e.g. `https://localhost/.well-known/mercure`) and the one trusted issuer (`iss`, e.g.
/// `https://localhost`), to which both secrets are bound.
#[derive(Clone, PartialEq, Eq)]
pub struct MercureKeys {
    pub publisher: Vec<u8>,
    pub subscriber: Vec<u8>,
    pub audience: String,
    pub issuer: String,
}

/// Secrets stay out of logs.
impl fmt::Debug for MercureKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MercureKeys")
            .field("publisher", &"<redacted>")
            .field("subscriber", &"<redacted>")
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Where the token came from. A query-string token (0.x only) ends up in access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFrom {
    Header,
    Cookie,
    Query,
}

/// The outcomes of RFC 6750 §3 that Mercure uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MercureAuthError {
    /// 401: no token, where one is needed.
    Missing,
    /// 400: the token's presentation is malformed (an `Authorization` header that is not
    /// `Bearer <token>`).
    InvalidRequest,
    /// 401: the token does not verify, has expired, or carries a malformed grant. One outcome for
    /// every cause, as the 1.0 spec advises, so a client learns nothing about why.
    InvalidToken,
    /// 403: a valid token that does not grant this.
    InsufficientScope,
}

impl MercureAuthError {
    pub fn status(&self) -> u16 {
        match self {
            MercureAuthError::InvalidRequest => 400,
            MercureAuthError::Missing | MercureAuthError::InvalidToken => 401,
            MercureAuthError::InsufficientScope => 403,
        }
    }

    /// The RFC 6750 `error` code; none for a missing token (1.0: the challenge MUST NOT carry
    /// one).
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            MercureAuthError::Missing => None,
            MercureAuthError::InvalidRequest => Some("invalid_request"),
            MercureAuthError::InvalidToken => Some("invalid_token"),
            MercureAuthError::InsufficientScope => Some("insufficient_scope"),
        }
    }

    /// The `WWW-Authenticate` value. 1.0 calls for it on every 401 and 403 and on a 400 about
    /// the token, with `resource_metadata` (RFC 9728) when the hub publishes metadata; the 0.x
    /// spec names no challenge, and the same one harms nothing, so 0.x gets it without
    /// `resource_metadata` (a 1.0 notion). `Some` for every variant today.
    pub fn www_authenticate(&self, v1: bool, resource_metadata: Option<&str>) -> Option<String> {
        let mut params = Vec::new();
        if let Some(code) = self.error_code() {
            params.push(format!("error=\"{code}\""));
        }
        if let Some(url) = resource_metadata.filter(|_| v1) {
            params.push(format!("resource_metadata=\"{}\"", quoted(url)));
        }
        Some(match params.is_empty() {
            true => "Bearer".to_string(),
            false => format!("Bearer {}", params.join(", ")),
        })
    }
}

/// The inside of an RFC 9110 quoted-string: `"` and `\` escaped, control characters dropped so
/// a misconfigured URL can never split the header.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars().filter(|c| !c.is_control()) {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for MercureAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MercureAuthError::Missing => "a bearer token is required",
            MercureAuthError::InvalidRequest => "the Authorization header is not `Bearer <token>`",
            MercureAuthError::InvalidToken => "the token is invalid",
            MercureAuthError::InsufficientScope => "the token does not grant this",
        })
    }
}

impl std::error::Error for MercureAuthError {}

/// The token a request presents, by the precedence of the protocol version the hub speaks.
///
/// An `Authorization` header, when present, is the token: the cookie and the query parameter
/// are then ignored, never a reason to reject (both specs, MUST). A header that is not
/// `Bearer <token>` (scheme case-insensitive) is `InvalidRequest`, not a cue to fall back. Then
/// 0.x takes the `authorization` query parameter (its decoded value) before the
/// `mercureAuthorization` cookie (0.x, MUST: with a query token "the content of the cookie must
/// be ignored"); 1.0 accepts no query token and reads the `__Secure-mercure_access_token`
/// cookie, then `mercure_access_token`. Empty values count as absent. `Ok(None)`: no token.
pub fn find_token(
    authorization: Option<&str>,
    cookie_header: Option<&str>,
    query_authorization: Option<&str>,
    v1: bool,
) -> Result<Option<(String, TokenFrom)>, MercureAuthError> {
    if let Some(header) = authorization {
        return bearer(header)
            .map(|token| Some((token.to_string(), TokenFrom::Header)))
            .ok_or(MercureAuthError::InvalidRequest);
    }
    if !v1 {
        if let Some(token) = query_authorization.filter(|q| !q.is_empty()) {
            return Ok(Some((token.to_string(), TokenFrom::Query)));
        }
    }
    let names: &[&str] = if v1 {
        &[COOKIE_V1, COOKIE_V1_PLAIN]
    } else {
        &[COOKIE_0X]
    };
    let found = cookie_header.and_then(|header| names.iter().find_map(|n| cookie(header, n)));
    Ok(found.map(|token| (token.to_string(), TokenFrom::Cookie)))
}

/// The first cookie named `name` (case-sensitive, RFC 6265) in a `Cookie` header, without the
/// optional double quotes; `None` when absent or empty.
fn cookie<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    let (_, value) = header
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| n.trim() == name)?;
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    (!value.is_empty()).then_some(value)
}

/// What a verified token allows. `exp` is the claim as sent: the hub closes a subscription at
/// that time (0.x MUST when present; 1.0 tokens always have it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MercureGrant {
    /// The token is a 1.0 access token (`typ` `at+jwt`); else a 0.x JWS.
    pub v1: bool,
    pub exp: Option<i64>,
    publish: Vec<MatcherSpec>,
    /// Each with the compact JSON payload of its 1.0 authorization detail, in token order.
    subscribe: Vec<(MatcherSpec, Option<String>)>,
    /// 0.x: `mercure.payload`, the same for every subscription.
    payload: Option<String>,
}

/// `*` grants every topic whatever the caller's matcher says of it.
fn hits(spec: &MatcherSpec, topic: &str, matches: &impl Fn(&MatcherSpec, &str) -> bool) -> bool {
    matches!(spec, MatcherSpec::Any) || matches(spec, topic)
}

impl MercureGrant {
    /// True when every topic of an update (canonical and alternates) is matched by some publish
    /// selector (both specs, MUST). No publish selector, or no topic, allows nothing.
    pub fn may_publish(
        &self,
        topics: &[String],
        matches: impl Fn(&MatcherSpec, &str) -> bool,
    ) -> bool {
        !topics.is_empty()
            && topics
                .iter()
                .all(|topic| self.publish.iter().any(|s| hits(s, topic, &matches)))
    }

    /// True when at least one topic of a private update is matched by some subscribe selector:
    /// what receiving it takes (both specs, MUST).
    pub fn may_receive(
        &self,
        topics: &[String],
        matches: impl Fn(&MatcherSpec, &str) -> bool,
    ) -> bool {
        topics
            .iter()
            .any(|topic| self.subscribe.iter().any(|(s, _)| hits(s, topic, &matches)))
    }

    /// The selectors of the private updates this subscriber may receive, without repeats; just
    /// `[Any]` when one of them is `*`.
    pub fn subscribe_selectors(&self) -> Vec<MatcherSpec> {
        if self.subscribe.iter().any(|(s, _)| *s == MatcherSpec::Any) {
            return vec![MatcherSpec::Any];
        }
        let mut out: Vec<MatcherSpec> = Vec::new();
        for (spec, _) in &self.subscribe {
            if !out.contains(spec) {
                out.push(spec.clone());
            }
        }
        out
    }

    /// The payload a subscription shows in subscription events and the subscription API, as
    /// compact JSON. 1.0: that of the first subscribe detail one of whose topics matches the
    /// subscription's own matcher string taken as a topic (a `*` detail is the default), and none
    /// when that detail has none. 0.x: `mercure.payload`, for every subscription.
    pub fn payload_for(
        &self,
        subscription_matcher: &str,
        matches: impl Fn(&MatcherSpec, &str) -> bool,
    ) -> Option<String> {
        if !self.v1 {
            return self.payload.clone();
        }
        // Topics of one detail are adjacent and in order, so the first matching entry belongs to
        // the first matching detail.
        self.subscribe
            .iter()
            .find(|(spec, _)| hits(spec, subscription_matcher, &matches))
            .and_then(|(_, payload)| payload.clone())
    }
}

/// Verifies `token` with `key` (the publisher's or the subscriber's secret, as the endpoint
/// decides) at `now_s` (unix seconds). The profile is read from the JOSE header: `typ` `at+jwt`
/// or `application/at+jwt` (case-insensitive) is a 1.0 access token, anything else a 0.x JWS.
///
/// Order matters, as in `super::verify`: the length is bounded before decoding; `alg` must be
/// HS256 (never `none`), with no `crit` and no member named twice; the signature is checked in
/// constant time before the payload is parsed. 0.x: `exp` and `nbf` are enforced when present.
/// 1.0: `exp` is required, `nbf` enforced when present, `aud` (a string or an array) must hold
/// `keys.audience` and `iss` must equal `keys.issuer`; `sub`, `client_id`, `iat` and `jti` are
/// the issuer's business. Every failure is `InvalidToken`, including an empty `key`, with which
/// anyone could sign.
pub fn verify(
    token: &str,
    key: &[u8],
    keys: &MercureKeys,
    now_s: i64,
) -> Result<MercureGrant, MercureAuthError> {
    if key.is_empty() || token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(MercureAuthError::InvalidToken);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MercureAuthError::InvalidToken);
    };
    check_header(header_b64).map_err(invalid)?;
    let v1 = is_access_token(header_b64)?;

    let signature = decode(signature_b64).map_err(invalid)?;
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(MercureAuthError::InvalidToken)?;
    mac(key, signing_input)
        .ok_or(MercureAuthError::InvalidToken)?
        .verify_slice(&signature)
        .map_err(invalid)?;

    let payload = decode(payload_b64).map_err(invalid)?;
    let payload = std::str::from_utf8(&payload).map_err(invalid)?;
    if v1 {
        access_grant(payload, keys, now_s)
    } else {
        legacy_grant(payload, now_s)
    }
}

fn invalid<E>(_: E) -> MercureAuthError {
    MercureAuthError::InvalidToken
}

/// The header's `typ`, if any (a string, as RFC 7515 has it); members other than `typ` were
/// checked by `check_header`.
#[derive(Deserialize)]
struct TypHeader {
    typ: Option<String>,
}

/// RFC 7515 §4.1.9: the `application/` prefix may be left out; media types are
/// case-insensitive.
fn is_access_token(header_b64: &str) -> Result<bool, MercureAuthError> {
    const PREFIX: &str = "application/";
    let header: TypHeader = object(&decode(header_b64).map_err(invalid)?)?;
    let Some(typ) = header.typ else {
        return Ok(false);
    };
    let subtype = match typ.get(..PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(PREFIX) => typ.get(PREFIX.len()..),
        _ => Some(typ.as_str()),
    };
    Ok(subtype.is_some_and(|s| s.eq_ignore_ascii_case("at+jwt")))
}

/// Parses a JSON object into `T`. serde's derived structs also read arrays, by position; a
/// claims set, a claim or a detail that is not an object is malformed, so arrays are refused.
/// Members named twice are refused by the derived impls.
fn object<T: DeserializeOwned>(text: impl AsRef<[u8]>) -> Result<T, MercureAuthError> {
    let text = text.as_ref();
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(MercureAuthError::InvalidToken);
    }
    serde_json::from_slice(text).map_err(invalid)
}

/// RFC 7519's NumericDate: seconds, which may have a fraction (lcobucci/jwt, behind Symfony's
/// Mercure bundle, writes microseconds). The fraction is dropped: the clock skew dwarfs it.
#[derive(Clone, Copy)]
struct NumericDate(i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        match (number.as_i64(), number.as_f64()) {
            (Some(seconds), _) => Ok(NumericDate(seconds)),
            // `as` saturates: a date beyond i64 is simply far away.
            (None, Some(seconds)) if seconds.is_finite() => Ok(NumericDate(seconds.floor() as i64)),
            _ => Err(serde::de::Error::custom("not a NumericDate")),
        }
    }
}

fn seconds(date: Option<NumericDate>) -> Option<i64> {
    date.map(|NumericDate(s)| s)
}

fn check_times(exp: Option<i64>, nbf: Option<i64>, now: i64) -> Result<(), MercureAuthError> {
    let expired = exp.is_some_and(|exp| now > exp.saturating_add(CLOCK_SKEW_SECONDS));
    let early = nbf.is_some_and(|nbf| now.saturating_add(CLOCK_SKEW_SECONDS) < nbf);
    match expired || early {
        true => Err(MercureAuthError::InvalidToken),
        false => Ok(()),
    }
}

/// A selector as a topic: 1 to `MAX_SELECTOR_BYTES` bytes, no control characters.
fn check_selector(selector: &str) -> Result<(), MercureAuthError> {
    check_topic(selector, "selector").map_err(invalid)
}

/// A payload as other subscribers' JSON readers get it: readable, and one compact line.
fn payload_text(raw: &RawValue) -> Result<String, MercureAuthError> {
    json::check(raw.get(), MAX_PAYLOAD_DEPTH).map_err(invalid)?;
    Ok(compact(raw.get()))
}

#[derive(Deserialize)]
struct LegacyClaims {
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
    mercure: Option<Box<RawValue>>,
    /// The reference hub's namespaced spelling; it wins when both are present, as there.
    #[serde(rename = "https://mercure.rocks/")]
    namespaced: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct LegacyClaim {
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
    payload: Option<Box<RawValue>>,
}

/// 0.x: no claim is required; a missing `mercure.publish` grants no publishing.
fn legacy_grant(payload: &str, now: i64) -> Result<MercureGrant, MercureAuthError> {
    let claims: LegacyClaims = object(payload)?;
    let exp = seconds(claims.exp);
    check_times(exp, seconds(claims.nbf), now)?;
    let claim: Option<LegacyClaim> = claims
        .namespaced
        .or(claims.mercure)
        .map(|raw| object(raw.get()))
        .transpose()?;
    let (publish, subscribe, payload) = match claim {
        Some(c) => (
            c.publish.unwrap_or_default(),
            c.subscribe.unwrap_or_default(),
            c.payload,
        ),
        None => (Vec::new(), Vec::new(), None),
    };
    if publish.len() + subscribe.len() > MAX_SELECTORS {
        return Err(MercureAuthError::InvalidToken);
    }
    let subscribe = legacy_selectors(&subscribe)?;
    Ok(MercureGrant {
        v1: false,
        exp,
        publish: legacy_selectors(&publish)?,
        subscribe: subscribe.into_iter().map(|s| (s, None)).collect(),
        payload: payload.as_deref().map(payload_text).transpose()?,
    })
}

/// 0.x selector matching: `*`, then byte equality, then, for a selector holding `{` (the
/// reference hub tries templates only then), the RFC 6570 template. So such a selector becomes
/// both an `Exact` and a `UriTemplate`.
fn legacy_selectors(list: &[String]) -> Result<Vec<MatcherSpec>, MercureAuthError> {
    let mut specs = Vec::with_capacity(list.len());
    for selector in list {
        check_selector(selector)?;
        if selector == ANY {
            specs.push(MatcherSpec::Any);
            continue;
        }
        specs.push(MatcherSpec::Exact(selector.clone()));
        if selector.contains('{') {
            specs.push(MatcherSpec::UriTemplate(selector.clone()));
        }
    }
    Ok(specs)
}

#[derive(Deserialize)]
struct AccessClaims {
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
    iss: Option<String>,
    aud: Option<Audience>,
    authorization_details: Option<Vec<Box<RawValue>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn holds(&self, resource: &str) -> bool {
        match self {
            Audience::One(aud) => aud == resource,
            Audience::Many(list) => list.iter().any(|aud| aud == resource),
        }
    }
}

/// RFC 9396: every detail is an object with a `type`. Only Mercure's are read further; others
/// may have any shape.
#[derive(Deserialize)]
struct DetailType {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct MercureDetail {
    actions: Vec<String>,
    topics: Vec<Box<RawValue>>,
    payload: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct TopicEntry {
    #[serde(rename = "match")]
    pattern: String,
    match_type: Option<String>,
}

/// 1.0: an RFC 9068 access token for this hub, from its trusted issuer.
fn access_grant(
    payload: &str,
    keys: &MercureKeys,
    now: i64,
) -> Result<MercureGrant, MercureAuthError> {
    let claims: AccessClaims = object(payload)?;
    let exp = seconds(claims.exp).ok_or(MercureAuthError::InvalidToken)?;
    check_times(Some(exp), seconds(claims.nbf), now)?;
    // An empty configured value would match an empty claim: refuse instead.
    let for_us = !keys.audience.is_empty()
        && claims.aud.is_some_and(|aud| aud.holds(&keys.audience))
        && !keys.issuer.is_empty()
        && claims.iss.as_deref() == Some(keys.issuer.as_str());
    if !for_us {
        return Err(MercureAuthError::InvalidToken);
    }
    let mut grant = MercureGrant {
        v1: true,
        exp: Some(exp),
        publish: Vec::new(),
        subscribe: Vec::new(),
        payload: None,
    };
    // Relative URL patterns resolve against the hub's URL, which the resource identifier is.
    let base = Url::parse(&keys.audience).ok();
    let mut selectors = 0usize;
    for raw in claims.authorization_details.unwrap_or_default() {
        let head: DetailType = object(raw.get())?;
        if head.kind.as_deref() != Some(DETAIL_TYPE) {
            continue;
        }
        let detail: MercureDetail = object(raw.get())?;
        selectors += detail.topics.len();
        if selectors > MAX_SELECTORS {
            return Err(MercureAuthError::InvalidToken);
        }
        add_detail(&mut grant, detail, base.as_ref())?;
    }
    Ok(grant)
}

/// One Mercure detail, validated whole before anything of it is granted: any fault rejects the
/// token, since acting on the rest would silently change what it grants (1.0, MUST). Unknown
/// actions grant nothing and are no fault (MUST), so future actions do not break tokens.
fn add_detail(
    grant: &mut MercureGrant,
    detail: MercureDetail,
    base: Option<&Url>,
) -> Result<(), MercureAuthError> {
    if detail.actions.is_empty() || detail.topics.is_empty() {
        return Err(MercureAuthError::InvalidToken);
    }
    let payload = match detail.payload.as_deref() {
        Some(raw) if !raw.get().trim_start().starts_with('{') => {
            return Err(MercureAuthError::InvalidToken)
        }
        Some(raw) => Some(payload_text(raw)?),
        None => None,
    };
    let specs = detail
        .topics
        .iter()
        .map(|raw| topic_spec(&object(raw.get())?, base))
        .collect::<Result<Vec<_>, _>>()?;
    let has = |action: &str| detail.actions.iter().any(|a| a == action);
    if has(ACTION_PUBLISH) {
        grant.publish.extend(specs.iter().cloned());
    }
    if has(ACTION_SUBSCRIBE) {
        let with_payload = specs.into_iter().map(|s| (s, payload.clone()));
        grant.subscribe.extend(with_payload);
    }
    Ok(())
}

/// A topic matcher: `exact` by default, or `urlpattern`. Any other `match_type` rejects the
/// token, even with `*`: a grant the hub cannot read must fail loudly. A URL pattern must
/// compile, or it would silently grant nothing.
fn topic_spec(entry: &TopicEntry, base: Option<&Url>) -> Result<MatcherSpec, MercureAuthError> {
    check_selector(&entry.pattern)?;
    let kind = entry.match_type.as_deref().unwrap_or(MATCH_EXACT);
    if kind != MATCH_EXACT && kind != MATCH_URLPATTERN {
        return Err(MercureAuthError::InvalidToken);
    }
    if entry.pattern == ANY {
        return Ok(MatcherSpec::Any);
    }
    if kind == MATCH_EXACT {
        return Ok(MatcherSpec::Exact(entry.pattern.clone()));
    }
    let compiled =
        UrlPatternInit::parse_constructor_string::<regex::Regex>(&entry.pattern, base.cloned())
            .and_then(|init| <UrlPattern>::parse(init, UrlPatternOptions::default()));
    match compiled {
        Ok(_) => Ok(MatcherSpec::UrlPattern(entry.pattern.clone())),
        Err(_) => Err(MercureAuthError::InvalidToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::Hmac;
    use sha2::Sha256;

    const KEY: &[u8] = b"!ChangeThisMercureHubJWTSecretKey!";
    const AUD: &str = "https://localhost/.well-known/mercure";
    const ISS: &str = "https://localhost";
    const NOW: i64 = 1_700_000_000;
    const FAR: i64 = 4_102_444_800;
    const V1_HEADER: &str = r#"{"alg":"HS256","typ":"at+jwt"}"#;

    /// Mercure's conformance-suite tokens, verbatim.
    const SUITE_0X: &str = "eyJhbGciOiJIUzI1NiJ9.eyJtZXJjdXJlIjp7InB1Ymxpc2giOlsiKiJdLCJzdWJzY3JpYmUiOlsiKiJdfX0.bVXdlWXwfw9ySx7-iV5OpUSHo34RkjUdVzDLBcc6l_g";
    const SUITE_1X: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJhdWQiOiJodHRwczovL2xvY2FsaG9zdC8ud2VsbC1rbm93bi9tZXJjdXJlIiwiaXNzIjoiaHR0cHM6Ly9sb2NhbGhvc3QiLCJhdXRob3JpemF0aW9uX2RldGFpbHMiOlt7InR5cGUiOiJodHRwczovL21lcmN1cmUucm9ja3MvYXV0aG9yaXphdGlvbi1kZXRhaWwiLCJhY3Rpb25zIjpbInB1Ymxpc2giXSwidG9waWNzIjpbeyJtYXRjaCI6IioifV19LHsidHlwZSI6Imh0dHBzOi8vbWVyY3VyZS5yb2Nrcy9hdXRob3JpemF0aW9uLWRldGFpbCIsImFjdGlvbnMiOlsic3Vic2NyaWJlIl0sInRvcGljcyI6W3sibWF0Y2giOiIqIn1dfV0sImV4cCI6NDEwMjQ0NDgwMH0.z_S8IP5WZsCK8h3pcq0PB5zvJE0OdTrGA70khAYJQy4";

    fn keys() -> MercureKeys {
        MercureKeys {
            publisher: KEY.to_vec(),
            subscriber: KEY.to_vec(),
            audience: AUD.into(),
            issuer: ISS.into(),
        }
    }

    /// Any header and claims text, HS256-signed with `key`.
    fn forge(header: &str, claims: &str, key: &[u8]) -> String {
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s.as_bytes());
        let input = format!("{}.{}", b64(header), b64(claims));
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(input.as_bytes());
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    fn legacy(claims: &str) -> String {
        forge(r#"{"alg":"HS256"}"#, claims, KEY)
    }

    /// A 1.0 token for this hub carrying `details` (JSON text of the array).
    fn access(details: &str) -> String {
        let claims = format!(
            r#"{{"aud":"{AUD}","iss":"{ISS}","exp":{FAR},"authorization_details":{details}}}"#
        );
        forge(V1_HEADER, &claims, KEY)
    }

    fn detail(actions: &str, topics: &str) -> String {
        format!(r#"{{"type":"{DETAIL_TYPE}","actions":{actions},"topics":{topics}}}"#)
    }

    fn check(token: &str) -> Result<MercureGrant, MercureAuthError> {
        verify(token, KEY, &keys(), NOW)
    }

    /// A stand-in for the compiled matchers: exact bytes, and one trailing `:id` / `{id}`
    /// segment for patterns and templates.
    fn toy(spec: &MatcherSpec, topic: &str) -> bool {
        let segment = |prefix: &str| {
            topic
                .strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
        };
        match spec {
            MatcherSpec::Any => true,
            MatcherSpec::Exact(s) => s == topic,
            MatcherSpec::UrlPattern(p) => p.strip_suffix(":id").is_some_and(segment),
            MatcherSpec::UriTemplate(t) => t.strip_suffix("{id}").is_some_and(segment),
        }
    }

    fn topics(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn suite_0x_token_without_exp_is_accepted() {
        let grant = check(SUITE_0X).unwrap();
        assert!(!grant.v1);
        assert_eq!(grant.exp, None);
        assert!(grant.may_publish(&topics(&["anything", "https://x/y"]), toy));
        assert_eq!(grant.subscribe_selectors(), vec![MatcherSpec::Any]);
    }

    #[test]
    fn legacy_exp_is_enforced_when_present() {
        let past = legacy(&format!(r#"{{"exp":{}}}"#, NOW - CLOCK_SKEW_SECONDS - 1));
        assert_eq!(check(&past), Err(MercureAuthError::InvalidToken));
        let within_skew = legacy(&format!(r#"{{"exp":{}}}"#, NOW - CLOCK_SKEW_SECONDS));
        assert!(check(&within_skew).is_ok());
        let future = check(&legacy(r#"{"exp":4102444800}"#)).unwrap();
        assert_eq!(future.exp, Some(FAR));
        let fraction = check(&legacy(r#"{"exp":4102444800.999999}"#)).unwrap();
        assert_eq!(fraction.exp, Some(FAR), "NumericDate may have a fraction");
        let early = legacy(&format!(r#"{{"nbf":{}}}"#, NOW + CLOCK_SKEW_SECONDS + 1));
        assert_eq!(check(&early), Err(MercureAuthError::InvalidToken));
    }

    #[test]
    fn wrong_key_tampering_and_empty_key_are_refused() {
        assert_eq!(
            verify(SUITE_0X, b"another key", &keys(), NOW),
            Err(MercureAuthError::InvalidToken)
        );
        assert_eq!(
            verify(SUITE_0X, b"", &keys(), NOW),
            Err(MercureAuthError::InvalidToken)
        );
        let empty_key = forge(r#"{"alg":"HS256"}"#, "{}", b"");
        assert!(
            verify(&empty_key, b"", &keys(), NOW).is_err(),
            "anyone can sign with no key"
        );
        let (head, rest) = SUITE_0X.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode(br#"{"mercure":{"publish":["x"]}}"#);
        assert!(check(&format!("{head}.{other}.{sig}")).is_err());
        for bad in ["", "a.b", "a.b.c.d", &format!("{SUITE_0X}x")] {
            assert_eq!(check(bad), Err(MercureAuthError::InvalidToken), "{bad}");
        }
        let huge = legacy(&format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_TOKEN_BYTES)));
        assert_eq!(check(&huge), Err(MercureAuthError::InvalidToken));
    }

    #[test]
    fn only_hs256_is_accepted() {
        let claims = r#"{"mercure":{"publish":["*"]}}"#;
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"None","typ":"at+jwt"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","typ":"at+jwt","typ":"JWT"}"#,
            r#"{"alg":"HS256","typ":1}"#,
            r#"["HS256"]"#,
        ] {
            let token = forge(header, claims, KEY);
            assert_eq!(
                check(&token),
                Err(MercureAuthError::InvalidToken),
                "{header}"
            );
        }
        let unsigned = format!("{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        let unsigned = format!("{unsigned}{}.", URL_SAFE_NO_PAD.encode(claims));
        assert_eq!(check(&unsigned), Err(MercureAuthError::InvalidToken));
    }

    #[test]
    fn suite_1x_token_is_accepted() {
        let grant = check(SUITE_1X).unwrap();
        assert!(grant.v1);
        assert_eq!(grant.exp, Some(FAR));
        assert!(grant.may_publish(&topics(&["a", "https://example.net/foo/1"]), toy));
        assert_eq!(grant.subscribe_selectors(), vec![MatcherSpec::Any]);
    }

    #[test]
    fn one_detail_with_both_actions_and_no_sub_client_id_iat_or_jti_is_accepted() {
        let token = access(&format!(
            "[{}]",
            detail(r#"["publish","subscribe"]"#, r#"[{"match":"*"}]"#)
        ));
        let grant = check(&token).unwrap();
        assert!(grant.v1 && grant.may_publish(&topics(&["t"]), toy));
        assert!(grant.may_receive(&topics(&["t"]), toy));
    }

    #[test]
    fn access_tokens_need_exp_our_audience_and_our_issuer() {
        let details = format!("[{}]", detail(r#"["publish"]"#, r#"[{"match":"*"}]"#));
        let with = |claims: String| forge(V1_HEADER, &claims, KEY);
        let ok = |aud: &str, iss: &str, times: &str| {
            let claims =
                format!(r#"{{"aud":{aud},"iss":{iss},{times}"authorization_details":{details}}}"#);
            check(&with(claims))
        };
        let aud = format!("\"{AUD}\"");
        let iss = format!("\"{ISS}\"");
        let exp = format!(r#""exp":{FAR},"#);
        assert!(ok(&aud, &iss, &exp).is_ok());
        let micro = format!(r#""exp":{FAR}.25,"nbf":{}.5,"#, NOW - 60);
        assert_eq!(ok(&aud, &iss, &micro).unwrap().exp, Some(FAR));
        assert!(
            ok(&format!(r#"["https://other/",{aud}]"#), &iss, &exp).is_ok(),
            "aud array"
        );
        let bad = [
            ok(&aud, &iss, ""),
            ok(&aud, &iss, &format!(r#""exp":{},"#, NOW - 100)),
            ok(&aud, &iss, &format!(r#""exp":{FAR},"nbf":{},"#, NOW + 100)),
            ok(r#""https://localhost/""#, &iss, &exp),
            ok(r#"["https://other/"]"#, &iss, &exp),
            ok("null", &iss, &exp),
            ok(&aud, r#""https://localhost/""#, &exp),
            ok(&aud, "null", &exp),
            ok(&aud, r#"["https://localhost"]"#, &exp),
        ];
        for (i, result) in bad.into_iter().enumerate() {
            assert_eq!(result, Err(MercureAuthError::InvalidToken), "case {i}");
        }
        let mut unconfigured = keys();
        unconfigured.issuer.clear();
        let token = with(format!(
            r#"{{"aud":{aud},"iss":"",{exp}"authorization_details":[]}}"#
        ));
        assert!(verify(&token, KEY, &unconfigured, NOW).is_err());
    }

    #[test]
    fn typ_names_the_profile() {
        let claims = format!(
            r#"{{"aud":"{AUD}","iss":"{ISS}","exp":{FAR},"authorization_details":[{}]}}"#,
            detail(r#"["publish"]"#, r#"[{"match":"*"}]"#)
        );
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+JWT",
        ] {
            let header = format!(r#"{{"alg":"HS256","typ":"{typ}"}}"#);
            assert!(check(&forge(&header, &claims, KEY)).unwrap().v1, "{typ}");
        }
        // Without at+jwt, the same claims are a 0.x token: authorization_details means nothing.
        for header in [r#"{"alg":"HS256"}"#, r#"{"alg":"HS256","typ":"JWT"}"#] {
            let grant = check(&forge(header, &claims, KEY)).unwrap();
            assert!(!grant.v1);
            assert!(!grant.may_publish(&topics(&["t"]), toy));
            assert!(grant.subscribe_selectors().is_empty());
        }
    }

    #[test]
    fn unknown_match_type_rejects_the_token() {
        for topics in [
            r#"[{"match":"a","match_type":"regex"}]"#,
            r#"[{"match":"*","match_type":"regex"}]"#,
            r#"[{"match":"a","match_type":"Exact"}]"#,
            r#"[{"match":"a"},{"match":"b","match_type":"uritemplate"}]"#,
        ] {
            let token = access(&format!("[{}]", detail(r#"["subscribe"]"#, topics)));
            assert_eq!(
                check(&token),
                Err(MercureAuthError::InvalidToken),
                "{topics}"
            );
        }
    }

    #[test]
    fn matchers_are_exact_by_default_and_url_patterns_must_compile() {
        let topics_json = r#"[{"match":"a"},{"match":"b","match_type":"exact"},
            {"match":"https://e.com/:id","match_type":"urlpattern"},
            {"match":"/.well-known/mercure/subscriptions/exact/:t/:s","match_type":"urlpattern"},
            {"match":"*","match_type":"urlpattern"},{"match":"a"}]"#;
        let token = access(&format!("[{}]", detail(r#"["subscribe"]"#, topics_json)));
        let grant = check(&token).unwrap();
        assert_eq!(grant.subscribe_selectors(), vec![MatcherSpec::Any]);
        let token = access(&format!(
            "[{}]",
            detail(
                r#"["subscribe"]"#,
                &topics_json.replace(r#"{"match":"*","match_type":"urlpattern"},"#, "")
            )
        ));
        assert_eq!(
            check(&token).unwrap().subscribe_selectors(),
            vec![
                MatcherSpec::Exact("a".into()),
                MatcherSpec::Exact("b".into()),
                MatcherSpec::UrlPattern("https://e.com/:id".into()),
                MatcherSpec::UrlPattern("/.well-known/mercure/subscriptions/exact/:t/:s".into()),
            ]
        );
        for bad in [r#""https://e.com/(a""#, r#""https://e.com/:""#] {
            let t = format!(r#"[{{"match":{bad},"match_type":"urlpattern"}}]"#);
            let token = access(&format!("[{}]", detail(r#"["subscribe"]"#, &t)));
            assert_eq!(check(&token), Err(MercureAuthError::InvalidToken), "{bad}");
        }
    }

    #[test]
    fn unknown_actions_are_ignored() {
        let token = access(&format!(
            "[{}]",
            detail(r#"["read","publish","future2"]"#, r#"[{"match":"x"}]"#)
        ));
        let grant = check(&token).unwrap();
        assert!(grant.may_publish(&topics(&["x"]), toy));
        assert!(grant.subscribe_selectors().is_empty());
        let only_unknown = access(&format!(
            "[{}]",
            detail(r#"["read"]"#, r#"[{"match":"*"}]"#)
        ));
        let grant = check(&only_unknown).unwrap();
        assert!(
            !grant.may_publish(&topics(&["x"]), toy) && !grant.may_receive(&topics(&["x"]), toy)
        );
    }

    #[test]
    fn a_malformed_mercure_detail_rejects_the_whole_token() {
        let good = detail(r#"["publish"]"#, r#"[{"match":"*"}]"#);
        let bad_details = [
            detail(r#"["publish",1]"#, r#"[{"match":"x"}]"#),
            detail("[]", r#"[{"match":"x"}]"#),
            detail(r#"["publish"]"#, "[]"),
            detail(r#""publish""#, r#"[{"match":"x"}]"#),
            detail(r#"["publish"]"#, r#"["x"]"#),
            detail(r#"["publish"]"#, r#"[["x"]]"#),
            detail(r#"["publish"]"#, r#"[{"match_type":"exact"}]"#),
            detail(r#"["publish"]"#, r#"[{"match":""}]"#),
            detail(r#"["publish"]"#, r#"[{"match":"a\u0000"}]"#),
            detail(r#"["publish"]"#, r#"[null]"#),
            format!(r#"{{"type":"{DETAIL_TYPE}","topics":[{{"match":"x"}}]}}"#),
            format!(
                r#"{{"type":"{DETAIL_TYPE}","actions":["subscribe"],"topics":[{{"match":"x"}}],"payload":[1]}}"#
            ),
            format!(
                r#"{{"type":"{DETAIL_TYPE}","actions":["subscribe"],"actions":["publish"],"topics":[{{"match":"x"}}]}}"#
            ),
            format!(r#"["{DETAIL_TYPE}",["publish"],[{{"match":"x"}}]]"#),
            r#"{"type":7}"#.to_string(),
            r#"["payment_initiation"]"#.to_string(),
            detail(r#"["publish"]"#, r#"[["x",null]]"#),
            "null".to_string(),
        ];
        for bad in bad_details {
            let token = access(&format!("[{good},{bad}]"));
            assert_eq!(check(&token), Err(MercureAuthError::InvalidToken), "{bad}");
        }
        let not_an_array = access(&good);
        assert_eq!(check(&not_an_array), Err(MercureAuthError::InvalidToken));
    }

    #[test]
    fn other_detail_types_are_ignored_whatever_their_shape() {
        let others = r#"{"type":"payment_initiation","topics":"not mercure's","actions":[1]},{"locations":[]}"#;
        let token = access(&format!(
            "[{others},{}]",
            detail(r#"["publish"]"#, r#"[{"match":"x"}]"#)
        ));
        assert!(check(&token).unwrap().may_publish(&topics(&["x"]), toy));
        let grant = check(&access(&format!("[{others}]"))).unwrap();
        assert!(!grant.may_publish(&topics(&["x"]), toy));
    }

    #[test]
    fn selectors_are_capped_in_number_and_length() {
        let entries = |n: usize| {
            let list: Vec<String> = (0..n).map(|i| format!(r#"{{"match":"{i}"}}"#)).collect();
            format!("[{}]", list.join(","))
        };
        let split = format!(
            "[{},{}]",
            detail(r#"["publish"]"#, &entries(50)),
            detail(r#"["subscribe"]"#, &entries(MAX_SELECTORS - 50))
        );
        assert!(check(&access(&split)).is_ok());
        let over = format!(
            "[{},{}]",
            detail(r#"["publish"]"#, &entries(50)),
            detail(r#"["subscribe"]"#, &entries(MAX_SELECTORS - 49))
        );
        assert_eq!(check(&access(&over)), Err(MercureAuthError::InvalidToken));
        let long = |n: usize| {
            let t = format!(r#"[{{"match":"{}"}}]"#, "x".repeat(n));
            access(&format!("[{}]", detail(r#"["publish"]"#, &t)))
        };
        assert!(check(&long(MAX_SELECTOR_BYTES)).is_ok());
        assert_eq!(
            check(&long(MAX_SELECTOR_BYTES + 1)),
            Err(MercureAuthError::InvalidToken)
        );
        let many: Vec<String> = (0..=MAX_SELECTORS).map(|i| format!("\"{i}\"")).collect();
        let legacy_over = legacy(&format!(
            r#"{{"mercure":{{"subscribe":[{}]}}}}"#,
            many.join(",")
        ));
        assert_eq!(check(&legacy_over), Err(MercureAuthError::InvalidToken));
    }

    #[test]
    fn legacy_claims_selectors_and_payload() {
        let token = legacy(
            r#"{"mercure":{"publish":["a"]},
               "https://mercure.rocks/":{"publish":["https://e.com/{id}"],"subscribe":["b","*"],
               "payload":{ "user" : "x y", "n": [1, 2.50] }}}"#,
        );
        let grant = check(&token).unwrap();
        assert!(
            !grant.may_publish(&topics(&["a"]), toy),
            "the namespaced claim wins"
        );
        assert!(
            grant.may_publish(&topics(&["https://e.com/{id}"]), toy),
            "exact first"
        );
        assert!(
            grant.may_publish(&topics(&["https://e.com/7"]), toy),
            "then the template"
        );
        assert!(!grant.may_publish(&topics(&["https://e.com/7/8"]), toy));
        assert_eq!(grant.subscribe_selectors(), vec![MatcherSpec::Any]);
        assert_eq!(
            grant.payload_for("anything", toy).as_deref(),
            Some(r#"{"user":"x y","n":[1,2.50]}"#)
        );
        let no_publish = check(&legacy(r#"{"mercure":{"subscribe":["b"]}}"#)).unwrap();
        assert!(!no_publish.may_publish(&topics(&["b"]), toy));
        assert_eq!(
            no_publish.subscribe_selectors(),
            vec![MatcherSpec::Exact("b".into())]
        );
        assert_eq!(no_publish.payload_for("b", toy), None);
        let scalar_payload = check(&legacy(r#"{"mercure":{"payload":"plain"}}"#)).unwrap();
        assert_eq!(
            scalar_payload.payload_for("b", toy).as_deref(),
            Some(r#""plain""#)
        );
        for bad in [
            r#"{"mercure":[["*"],["*"],null]}"#,
            r#"{"mercure":{"publish":"*"}}"#,
            r#"{"mercure":{"publish":[1]}}"#,
            r#"{"mercure":{"subscribe":["a\nb"]}}"#,
            r#"{"mercure":{"publish":["*"]},"mercure":{"publish":["*"]}}"#,
            r#"{"exp":"soon"}"#,
            r#"[{"mercure":{}}]"#,
        ] {
            assert_eq!(
                check(&legacy(bad)),
                Err(MercureAuthError::InvalidToken),
                "{bad}"
            );
        }
    }

    #[test]
    fn may_publish_needs_every_topic() {
        let token = legacy(r#"{"mercure":{"publish":["a","https://e.com/{id}"]}}"#);
        let grant = check(&token).unwrap();
        assert!(grant.may_publish(&topics(&["a"]), toy));
        assert!(grant.may_publish(&topics(&["a", "https://e.com/1"]), toy));
        assert!(!grant.may_publish(&topics(&["a", "b"]), toy));
        assert!(!grant.may_publish(&[], toy), "no topic, nothing to allow");
        let nothing = check(&legacy(r#"{"mercure":{"publish":[]}}"#)).unwrap();
        assert!(!nothing.may_publish(&topics(&["a"]), |_, _| true));
    }

    #[test]
    fn may_receive_needs_one_topic() {
        let token = access(&format!(
            "[{}]",
            detail(r#"["subscribe"]"#, r#"[{"match":"u/42"}]"#)
        ));
        let grant = check(&token).unwrap();
        assert!(grant.may_receive(&topics(&["books/1", "u/42"]), toy));
        assert!(!grant.may_receive(&topics(&["books/1"]), toy));
        assert!(!grant.may_publish(&topics(&["u/42"]), toy));
    }

    #[test]
    fn payload_comes_from_the_first_matching_subscribe_detail() {
        let details = format!(
            r#"[{},{{"type":"{DETAIL_TYPE}","actions":["subscribe"],"topics":[{{"match":"https://e.com/foo"}}],"payload":{{"custom1":1}}}},
              {{"type":"{DETAIL_TYPE}","actions":["subscribe"],"topics":[{{"match":"https://e.com/bar/:id","match_type":"urlpattern"}}],"payload":{{"custom2":2}}}},
              {},
              {{"type":"{DETAIL_TYPE}","actions":["subscribe"],"topics":[{{"match":"*"}}],"payload":{{"custom3":3}}}}]"#,
            detail(r#"["publish"]"#, r#"[{"match":"*"}]"#),
            detail(r#"["subscribe"]"#, r#"[{"match":"https://e.com/plain"}]"#),
        );
        let grant = check(&access(&details)).unwrap();
        let payload = |m: &str| grant.payload_for(m, toy);
        assert_eq!(
            payload("https://e.com/foo").as_deref(),
            Some(r#"{"custom1":1}"#)
        );
        assert_eq!(
            payload("https://e.com/bar/:id").as_deref(),
            Some(r#"{"custom2":2}"#)
        );
        assert_eq!(
            payload("https://e.com/bar/9").as_deref(),
            Some(r#"{"custom2":2}"#)
        );
        assert_eq!(
            payload("https://e.com/plain"),
            None,
            "first match has no payload"
        );
        assert_eq!(
            payload("other").as_deref(),
            Some(r#"{"custom3":3}"#),
            "* is the default"
        );
        let no_default = access(&format!(
            "[{}]",
            detail(r#"["subscribe"]"#, r#"[{"match":"a"}]"#)
        ));
        assert_eq!(check(&no_default).unwrap().payload_for("b", toy), None);
    }

    #[test]
    fn the_header_wins_then_0x_query_then_cookie() {
        let cookies = "a=1; mercureAuthorization=\"from-cookie\"; __Secure-mercure_access_token=secure; mercure_access_token=plain";
        let found = |auth, cookie, query, v1| find_token(auth, cookie, query, v1).unwrap();
        let tok = |s: &str, from| Some((s.to_string(), from));
        assert_eq!(
            found(Some("bearer  hdr "), Some(cookies), Some("q"), false),
            tok("hdr", TokenFrom::Header)
        );
        assert_eq!(
            found(Some("BEARER hdr"), Some("garbage;;="), Some("q"), true),
            tok("hdr", TokenFrom::Header)
        );
        assert_eq!(
            found(None, Some(cookies), Some("q"), false),
            tok("q", TokenFrom::Query)
        );
        assert_eq!(
            found(None, Some(cookies), Some(""), false),
            tok("from-cookie", TokenFrom::Cookie)
        );
        assert_eq!(
            found(None, Some(cookies), Some("q"), true),
            tok("secure", TokenFrom::Cookie)
        );
        assert_eq!(
            found(None, Some("mercure_access_token=plain; x=y"), None, true),
            tok("plain", TokenFrom::Cookie)
        );
        assert_eq!(
            found(None, Some("mercureAuthorization=t"), Some("q"), true),
            None
        );
        assert_eq!(
            found(
                None,
                Some("xmercureAuthorization=t; mercureAuthorization="),
                None,
                false
            ),
            None
        );
        assert_eq!(found(None, None, None, false), None);
    }

    #[test]
    fn a_malformed_authorization_header_is_invalid_request() {
        for header in [
            "",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Bearer a b",
            "Bearera",
        ] {
            for v1 in [false, true] {
                let result =
                    find_token(Some(header), Some("mercureAuthorization=t"), Some("q"), v1);
                assert_eq!(result, Err(MercureAuthError::InvalidRequest), "{header:?}");
            }
        }
    }

    #[test]
    fn errors_carry_rfc_6750_challenges() {
        use MercureAuthError::*;
        let statuses: Vec<u16> = [Missing, InvalidRequest, InvalidToken, InsufficientScope]
            .iter()
            .map(MercureAuthError::status)
            .collect();
        assert_eq!(statuses, [401, 400, 401, 403]);
        const META: &str = "https://h/.well-known/oauth-protected-resource/.well-known/mercure";
        let meta = Some(META);
        let challenge = |e: MercureAuthError, v1, m| e.www_authenticate(v1, m).unwrap();
        assert_eq!(challenge(Missing, false, None), "Bearer");
        assert_eq!(
            challenge(Missing, false, meta),
            "Bearer",
            "0.x has no metadata"
        );
        assert_eq!(
            challenge(Missing, true, meta),
            format!("Bearer resource_metadata=\"{}\"", META)
        );
        assert_eq!(
            challenge(InvalidToken, false, None),
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(
            challenge(InvalidToken, true, meta),
            format!(
                r#"Bearer error="invalid_token", resource_metadata="{}""#,
                META
            )
        );
        assert_eq!(
            challenge(InsufficientScope, true, None),
            r#"Bearer error="insufficient_scope""#
        );
        assert_eq!(
            challenge(InvalidRequest, false, None),
            r#"Bearer error="invalid_request""#
        );
        assert_eq!(
            challenge(Missing, true, Some("a\"b\\c\r\nd")),
            r#"Bearer resource_metadata="a\"b\\cd""#
        );
    }

    #[test]
    fn keys_debug_hides_the_secrets() {
        let shown = format!("{:?}", keys());
        assert!(!shown.contains("ChangeThis") && shown.contains(AUD));
    }
}
