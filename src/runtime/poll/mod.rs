//! `GET /poll/{c}` and `GET /poll?channel=…`: from the D1 mirror alone (the channel's object is
//! never woken by a poll), through layers that each spare D1 (docs/API.md#poll-cache):
//!
//! 1. This isolate's mirror windows, each used for `POLL_CACHE_MS` after it was read
//!    (`WINDOWS`), and the answers it made for them (`PAGES`): a matching tag is a 304, a
//!    request answered already for the window gets that answer again.
//! 2. Still pages (`channel::poll::StillPage`: pages that end below the head, without a gap),
//!    one-channel and unfiltered: the same answer for any later window until pruning or a
//!    purge reaches them, so they are kept by request alone, in this isolate (`STILL`) and in
//!    the Cache API (`CACHE_NAME`, shared by the isolates of a data centre). A window read
//!    (one row of D1) or a fresh one in `WINDOWS` says whether one is still the answer.
//! 3. One D1 read for all the polls of one request that reach it at the same moment in this
//!    isolate (`flight`).
//!
//! Every answer is one the mirror gave at some moment for that request, at most
//! `POLL_CACHE_MS` late, so it never has a hole and never mixes before and after a purge.

mod many;
mod still;

pub use many::poll_many;

use super::flight::{self, Flights, Joined};
use super::http::{internal, json};
use super::routes::{since, Incoming};
use super::{mirror, topic_poll};
use crate::auth::Action;
use crate::channel::page_cache::PageCache;
use crate::channel::poll::{cut_page, PollRequest, WindowCache};
use crate::channel::Window;
use crate::error::Error;
use crate::protocol::filter::{Filter, FilterSpec};
use crate::protocol::query::{etag_matches, parse_limit, query_param};
use crate::protocol::ChannelName;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use still::{still_answer, StillKey};
use worker::{Date, Delay, Response};

thread_local! {
    /// Mirror windows this isolate read recently, for 304s without D1 (`POLL_CACHE_MS`).
    static WINDOWS: RefCell<WindowCache> = RefCell::new(WindowCache::default());
    /// Poll answers made for those windows, served again without D1 (`channel::page_cache`).
    static PAGES: RefCell<PageCache> = RefCell::new(PageCache::default());
    /// Page reads in flight, by request: their answer (tag and body) or their failure.
    static PAGE_READS: Flights<Result<(String, Rc<str>), Error>> = Flights::default();
    /// Window reads in flight, by channel.
    static WINDOW_READS: Flights<Result<Window, Error>> = Flights::default();
}

type Answer = Result<Response, Error>;

/// Where a poll's answer came from, said in `x-edgehub-cache`.
#[derive(Clone, Copy)]
enum Source {
    /// This isolate's answers or still pages.
    Isolate,
    /// A still page from the Cache API.
    Stored,
    /// The D1 read of another poll of the same request at the same moment.
    Shared,
    /// This poll's own D1 read.
    Mirror,
}

impl Source {
    fn header(self) -> &'static str {
        match self {
            Source::Isolate => "hit",
            Source::Stored => "stored",
            Source::Shared => "shared",
            Source::Mirror => "miss",
        }
    }
}

/// A publish or purge through this isolate changes the channel's mirror: its window (and so
/// the answers made for it) is read from D1 again at the next poll here, rather than used for
/// up to `POLL_CACHE_MS` more. Other isolates keep that bound. Still pages stay: the next
/// window read says whether each is still the answer.
pub fn forget_window(channel: &ChannelName) {
    WINDOWS.with(|w| w.borrow_mut().forget(channel.as_str()));
}

/// A publish through this isolate: as `forget_window`, and no window read before the mirror
/// shows the publish is kept as fresh (the poll after it reads D1 again, not a stale window
/// for `POLL_CACHE_MS`).
pub fn published(channel: &ChannelName) {
    WINDOWS.with(|w| w.borrow_mut().published(channel.as_str()));
}

/// `GET /poll/{c}`.
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
    let caching = at.config.poll_cache_ms > 0;
    // Filtered pages are not kept as still pages: only plain ones.
    let still = match (caching, &filter, request.cursor) {
        (true, None, Some(cursor)) => Some(StillKey::new(at, channel, cursor, request.limit)),
        _ => None,
    };
    // 1. A fresh window: a 304, an answer made for it, or a still page.
    if let Some(window) = fresh_window(at, channel) {
        if let Some(answer) = known(at, channel, window, tag(window), still.as_ref()) {
            return answer;
        }
    }
    // 2. A still page, here or in the Cache API, checked against the window now.
    if let Some(key) = &still {
        if let Some(answer) = still_answer(at, channel, key, &tag).await? {
            return Ok(answer);
        }
    }
    // 3. D1, once for every poll of this request here now.
    let read = || read_page(at, channel, &request, filter.as_ref(), &tag, still.as_ref());
    if !caching {
        let (etag, body) = read().await?;
        return answer(at, etag, body, Source::Mirror);
    }
    let flight_key = PageCache::key(channel.as_str(), &tag(Window::EMPTY));
    let (etag, body, source) = read_once(&flight_key, read).await?;
    answer(at, etag, body, source)
}

/// `read`, once for every poll of the request `key` in this isolate now.
async fn read_once<F, R>(key: &str, read: F) -> Result<(String, Rc<str>, Source), Error>
where
    F: Fn() -> R,
    R: std::future::Future<Output = Result<(String, Rc<str>), Error>>,
{
    let (landed, source) = match flight::join(&PAGE_READS, key).await {
        Joined::Landed(landed) => (landed, Source::Shared),
        Joined::Alone => (read().await, Source::Mirror),
        Joined::Lead(lead) => {
            let landed = read().await;
            lead.land(landed.clone());
            (landed, Source::Mirror)
        }
    };
    landed.map(|(etag, body)| (etag, body, source))
}

/// The answer this isolate knows for `window` without D1: a 304, a page it made for that
/// window, or a still page.
fn known(
    at: &Incoming<'_>,
    channel: &ChannelName,
    window: Window,
    etag: String,
    still: Option<&StillKey>,
) -> Option<Answer> {
    if unchanged(at, &etag) {
        return Some(not_modified(etag));
    }
    if let Some(page) = cached_page(channel.as_str(), &etag) {
        return Some(answer(at, etag, page, Source::Isolate));
    }
    let body = keep_page(channel.as_str(), &etag, still::answer_here(still?, window)?);
    Some(answer(at, etag, body, Source::Isolate))
}

/// Reads the page from D1 and keeps what it learnt: the window, the answer, and the page as a
/// still page when it is one.
async fn read_page(
    at: &Incoming<'_>,
    channel: &ChannelName,
    request: &PollRequest,
    filter: Option<&Filter>,
    tag: &impl Fn(Window) -> String,
    still: Option<&StillKey>,
) -> Result<(String, Rc<str>), Error> {
    let db = mirror_db(at).await?;
    let now = now_ms();
    let (window, body) = if let Some(filter) = filter {
        let lanes = [(channel, request.cursor)];
        let read = topic_poll::read(&db, &lanes, filter, request.limit, request.max_bytes).await?;
        let window = read.windows.first().copied().unwrap_or(Window::EMPTY);
        (window, read.page().encode(channel))
    } else {
        let (window, rows) = mirror::read_page(&db, channel, request)
            .await
            .map_err(|e| Error::Unavailable(format!("reading the mirror: {e}")))?;
        let page = cut_page(request, window, rows, channel);
        if let Some(key) = still {
            if let Some(page) = page.still(request.cursor, channel) {
                key.keep(at, Rc::new(page));
            }
        }
        (window, page.encode(channel))
    };
    remember(channel, window, now);
    let etag = tag(window);
    let body = keep_page(channel.as_str(), &etag, body);
    Ok((etag, body))
}

/// The channel's window from D1 (one row), once for every poll here that needs it now.
async fn read_window(at: &Incoming<'_>, channel: &ChannelName) -> Result<Window, Error> {
    let read = || async {
        let db = mirror_db(at).await?;
        let window = mirror::read_window(&db, channel)
            .await
            .map_err(|e| Error::Unavailable(format!("reading the mirror: {e}")))?;
        remember(channel, window, now_ms());
        Ok(window)
    };
    match flight::join(&WINDOW_READS, channel.as_str()).await {
        Joined::Landed(window) => window,
        Joined::Alone => read().await,
        Joined::Lead(lead) => {
            let window = read().await;
            lead.land(window.clone());
            window
        }
    }
}

/// Keeps `window`, read from D1 at `now`, for the polls that follow.
fn remember(channel: &ChannelName, window: Window, now: i64) {
    WINDOWS.with(|w| w.borrow_mut().put(channel.as_str(), window, now));
}

/// The window of `channel` read last, however long ago: a hint, never an answer.
fn last_window(channel: &ChannelName) -> Option<Window> {
    WINDOWS.with(|w| w.borrow().last(channel.as_str()))
}

fn fresh_window(at: &Incoming<'_>, channel: &ChannelName) -> Option<Window> {
    let ttl = at.config.poll_cache_ms;
    WINDOWS.with(|w| w.borrow().fresh(channel.as_str(), now_ms(), ttl))
}

/// The answer this isolate made for `channels` (a route's channel, or its set's key) and `etag`.
fn cached_page(channels: &str, etag: &str) -> Option<Rc<str>> {
    PAGES.with(|p| p.borrow_mut().get(&PageCache::key(channels, etag)))
}

/// Keeps an answer just made for the pollers that follow.
fn keep_page(channels: &str, etag: &str, body: String) -> Rc<str> {
    let body: Rc<str> = Rc::from(body);
    PAGES.with(|p| {
        p.borrow_mut()
            .put(PageCache::key(channels, etag), body.clone())
    });
    body
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

/// The D1 mirror, after the development-only read delay (`fault_d1_read_ms`).
async fn mirror_db(at: &Incoming<'_>) -> Result<worker::D1Database, Error> {
    let delay = at.config.fault_d1_read_ms;
    if delay > 0 {
        Delay::from(Duration::from_millis(delay)).await;
    }
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

/// A 200 with `body`, or a 304 when the request's tag matches (a shared read's answer is
/// checked here, per poll).
fn answer(at: &Incoming<'_>, etag: String, body: Rc<str>, source: Source) -> Answer {
    if unchanged(at, &etag) {
        return not_modified(etag);
    }
    let response = poll_headers(
        json(200, body.to_string()).map_err(internal("answering"))?,
        &etag,
    )?;
    response
        .headers()
        .set("x-edgehub-cache", source.header())
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
