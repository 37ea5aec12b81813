//! The runtime shell: the only code that names the `worker` crate. The fetch entry routes,
//! checks access and input, then answers from D1 (`/poll`), mints a token (`/tokens`), bridges
//! SSE, or hands validated input to the channel's Durable Object (`hub`). Errors become problem
//! documents in `http::problem`; CORS headers are added in `cors`, once, on the way out.

mod access;
mod alarm;
mod client;
mod cors;
mod demo;
mod http;
mod hub;
mod log;
mod mirror;
mod sse;
mod subscribers;

use crate::auth::delegate::{delegate, mint, TokenRequest};
use crate::auth::Action;
use crate::channel::fanout::Transport;
use crate::channel::poll::{cut_page, PollRequest, WindowCache};
use crate::config::Config;
use crate::error::Error;
use crate::protocol::envelope::format_time;
use crate::protocol::publish::{parse_idempotency_key, parse_publish};
use crate::protocol::query::{etag_matches, parse_cursor, parse_limit, query_param};
use crate::protocol::{route, ChannelName, Route};
use access::Credentials;
use client::Hub;
use http::{internal, is_json, json, problem, read_body};
use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use worker::{event, Context, Date, Env, Method, Request, Response, Result};

/// The largest `POST /tokens` body.
const MINT_BODY_BYTES: usize = 16 * 1024;

thread_local! {
    /// Settings, read once per isolate: `[vars]` cannot change while an isolate lives (a new
    /// deployment gets new isolates).
    static CONFIG: OnceCell<Rc<Config>> = const { OnceCell::new() };
    /// Mirror windows this isolate read recently, for 304s without D1 (`POLL_CACHE_MS`).
    static WINDOWS: RefCell<WindowCache> = RefCell::new(WindowCache::default());
}

fn config(env: &Env) -> Rc<Config> {
    CONFIG.with(|cell| {
        cell.get_or_init(|| {
            Rc::new(Config::from_lookup(|name| {
                env.var(name).ok().map(|v| v.to_string())
            }))
        })
        .clone()
    })
}

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let config = config(&env);
    let origin = req.headers().get("origin").ok().flatten();
    if req.method() == Method::Options {
        return Ok(
            cors::preflight(&req, origin.as_deref(), &config).unwrap_or_else(|e| problem(&e))
        );
    }
    let response = handle(req, &env, &config)
        .await
        .unwrap_or_else(|e| problem(&e));
    Ok(cors::decorate(response, origin.as_deref(), &config))
}

async fn handle(
    mut req: Request,
    env: &Env,
    config: &Config,
) -> std::result::Result<Response, Error> {
    let url = req
        .url()
        .map_err(|_| Error::bad_request("unreadable URL"))?;
    let query = url.query().unwrap_or("").to_string();
    // The raw method: the worker crate reads every method it does not know as GET.
    let found = route(&req.inner().method(), url.path())?;
    let credentials = Credentials::read(&req, &query, found.takes_query_token());
    match found {
        Route::Health => json(200, "{\"status\":\"ok\"}".into()).map_err(internal("answering")),
        Route::Demo => demo::page(env, config),
        Route::Publish(channel) => {
            let access = credentials.check(env, config, Action::Publish, &channel)?;
            if !is_json(&req) {
                return Err(Error::UnsupportedMediaType);
            }
            let body = read_body(&mut req, config.max_body_bytes).await?;
            let events = parse_publish(&body, config.publish_limits())?;
            let key = match req.headers().get("idempotency-key").ok().flatten() {
                Some(k) => Some(parse_idempotency_key(k.trim())?),
                None => None,
            };
            Hub::get(env, &channel)?
                .publish(&events, key.as_deref(), access.publisher)
                .await
        }
        Route::Purge(channel) => {
            credentials.check(env, config, Action::Publish, &channel)?;
            Hub::get(env, &channel)?.purge().await
        }
        Route::ChannelInfo(channel) => {
            credentials.check(env, config, Action::Subscribe, &channel)?;
            Hub::get(env, &channel)?.info().await
        }
        Route::Poll(channel) => {
            credentials.check(env, config, Action::Subscribe, &channel)?;
            poll(&req, &query, env, config, &channel).await
        }
        Route::Ws(channel) => {
            let upgrade = req.headers().get("upgrade").ok().flatten();
            if !upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
                return Err(Error::UpgradeRequired);
            }
            let access = credentials.check(env, config, Action::Subscribe, &channel)?;
            let cursor = since(&query)?;
            Hub::get(env, &channel)?
                .subscribe(Transport::Ws, cursor, access)
                .await
        }
        Route::Sse(channel) => {
            let access = credentials.check(env, config, Action::Subscribe, &channel)?;
            // EventSource resumes with Last-Event-ID; it wins over the URL's original `since`.
            let cursor = match req.headers().get("last-event-id").ok().flatten() {
                Some(id) if !id.trim().is_empty() => Some(parse_cursor(id.trim())?),
                _ => since(&query)?,
            };
            let upstream = Hub::get(env, &channel)?
                .subscribe(Transport::Sse, cursor, access)
                .await?;
            if upstream.status_code() != 101 {
                return Ok(upstream);
            }
            let limits = sse::BridgeLimits {
                heartbeat_s: config.heartbeat_seconds,
                lifetime_s: config.sse_max_seconds,
                max_backlog: config.slow_consumer_bytes,
            };
            sse::bridge(upstream, limits, access.expires)
        }
        Route::MintToken => {
            let caller = credentials.grant(env, config)?;
            if !is_json(&req) {
                return Err(Error::UnsupportedMediaType);
            }
            let body = read_body(&mut req, MINT_BODY_BYTES).await?;
            let request = TokenRequest::parse(&body)?;
            let claims = delegate(
                &caller,
                &request,
                access::now_s(),
                config.token_max_ttl_seconds,
            )?;
            let token = mint(&claims, access::secret(env)?.as_bytes())?;
            let expires_at = format_time(claims.exp.unwrap_or_default() * 1000).unwrap_or_default();
            let body = serde_json::json!({"token": token, "expires_at": expires_at});
            json(201, body.to_string()).map_err(internal("answering"))
        }
    }
}

fn since(query: &str) -> std::result::Result<Option<u64>, Error> {
    query_param(query, "since")
        .transpose()?
        .map(|s| parse_cursor(&s))
        .transpose()
}

/// `/poll` from the D1 mirror alone: the channel's object is never woken by a poll. A
/// conditional poll that matches the window this isolate read less than `POLL_CACHE_MS` ago is a
/// 304 without D1; any other answer comes from D1 (and refreshes that window).
async fn poll(
    req: &Request,
    query: &str,
    env: &Env,
    config: &Config,
    channel: &ChannelName,
) -> std::result::Result<Response, Error> {
    let cursor = since(query)?;
    let limit = match query_param(query, "limit").transpose()? {
        Some(s) => parse_limit(&s, config.poll_max_limit)?,
        None => config.poll_default_limit,
    };
    let request = PollRequest {
        cursor,
        limit,
        max_bytes: config.max_page_bytes,
    };
    let if_none_match = req.headers().get("if-none-match").ok().flatten();
    let now = Date::now().as_millis() as i64;
    let cached = WINDOWS.with(|w| {
        w.borrow()
            .fresh(channel.as_str(), now, config.poll_cache_ms)
    });
    let unchanged = |etag: &str| {
        if_none_match
            .as_deref()
            .is_some_and(|v| etag_matches(v, etag))
    };
    let (etag, response) = match cached.map(|w| request.etag(w)) {
        Some(etag) if unchanged(&etag) => (etag, Response::builder().with_status(304).empty()),
        _ => {
            let db = env
                .d1(mirror::BINDING)
                .map_err(internal("the D1 binding"))?;
            let (window, rows) = mirror::read_page(&db, channel, &request)
                .await
                .map_err(|e| Error::Unavailable(format!("reading the mirror: {e}")))?;
            WINDOWS.with(|w| w.borrow_mut().put(channel.as_str(), window, now));
            let etag = request.etag(window);
            let response = if unchanged(&etag) {
                Response::builder().with_status(304).empty()
            } else {
                json(
                    200,
                    cut_page(&request, window, rows, channel).encode(channel),
                )
                .map_err(internal("answering"))?
            };
            (etag, response)
        }
    };
    let headers = response.headers();
    headers.set("etag", &etag).map_err(internal("answering"))?;
    headers
        .set("cache-control", "no-cache")
        .map_err(internal("answering"))?;
    Ok(response)
}
