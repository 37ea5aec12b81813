//! The runtime shell: the only code that names the `worker` crate. The fetch entry routes and
//! hands each route to its function in `routes`, which checks access and input, then answers
//! from D1 (`/poll`), mints a token (`/tokens`), bridges SSE, or calls the channel's Durable
//! Object (`hub`, through `client`). Failures are logged and become problem documents here, at
//! the edge (`http::problem`); CORS headers are added in `cors`, once, on the way out.

mod access;
mod alarm;
mod bell;
mod client;
mod cors;
mod demo;
mod filters;
mod flight;
mod http;
mod hub;
mod log;
mod mercure;
mod mirror;
mod poll;
mod presence;
mod routes;
mod sse;
mod stream;
mod subscribers;
mod tap;
mod topic_poll;
mod trunk;

use crate::config::Config;
use crate::error::Error;
use crate::protocol::{route, Route};
use access::Credentials;
use http::Inbound;
use http::{log_failure, problem};
use std::cell::OnceCell;
use std::rc::Rc;
use worker::{event, Context, Env, Response, Result};

thread_local! {
    /// Settings, read once per isolate: `[vars]` cannot change while an isolate lives (a new
    /// deployment gets new isolates).
    static CONFIG: OnceCell<Rc<Config>> = const { OnceCell::new() };
}

/// The isolate's settings, once a request has read them.
pub(crate) fn isolate_config() -> Option<Rc<Config>> {
    CONFIG.with(|cell| cell.get().cloned())
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
async fn fetch(req: worker::web_sys::Request, env: Env, ctx: Context) -> Result<Response> {
    let req = Inbound::new(req);
    let config = config(&env);
    let origin = req.headers().get("origin").ok().flatten();
    if req.method() == "OPTIONS" {
        return Ok(cors::preflight(&req, origin.as_deref(), &config).unwrap_or_else(|e| failed(&e)));
    }
    let target = req.target();
    let cookies = target
        .as_ref()
        .is_ok_and(|t| t.path == crate::protocol::mercure::HUB_PATH);
    let response = handle(req, target, &env, &config, &ctx)
        .await
        .unwrap_or_else(|e| failed(&e));
    Ok(cors::decorate(
        response,
        origin.as_deref(),
        &config,
        cookies,
    ))
}

/// The edge: a failure is logged (if it is ours) and answered as a problem document.
fn failed(err: &Error) -> Response {
    log_failure(err);
    problem(err)
}

/// Routes a request and checks who may make it; each route is one function in `routes`.
async fn handle(
    req: Inbound,
    target: std::result::Result<http::Target, Error>,
    env: &Env,
    config: &Rc<Config>,
    ctx: &Context,
) -> std::result::Result<Response, Error> {
    let target = target?;
    let query = target.query;
    // The raw method: the worker crate reads every method it does not know as GET.
    let found = route(&req.method(), &target.path)?;
    let credentials = Credentials::read(&req, &query, found.takes_query_token());
    let mut incoming = routes::Incoming {
        req,
        env,
        config,
        query,
        credentials,
        ctx,
    };
    match found {
        Route::Health => routes::health(),
        Route::Demo => demo::page(env, config),
        Route::Client => demo::client(),
        Route::Publish(channel) => routes::publish(&mut incoming, &channel).await,
        Route::Purge(channel) => routes::purge(&incoming, &channel).await,
        Route::ChannelInfo(channel) => routes::info(&incoming, &channel).await,
        Route::Presence(channel) => routes::presence(&incoming, &channel).await,
        Route::Poll(channel) => poll::poll(&incoming, &channel).await,
        Route::Ws(channel) => routes::ws(&incoming, &channel).await,
        Route::Sse(channel) => routes::sse(&incoming, &channel).await,
        Route::PollMany => poll::poll_many(&incoming).await,
        Route::SseMany => routes::sse_many(&incoming).await,
        Route::WsMany => routes::ws_many(&incoming).await,
        Route::MintToken => routes::mint_token(&mut incoming).await,
        Route::MercureSubscribe => mercure::subscribe(&incoming).await,
        Route::MercurePublish => mercure::publish(&mut incoming).await,
    }
}
