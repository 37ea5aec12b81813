//! One function per route of the Worker: each checks who may call it and what it was sent, then
//! answers. The route table is `protocol::route`; `mod.rs` dispatches to these.

use super::access::{self, Access, Credentials, Permits};
use super::client::Hub;
use super::http::{internal, is_json, json, read_body, Inbound};
use super::{poll, sse, stream, tap};
use crate::auth::delegate::{delegate, mint, TokenRequest};
use crate::auth::Action;
use crate::channel::fanout::Transport;
use crate::channel::merge::Face;
use crate::config::Config;
use crate::error::Error;
use crate::protocol::envelope::format_time;
use crate::protocol::filter::{Filter, FilterSpec};
use crate::protocol::presence::{parse_flag, Entrant};
use crate::protocol::publish::{parse_idempotency_key, parse_publish};
use crate::protocol::query::{parse_cursor, query_param};
use crate::protocol::stream::{ChannelSet, StreamSince};
use crate::protocol::ChannelName;
use std::rc::Rc;
use worker::{Context, Env, Response};

/// The largest `POST /tokens` body.
const MINT_BODY_BYTES: usize = 16 * 1024;

/// A routed request: the request itself, its query string, its credentials (not yet checked),
/// and the Worker's environment and settings.
pub struct Incoming<'a> {
    pub req: Inbound,
    pub env: &'a Env,
    pub config: &'a Rc<Config>,
    pub query: String,
    pub credentials: Credentials,
    pub ctx: &'a Context,
}

type Answer = Result<Response, Error>;

pub fn health() -> Answer {
    json(200, "{\"status\":\"ok\"}".into()).map_err(internal("answering"))
}

/// `POST /channels/{c}/events`.
pub async fn publish(at: &mut Incoming<'_>, channel: &ChannelName) -> Answer {
    let access = at
        .credentials
        .check(at.env, at.config, Action::Publish, channel)?;
    if !is_json(&at.req) {
        return Err(Error::UnsupportedMediaType("application/json"));
    }
    let body = read_body(&at.req, at.config.max_body_bytes).await?;
    let events = parse_publish(&body, at.config.publish_limits())?;
    let key = match at.req.headers().get("idempotency-key").ok().flatten() {
        Some(k) => Some(parse_idempotency_key(k.trim())?),
        None => None,
    };
    let answer = Hub::get(at.env, channel)?
        .publish(&events, key.as_deref(), access.publisher)
        .await;
    poll::published(channel);
    answer
}

/// `DELETE /channels/{c}/events`.
pub async fn purge(at: &Incoming<'_>, channel: &ChannelName) -> Answer {
    at.credentials
        .check(at.env, at.config, Action::Publish, channel)?;
    let answer = Hub::get(at.env, channel)?.purge().await;
    poll::forget_window(channel);
    answer
}

/// `GET /channels/{c}`.
pub async fn info(at: &Incoming<'_>, channel: &ChannelName) -> Answer {
    at.credentials
        .check(at.env, at.config, Action::Subscribe, channel)?;
    Hub::get(at.env, channel)?.info().await
}

/// `GET /channels/{c}/presence`.
pub async fn presence(at: &Incoming<'_>, channel: &ChannelName) -> Answer {
    at.credentials
        .check(at.env, at.config, Action::Subscribe, channel)?;
    Hub::get(at.env, channel)?.presence().await
}

/// `GET /ws/{c}`: the channel's object accepts the socket; the Worker only checks the door.
pub async fn ws(at: &Incoming<'_>, channel: &ChannelName) -> Answer {
    let permits = at.credentials.permits(at.env, at.config)?;
    let access = permits.check(at.config, Action::Subscribe, channel)?;
    let member = member(&at.query, &permits)?;
    let filter = topic_filter(&at.query)?;
    let cursor = since(&at.query)?;
    upgrading(at)?;
    Hub::get(at.env, channel)?
        .subscribe(Transport::Ws, cursor, access, member, filter)
        .await
}

/// `GET /sse/{c}`: the Worker bridges the object's socket into an event stream.
pub async fn sse(at: &Incoming<'_>, channel: &ChannelName) -> Answer {
    let permits = at.credentials.permits(at.env, at.config)?;
    let access = permits.check(at.config, Action::Subscribe, channel)?;
    let member = member(&at.query, &permits)?;
    let filter = topic_filter(&at.query)?;
    // EventSource resumes with Last-Event-ID; it wins over the URL's original `since`.
    let cursor = match at.req.headers().get("last-event-id").ok().flatten() {
        Some(id) if !id.trim().is_empty() => Some(parse_cursor(id.trim())?),
        _ => since(&at.query)?,
    };
    let limits = sse::BridgeLimits {
        heartbeat_s: at.config.heartbeat_seconds,
        lifetime_s: at.config.sse_max_seconds,
        max_backlog: at.config.slow_consumer_bytes,
    };
    if member.is_none() && filter.is_none() {
        return tap::subscribe(at.env, channel, cursor, access, limits).await;
    }
    let upstream = Hub::get(at.env, channel)?
        .subscribe(Transport::Sse, cursor, access, member, filter)
        .await?;
    if upstream.status_code() != 101 {
        return Ok(upstream);
    }
    sse::bridge(upstream, limits, access.expires)
}

/// `GET /sse?channel=…`: one event stream over the set (`runtime::stream`).
pub async fn sse_many(at: &Incoming<'_>) -> Answer {
    let (set, permits, accesses) = stream_set(at)?;
    // EventSource resumes with Last-Event-ID (a stream cursor); it wins over `since`.
    let since = match at.req.headers().get("last-event-id").ok().flatten() {
        Some(id) if !id.trim().is_empty() => Some(StreamSince::parse(id.trim(), &set)?),
        _ => stream_since(&at.query, &set)?,
    };
    stream::open(stream_opening(at, Face::Sse, set, since, permits, accesses)).await
}

/// `GET /ws?channel=…`: one WebSocket over the set, which the client can change.
pub async fn ws_many(at: &Incoming<'_>) -> Answer {
    let (set, permits, accesses) = stream_set(at)?;
    let since = stream_since(&at.query, &set)?;
    upgrading(at)?;
    stream::open(stream_opening(at, Face::Ws, set, since, permits, accesses)).await
}

/// A WebSocket route without `Upgrade: websocket` is 426, checked after auth and the query,
/// as the routing rules order them: so a plain GET of the same URL tells a client whose upgrade
/// failed whether the hub refused it (401, 403, 400) or something on the way did (426).
fn upgrading(at: &Incoming<'_>) -> Result<(), Error> {
    let upgrade = at.req.headers().get("upgrade").ok().flatten();
    if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        Ok(())
    } else {
        Err(Error::UpgradeRequired)
    }
}

/// A stream's channel set and what the caller may do on each (the token verified once); with
/// `?presence=1`, checked after the rights, the member it enters as.
fn stream_set(at: &Incoming<'_>) -> Result<(ChannelSet, Permits, Vec<Access>), Error> {
    let set = ChannelSet::parse(&at.query, at.config.max_stream_channels)?;
    let permits = at.credentials.permits(at.env, at.config)?;
    let accesses = permits.check_all(at.config, Action::Subscribe, &set)?;
    let member = member(&at.query, &permits)?;
    let filter = topic_filter(&at.query)?;
    let permits = permits.entering(member).filtering(filter);
    Ok((set, permits, accesses))
}

/// `?presence=1`: the member the request's token makes (400 if it makes none).
fn member(query: &str, permits: &Permits) -> Result<Option<Entrant>, Error> {
    let flag = query_param(query, "presence").transpose()?;
    match parse_flag(flag.as_deref())? {
        true => permits.entrant().map(Some),
        false => Ok(None),
    }
}

/// The subscription's `topic=` and `topic_pattern=` matchers, checked at the door (a bad
/// pattern, too many matchers: 400); `None` without any.
fn topic_filter(query: &str) -> Result<Option<FilterSpec>, Error> {
    let spec = FilterSpec::from_query(query)?;
    Ok(Filter::parse(&spec)?.map(|filter| filter.spec()))
}

fn stream_opening(
    at: &Incoming<'_>,
    face: Face,
    set: ChannelSet,
    since: Option<StreamSince>,
    permits: Permits,
    accesses: Vec<Access>,
) -> stream::Opening {
    stream::Opening {
        face,
        set,
        since,
        accesses,
        permits,
        env: at.env.clone(),
        config: at.config.clone(),
    }
}

/// `POST /tokens`: a token no wider than the caller's own.
pub async fn mint_token(at: &mut Incoming<'_>) -> Answer {
    let caller = at.credentials.grant(at.env, at.config)?;
    if !is_json(&at.req) {
        return Err(Error::UnsupportedMediaType("application/json"));
    }
    let body = read_body(&at.req, MINT_BODY_BYTES).await?;
    let request = TokenRequest::parse(&body)?;
    let claims = delegate(
        &caller,
        &request,
        access::now_s(),
        at.config.token_max_ttl_seconds,
    )?;
    let token = mint(&claims, access::secret(at.env)?.as_bytes())?;
    let expires_at = format_time(claims.exp.unwrap_or_default() * 1000).unwrap_or_default();
    let body = serde_json::json!({"token": token, "expires_at": expires_at});
    json(201, body.to_string()).map_err(internal("answering"))
}

pub(super) fn since(query: &str) -> Result<Option<u64>, Error> {
    query_param(query, "since")
        .transpose()?
        .map(|s| parse_cursor(&s))
        .transpose()
}

/// A stream's `since`: `0` or a stream cursor over `set`; `None` when absent.
pub(super) fn stream_since(query: &str, set: &ChannelSet) -> Result<Option<StreamSince>, Error> {
    query_param(query, "since")
        .transpose()?
        .map(|s| StreamSince::parse(&s, set))
        .transpose()
}
