//! Who may do what: finds the request's token (bearer header, or `?token=` where a header cannot
//! be set), verifies it with `AUTH_SECRET`, and checks the right for one channel. Anonymous
//! subscribers are let in on `PUBLIC_CHANNELS` only. Nothing here logs a token.

use crate::auth::{self, Action, TokenSource};
use crate::config::Config;
use crate::error::{Error, TokenFault};
use crate::protocol::query::query_param;
use crate::protocol::ChannelName;
use worker::{Date, Env, Request};

const SECRET: &str = "AUTH_SECRET";

/// What an admitted request may do on its channel, for subscribers that live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The token also allows publishing here (a WebSocket may then publish).
    pub publish: bool,
    /// When the token expires (unix seconds); `None` for anonymous access to a public channel.
    pub expires: Option<i64>,
}

/// `Ok` when the request may perform `action` on `channel`; 401 or 403 otherwise.
pub fn check(
    req: &Request,
    query: &str,
    env: &Env,
    config: &Config,
    action: Action,
    channel: &ChannelName,
) -> Result<Access, Error> {
    let header = req.headers().get("authorization").ok().flatten();
    let (token, source) = match header.as_deref() {
        Some(value) => (
            auth::bearer(value)
                .ok_or(Error::Unauthorized(TokenFault::Malformed))?
                .to_string(),
            TokenSource::Header,
        ),
        None => match query_param(query, "token") {
            Some(token) => (token?, TokenSource::Query),
            None => {
                let public = config.public_channels.iter().any(|p| p.matches(channel));
                return if action == Action::Subscribe && public {
                    Ok(Access {
                        publish: false,
                        expires: None,
                    })
                } else {
                    Err(Error::Unauthorized(TokenFault::Missing))
                };
            }
        },
    };
    let secret = secret(env)?;
    let now = (Date::now().as_millis() / 1000) as i64;
    let grant = auth::verify(
        &token,
        secret.as_bytes(),
        now,
        source,
        config.query_token_max_seconds,
    )?;
    if grant.allows(action, channel) {
        Ok(Access {
            publish: grant.allows(Action::Publish, channel),
            expires: Some(grant.exp),
        })
    } else {
        let verb = match action {
            Action::Publish => "publish to",
            Action::Subscribe => "subscribe to",
        };
        Err(Error::Forbidden(format!(
            "the token may not {verb} channel {channel}"
        )))
    }
}

/// The signing secret: a `wrangler secret` in production, a `.dev.vars` entry locally.
fn secret(env: &Env) -> Result<String, Error> {
    env.secret(SECRET)
        .map(|s| s.to_string())
        .or_else(|_| env.var(SECRET).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Internal(format!("{SECRET} is not configured")))
}
