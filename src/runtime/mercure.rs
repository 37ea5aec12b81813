//! The Mercure face (`/.well-known/mercure`, docs/mercure.md): one channel
//! (`MERCURE_CHANNEL`) spoken to in the Mercure protocol, both the 0.x and the 1.0 draft.
//! Subscribing is the SSE bridge with a Mercure filter (the request's matchers, the token's
//! selectors for private updates, Mercure framing) and, to resume, the update id the client
//! gives; the channel's object finds where that id is. Publishing is a form body stored as one
//! event whose topics are the update's, with the update's own fields beside it. Tokens are
//! Mercure's, checked with Mercure's keys (`auth::mercure`).

use super::access::Access;
use super::client::Hub;
use super::http::{internal, problem, read_body};
use super::routes::Incoming;
use super::sse;
use crate::auth::mercure::{
    find_token, verify, MercureAuthError, MercureGrant, MercureKeys, TokenFrom, PUBLISHER_KEY_VAR,
    SUBSCRIBER_KEY_VAR,
};
use crate::error::Error;
use crate::protocol::call::{BatchItem, RESUMED_HEADER};
use crate::protocol::cors::allow_origin;
use crate::protocol::filter::{EventTopics, Filter, FilterSpec};
use crate::protocol::mercure::{
    generate_id, parse_publish, parse_subscribe, Update, Version, LAST_EVENT_ID_HEADER,
};
use crate::protocol::query::percent_decode;
use crate::protocol::topics::{MatcherSpec, Topics};
use crate::protocol::update::UpdateMeta;
use url::Url;
use worker::{Date, Env, Response};

type Answer = Result<Response, Error>;

/// Mercure's own names for the form body's media type.
const FORM: &str = "application/x-www-form-urlencoded";

/// `GET /.well-known/mercure`: an event stream of the updates the request's matchers select.
/// Its headers go out at once, and by then the channel's object holds the subscription, so an
/// update published right after `open` arrives.
pub async fn subscribe(at: &Incoming<'_>) -> Answer {
    let hub_url = hub_url(at)?;
    let header = at.req.headers().get(LAST_EVENT_ID_HEADER).ok().flatten();
    let wanted = parse_subscribe(&at.query, header.as_deref(), &hub_url)?;
    let v1 = wanted.version == Version::V1;
    let grant = match token(at, v1, SUBSCRIBER_KEY_VAR) {
        Ok(Some((grant, _))) => Some(grant),
        Ok(None) | Err(MercureAuthError::Missing) if at.config.mercure.anonymous => None,
        Ok(None) => return Ok(refusal(MercureAuthError::Missing, v1)),
        Err(e) => return Ok(refusal(e, v1)),
    };
    let filter = FilterSpec {
        matchers: wanted.matchers,
        base: Some(hub_url.to_string()),
        private: grant.as_ref().map(MercureGrant::subscribe_selectors),
        mercure: true,
        ..FilterSpec::default()
    };
    // Validated here, so a bad matcher is a 400 before the object is reached.
    Filter::parse(&filter)?;
    // Both versions: the stream ends at the token's `exp` itself (the skew only lets a token in).
    let expires = grant.as_ref().and_then(|g| g.exp);
    let access = Access {
        publish: false,
        expires,
        publisher: None,
    };
    let resume = wanted.last_event_id.clone().filter(|id| !id.is_empty());
    let upstream = Hub::get(at.env, &at.config.mercure.channel)?
        .subscribe_mercure(access, filter, resume)
        .await?;
    if upstream.status_code() != 101 {
        return Ok(upstream);
    }
    let resumed = upstream
        .headers()
        .get(RESUMED_HEADER)
        .ok()
        .flatten()
        .and_then(|h| percent_decode(&h));
    let limits = sse::BridgeLimits {
        heartbeat_s: at.config.heartbeat_seconds,
        lifetime_s: at.config.sse_max_seconds,
        max_backlog: at.config.slow_consumer_bytes,
    };
    let mut stream = sse::bridge(upstream, limits, expires)?;
    let headers = stream.headers_mut();
    headers
        .set(
            "cache-control",
            "private, no-cache, no-store, must-revalidate, max-age=0",
        )
        .map_err(internal("answering"))?;
    if wanted.last_event_id.is_some() {
        // Required whenever the request named a last event id, even an empty one.
        let value = resumed.unwrap_or_else(|| crate::protocol::mercure::EARLIEST.to_string());
        headers
            .set(
                wanted.version.last_event_id_response_header(),
                &as_uri(&value),
            )
            .map_err(internal("answering"))?;
    }
    Ok(stream)
}

/// `POST /.well-known/mercure`: stores an update, answers 200 `text/plain` with its id.
pub async fn publish(at: &mut Incoming<'_>) -> Answer {
    let content_type = at.req.headers().get("content-type").ok().flatten();
    let is_form = content_type
        .as_deref()
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(FORM));
    // A publish names no version: its token says which (0.x cookie first, then 1.0's).
    let found = match token(at, false, PUBLISHER_KEY_VAR) {
        Ok(None) => token(at, true, PUBLISHER_KEY_VAR),
        other => other,
    };
    let v1 = false;
    let (grant, from) = match found {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(refusal(MercureAuthError::Missing, v1)),
        Err(e) => return Ok(refusal(e, v1)),
    };
    let v1 = grant.v1;
    // A browser sends cookies on requests another site makes it send: a publish authorised by
    // a cookie must come from this hub's own origin or one CORS_ORIGINS admits (CSRF).
    if from == TokenFrom::Cookie && !same_site(at)? {
        let detail = "a publish authorised by a cookie must come from an allowed Origin";
        return Ok(refusal_saying(MercureAuthError::InvalidRequest, v1, detail));
    }
    if !is_form {
        return Err(Error::UnsupportedMediaType(FORM));
    }
    let body = read_body(&at.req, at.config.max_body_bytes).await?;
    let hub_url = hub_url(at)?;
    let update = parse_publish(&body, &hub_url)?;
    let base = Some(hub_url.to_string());
    if !grant.may_publish(&update.topics, |m, topic| {
        selects(m, topic, base.as_deref())
    }) {
        return Ok(refusal(MercureAuthError::InsufficientScope, v1));
    }
    let item = stored(update)?;
    at.config.publish_limits().check_data(&item.data)?;
    let id = item
        .update
        .as_ref()
        .map(|u| u.id.clone())
        .unwrap_or_default();
    let answer = Hub::get(at.env, &at.config.mercure.channel)?
        .publish_update(item)
        .await?;
    if answer.status_code() != 201 {
        return Ok(answer);
    }
    let headers = worker::Headers::new();
    headers
        .set("content-type", "text/plain; charset=utf-8")
        .map_err(internal("answering"))?;
    Ok(Response::ok(id)
        .map_err(internal("answering"))?
        .with_headers(headers))
}

/// The update as the channel stores it: its data as a JSON string, its topics, and its own
/// fields (an id made here when the publisher gave none).
fn stored(update: Update) -> Result<BatchItem, Error> {
    let Update {
        topics,
        data,
        id,
        private,
        event_type,
        retry,
    } = update;
    let id = match id {
        Some(id) => id,
        None => {
            let mut random = [0u8; 16];
            getrandom::fill(&mut random)
                .map_err(|e| Error::Internal(format!("making an update id: {e}")))?;
            generate_id(random)
        }
    };
    Ok(BatchItem {
        event_type: crate::protocol::names::DEFAULT_EVENT_TYPE.to_string(),
        data: serde_json::to_string(&data)?,
        topics: Some(Topics::parse(topics)?),
        update: Some(UpdateMeta {
            id,
            event_type,
            retry,
            private,
        }),
    })
}

/// Whether matcher `m` selects `topic` (relative patterns and topics against `base`).
fn selects(m: &MatcherSpec, topic: &str, base: Option<&str>) -> bool {
    let spec = FilterSpec {
        matchers: vec![m.clone()],
        base: base.map(str::to_string),
        ..FilterSpec::default()
    };
    let Ok(Some(filter)) = Filter::parse(&spec) else {
        return false;
    };
    let Ok(topics) = Topics::parse(vec![topic.to_string()]) else {
        return false;
    };
    filter.matches(&EventTopics::new(Some(&topics)))
}

/// True when the request's `Origin` (else `Referer`) is the hub's own origin or one
/// `CORS_ORIGINS` admits; a request with neither is refused, as the spec advises.
fn same_site(at: &Incoming<'_>) -> Result<bool, Error> {
    let headers = at.req.headers();
    let origin = headers
        .get("origin")
        .ok()
        .flatten()
        .or_else(|| headers.get("referer").ok().flatten())
        .and_then(|o| Url::parse(&o).ok())
        .map(|u| u.origin().ascii_serialization());
    let Some(origin) = origin else {
        return Ok(false);
    };
    let own = hub_url(at)?.origin().ascii_serialization();
    Ok(origin == own || allow_origin(&at.config.cors_origins, &origin).is_some())
}

/// The request's Mercure token, verified with the key `key_var` names, and where it came from:
/// `Ok(None)` without a token.
fn token(
    at: &Incoming<'_>,
    v1: bool,
    key_var: &str,
) -> Result<Option<(MercureGrant, TokenFrom)>, MercureAuthError> {
    let headers = at.req.headers();
    let authorization = headers.get("authorization").ok().flatten();
    let cookie = headers.get("cookie").ok().flatten();
    let query =
        crate::protocol::query::query_param(&at.query, "authorization").and_then(Result::ok);
    let Some((token, from)) = find_token(
        authorization.as_deref(),
        cookie.as_deref(),
        query.as_deref(),
        v1,
    )?
    else {
        return Ok(None);
    };
    let keys = keys(at.env, &at.config.mercure);
    let key = match key_var {
        PUBLISHER_KEY_VAR => keys.publisher.clone(),
        _ => keys.subscriber.clone(),
    };
    verify(&token, &key, &keys, now_s()).map(|grant| Some((grant, from)))
}

/// Mercure's keys and the 1.0 audience and issuer; a key not configured is empty, which
/// `verify` refuses.
fn keys(env: &Env, config: &crate::config::MercureConfig) -> MercureKeys {
    let secret = |name: &str| -> Vec<u8> {
        env.secret(name)
            .map(|s| s.to_string())
            .or_else(|_| env.var(name).map(|v| v.to_string()))
            .unwrap_or_default()
            .into_bytes()
    };
    MercureKeys {
        publisher: secret(PUBLISHER_KEY_VAR),
        subscriber: secret(SUBSCRIBER_KEY_VAR),
        audience: config.audience.clone(),
        issuer: config.issuer.clone(),
    }
}

/// The hub's URL: the request's origin and the hub path (relative patterns and topics resolve
/// against it, and reserved topics are told by it).
fn hub_url(at: &Incoming<'_>) -> Result<Url, Error> {
    let mut url = at
        .req
        .url()
        .map_err(|_| Error::bad_request("unreadable URL"))?;
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// A refusal with its RFC 6750 challenge.
fn refusal(e: MercureAuthError, v1: bool) -> Response {
    refusal_saying(e, v1, "the Authorization header is not a bearer token")
}

/// A refusal with its RFC 6750 challenge; `detail` says what is wrong with an invalid request.
fn refusal_saying(e: MercureAuthError, v1: bool, detail: &str) -> Response {
    let err = match e {
        MercureAuthError::InvalidRequest => Error::bad_request(detail),
        MercureAuthError::InsufficientScope => {
            Error::Forbidden("this token may not do that on these topics".into())
        }
        MercureAuthError::Missing => Error::Unauthorized(crate::error::TokenFault::Missing),
        MercureAuthError::InvalidToken => Error::Unauthorized(crate::error::TokenFault::Signature),
    };
    let response = problem(&err);
    if let Some(challenge) = e.www_authenticate(v1, None) {
        let _ = response.headers().set("www-authenticate", &challenge);
    }
    response
}

/// An id as a header value: ids are IRIs, and a header holds bytes, so non-ASCII characters are
/// percent-encoded as RFC 3987 maps an IRI to a URI (ids are stored without control characters).
fn as_uri(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

fn now_s() -> i64 {
    (Date::now().as_millis() / 1000) as i64
}
