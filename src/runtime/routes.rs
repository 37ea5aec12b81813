//! One function per route of the Worker: each checks who may call it and what it was sent, then
//! answers. The route table is `protocol::route`; `mod.rs` dispatches to these.

use super::access::{self, Access, Credentials, Permits};
use super::client::Hub;
use super::http::{internal, is_json, json, read_body};
use super::{mirror, sse, stream, tap, topic_poll};
use crate::auth::delegate::{delegate, mint, TokenRequest};
use crate::auth::Action;
use crate::channel::fanout::Transport;
use crate::channel::merge::Face;
use crate::channel::page_cache::PageCache;
use crate::channel::poll::{cut_page, PollRequest, WindowCache};
use crate::channel::poll_many::{cut_many, ManyRequest};
use crate::channel::Window;
use crate::config::Config;
use crate::error::Error;
use crate::protocol::envelope::format_time;
use crate::protocol::filter::{Filter, FilterSpec};
use crate::protocol::presence::{parse_flag, Entrant};
use crate::protocol::publish::{parse_idempotency_key, parse_publish};
use crate::protocol::query::{etag_matches, parse_cursor, parse_limit, query_param};
use crate::protocol::stream::{ChannelSet, StreamSince};
use crate::protocol::ChannelName;
use std::cell::RefCell;
use std::rc::Rc;
use worker::{Date, Env, Request, Response};

/// The largest `POST /tokens` body.
const MINT_BODY_BYTES: usize = 16 * 1024;

thread_local! {
    /// Mirror windows this isolate read recently, for 304s without D1 (`POLL_CACHE_MS`).
    static WINDOWS: RefCell<WindowCache> = RefCell::new(WindowCache::default());
    /// Poll answers made for those windows, served again without D1 (`channel::page_cache`).
    static PAGES: RefCell<PageCache> = RefCell::new(PageCache::default());
}

/// A routed request: the request itself, its query string, its credentials (not yet checked),
/// and the Worker's environment and settings.
pub struct Incoming<'a> {
    pub req: Request,
    pub env: &'a Env,
    pub config: &'a Rc<Config>,
    pub query: String,
    pub credentials: Credentials,
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
    let body = read_body(&mut at.req, at.config.max_body_bytes).await?;
    let events = parse_publish(&body, at.config.publish_limits())?;
    let key = match at.req.headers().get("idempotency-key").ok().flatten() {
        Some(k) => Some(parse_idempotency_key(k.trim())?),
        None => None,
    };
    let answer = Hub::get(at.env, channel)?
        .publish(&events, key.as_deref(), access.publisher)
        .await;
    forget_window(channel);
    answer
}

/// A publish or purge through this isolate changes the channel's mirror: its window (and so
/// the pages made for it) is read from D1 again at the next poll here, rather than served for
/// up to `POLL_CACHE_MS` more. Other isolates keep that bound.
fn forget_window(channel: &ChannelName) {
    WINDOWS.with(|w| w.borrow_mut().forget(channel.as_str()));
}

/// `DELETE /channels/{c}/events`.
pub async fn purge(at: &Incoming<'_>, channel: &ChannelName) -> Answer {
    at.credentials
        .check(at.env, at.config, Action::Publish, channel)?;
    let answer = Hub::get(at.env, channel)?.purge().await;
    forget_window(channel);
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
    let body = read_body(&mut at.req, MINT_BODY_BYTES).await?;
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

fn since(query: &str) -> Result<Option<u64>, Error> {
    query_param(query, "since")
        .transpose()?
        .map(|s| parse_cursor(&s))
        .transpose()
}

/// `GET /poll/{c}`, from the D1 mirror alone: the channel's object is never woken by a poll.
/// When this isolate read the channel's window less than `POLL_CACHE_MS` ago, a conditional poll
/// that matches it is a 304, and a poll whose answer for that window it made already gets that
/// answer again, both without D1; any other answer comes from D1 (and refreshes the window).
pub async fn poll(at: &Incoming<'_>, channel: &ChannelName) -> Answer {
    at.credentials
        .check(at.env, at.config, Action::Subscribe, channel)?;
    let request = PollRequest {
        cursor: since(&at.query)?,
        limit: limit(at)?,
        max_bytes: at.config.max_page_bytes,
    };
    let filter = Filter::parse(&FilterSpec::from_query(&at.query)?)?;
    let tag = |window: Window| {
        let etag = request.etag(window);
        filter
            .as_ref()
            .map_or(etag.clone(), |f| topic_poll::etag(&etag, f))
    };
    let now = now_ms();
    let cached = WINDOWS.with(|w| {
        w.borrow()
            .fresh(channel.as_str(), now, at.config.poll_cache_ms)
    });
    if let Some(etag) = cached.map(tag) {
        if unchanged(at, &etag) {
            return not_modified(etag);
        }
        if let Some(page) = cached_page(channel.as_str(), &etag) {
            return page_answer(etag, page, Source::Isolate);
        }
    }
    let db = mirror_db(at)?;
    if let Some(filter) = &filter {
        let lanes = [(channel, request.cursor)];
        let read = topic_poll::read(&db, &lanes, filter, request.limit, request.max_bytes).await?;
        let window = read.windows.first().copied().unwrap_or(Window::EMPTY);
        WINDOWS.with(|w| w.borrow_mut().put(channel.as_str(), window, now));
        let etag = tag(window);
        if unchanged(at, &etag) {
            return not_modified(etag);
        }
        let page = keep_page(channel.as_str(), &etag, read.page().encode(channel));
        return page_answer(etag, page, Source::Mirror);
    }
    let (window, rows) = mirror::read_page(&db, channel, &request)
        .await
        .map_err(|e| Error::Unavailable(format!("reading the mirror: {e}")))?;
    WINDOWS.with(|w| w.borrow_mut().put(channel.as_str(), window, now));
    let etag = tag(window);
    if unchanged(at, &etag) {
        return not_modified(etag);
    }
    let page = cut_page(&request, window, rows, channel).encode(channel);
    let page = keep_page(channel.as_str(), &etag, page);
    page_answer(etag, page, Source::Mirror)
}

/// Where a poll's answer came from, said in `x-edgehub-cache` (`hit`: this isolate's pages).
#[derive(Clone, Copy)]
enum Source {
    Isolate,
    Mirror,
}

/// The answer this isolate made for `channels` (a route's channel, or its set's tag) and `etag`.
fn cached_page(channels: &str, etag: &str) -> Option<Rc<str>> {
    PAGES.with(|p| p.borrow_mut().get(&PageCache::key(channels, etag)))
}

/// Keeps an answer just made from D1 for the pollers that follow.
fn keep_page(channels: &str, etag: &str, body: String) -> Rc<str> {
    let body: Rc<str> = Rc::from(body);
    PAGES.with(|p| {
        p.borrow_mut()
            .put(PageCache::key(channels, etag), body.clone())
    });
    body
}

/// `GET /poll?channel=a&channel=b…`: the same rules as `poll`, over a set of channels, in one
/// D1 query; a 304 without D1 when every channel's window is in this isolate's cache.
pub async fn poll_many(at: &Incoming<'_>) -> Answer {
    let set = ChannelSet::parse(&at.query, at.config.max_stream_channels)?;
    at.credentials
        .permits(at.env, at.config)?
        .check_all(at.config, Action::Subscribe, &set)?;
    let since = stream_since(&at.query, &set)?;
    let request = ManyRequest::new(set, since.as_ref(), limit(at)?, at.config.max_page_bytes);
    let filter = Filter::parse(&FilterSpec::from_query(&at.query)?)?;
    let tag = |windows: &[Window]| {
        let etag = request.etag(windows);
        filter
            .as_ref()
            .map_or(etag.clone(), |f| topic_poll::etag(&etag, f))
    };
    let now = now_ms();
    let cached: Option<Vec<Window>> = WINDOWS.with(|w| {
        let w = w.borrow();
        request
            .set
            .channels()
            .iter()
            .map(|c| w.fresh(c.as_str(), now, at.config.poll_cache_ms))
            .collect()
    });
    // The set's tag covers its channels, so the page key needs no names of its own.
    if let Some(etag) = cached.map(|w| tag(&w)) {
        if unchanged(at, &etag) {
            return not_modified(etag);
        }
        if let Some(page) = cached_page("", &etag) {
            return page_answer(etag, page, Source::Isolate);
        }
    }
    let remember = |windows: &[Window]| {
        WINDOWS.with(|w| {
            let mut w = w.borrow_mut();
            for (c, window) in request.set.channels().iter().zip(windows) {
                w.put(c.as_str(), *window, now);
            }
        })
    };
    let db = mirror_db(at)?;
    if let Some(filter) = &filter {
        let channels = request.set.channels();
        let lanes: Vec<(&ChannelName, Option<u64>)> = channels
            .iter()
            .zip(request.cursors().iter().copied())
            .collect();
        let limit = request.limit;
        let read = topic_poll::read(&db, &lanes, filter, limit, request.max_bytes).await?;
        remember(&read.windows);
        let etag = tag(&read.windows);
        if unchanged(at, &etag) {
            return not_modified(etag);
        }
        let page = keep_page("", &etag, read.many_page(channels).encode());
        return page_answer(etag, page, Source::Mirror);
    }
    let (windows, rows) = mirror::read_many(&db, &request)
        .await
        .map_err(|e| Error::Unavailable(format!("reading the mirror: {e}")))?;
    remember(&windows);
    let etag = tag(&windows);
    if unchanged(at, &etag) {
        return not_modified(etag);
    }
    let page = keep_page("", &etag, cut_many(&request, &windows, rows).encode());
    page_answer(etag, page, Source::Mirror)
}

fn now_ms() -> i64 {
    Date::now().as_millis() as i64
}

fn limit(at: &Incoming<'_>) -> Result<u32, Error> {
    match query_param(&at.query, "limit").transpose()? {
        Some(s) => parse_limit(&s, at.config.poll_max_limit),
        None => Ok(at.config.poll_default_limit),
    }
}

/// A stream's `since`: `0` or a stream cursor over `set`; `None` when absent.
fn stream_since(query: &str, set: &ChannelSet) -> Result<Option<StreamSince>, Error> {
    query_param(query, "since")
        .transpose()?
        .map(|s| StreamSince::parse(&s, set))
        .transpose()
}

fn mirror_db(at: &Incoming<'_>) -> Result<worker::D1Database, Error> {
    at.env
        .d1(mirror::BINDING)
        .map_err(internal("the D1 binding"))
}

/// True when the request's `If-None-Match` matches `etag`.
fn unchanged(at: &Incoming<'_>, etag: &str) -> bool {
    at.req
        .headers()
        .get("if-none-match")
        .ok()
        .flatten()
        .is_some_and(|v| etag_matches(&v, etag))
}

fn not_modified(etag: String) -> Answer {
    poll_headers(Response::builder().with_status(304).empty(), &etag)
}

fn page_answer(etag: String, body: Rc<str>, source: Source) -> Answer {
    let response = poll_headers(
        json(200, body.to_string()).map_err(internal("answering"))?,
        &etag,
    )?;
    let cache = match source {
        Source::Isolate => "hit",
        Source::Mirror => "miss",
    };
    response
        .headers()
        .set("x-edgehub-cache", cache)
        .map_err(internal("answering"))?;
    Ok(response)
}

fn poll_headers(response: Response, etag: &str) -> Answer {
    let headers = response.headers();
    headers.set("etag", etag).map_err(internal("answering"))?;
    headers
        .set("cache-control", "no-cache")
        .map_err(internal("answering"))?;
    Ok(response)
}
