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
mod tests;
