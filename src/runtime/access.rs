//! Who may do what: finds the request's token (bearer header, or `?token=` on the routes where a
//! header cannot be set), verifies it with `AUTH_SECRET`, and checks the right for one channel.
//! Anonymous subscribers are let in on `PUBLIC_CHANNELS` only. Nothing here logs a token.

use super::http::Inbound;
use crate::auth::verified::VerifiedTokens;
use crate::auth::{self, Action, Grant, Publisher, TokenSource};
use crate::config::Config;
use crate::error::{Error, TokenFault};
use crate::protocol::filter::FilterSpec;
use crate::protocol::presence::Entrant;
use crate::protocol::query::query_param;
use crate::protocol::stream::ChannelSet;
use crate::protocol::ChannelName;
use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use worker::{Date, Env};

const SECRET: &str = "AUTH_SECRET";

/// How many verified tokens an isolate keeps (`auth::verified`): a few hundred bytes each.
const VERIFIED_TOKENS: usize = 1024;

thread_local! {
    static VERIFIED: RefCell<VerifiedTokens> = RefCell::new(VerifiedTokens::new(VERIFIED_TOKENS));
    static SECRET_READ: OnceCell<Rc<str>> = const { OnceCell::new() };
}

/// What an admitted request may do on its channel, for subscribers that live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The token also allows publishing here (a WebSocket may then publish).
    pub publish: bool,
    /// When the token stops being accepted (unix seconds: `exp` plus the clock skew); `None` for
    /// anonymous access to a public channel.
    pub expires: Option<i64>,
    /// Whose idempotency keys a publish uses (`None` for anonymous access).
    pub publisher: Option<Publisher>,
}

/// Where the request's token is, if it has one.
pub struct Credentials {
    /// `None`: anonymous. `Some(Err)`: an `Authorization` header that is not a bearer token,
    /// refused only where a route looks at credentials.
    token: Option<Result<(String, TokenSource), Error>>,
}

impl Credentials {
    /// The bearer header, or else (where `query_allowed`) the `token` query parameter.
    pub fn read(req: &Inbound, query: &str, query_allowed: bool) -> Self {
        if let Some(value) = req.headers().get("authorization").ok().flatten() {
            let token = auth::bearer(&value)
                .map(|t| (t.to_string(), TokenSource::Header))
                .ok_or(Error::Unauthorized(TokenFault::Malformed));
            return Credentials { token: Some(token) };
        }
        let token = match query_param(query, "token") {
            Some(token) if query_allowed => Some(token.map(|t| (t, TokenSource::Query))),
            _ => None,
        };
        Credentials { token }
    }

    fn token_text(&self) -> Option<&str> {
        match &self.token {
            Some(Ok((token, _))) => Some(token),
            _ => None,
        }
    }

    /// The verified grant; 401 without a token or with a bad one.
    pub fn grant(&self, env: &Env, config: &Config) -> Result<Grant, Error> {
        let (token, source) = match &self.token {
            None => return Err(Error::Unauthorized(TokenFault::Missing)),
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(found)) => found,
        };
        let secret = secret(env)?;
        VERIFIED.with(|cache| {
            cache.borrow_mut().verify(
                token,
                secret.as_bytes(),
                now_s(),
                *source,
                config.query_token_max_seconds,
            )
        })
    }

    /// `Ok` when the request may perform `action` on `channel`; 401 or 403 otherwise.
    pub fn check(
        &self,
        env: &Env,
        config: &Config,
        action: Action,
        channel: &ChannelName,
    ) -> Result<Access, Error> {
        self.permits(env, config)?.check(config, action, channel)
    }

    /// What these credentials allow, the token verified once, to be checked channel by
    /// channel (a stream's set, a multi-channel WebSocket's `subscribe` frames). Without a
    /// token: public channels only.
    pub fn permits(&self, env: &Env, config: &Config) -> Result<Permits, Error> {
        let grant = match self.token {
            None => None,
            Some(_) => Some(self.grant(env, config)?),
        };
        Ok(Permits {
            member: None,
            filter: None,
            publisher: grant
                .as_ref()
                .zip(self.token_text())
                .map(|(g, t)| Publisher::of(g.sub.as_deref(), t)),
            grant,
        })
    }
}

/// A verified token's grant (or none, for anonymous access), checked channel by channel.
#[derive(Debug, Clone)]
pub struct Permits {
    grant: Option<Grant>,
    publisher: Option<Publisher>,
    /// The presence member a stream's channels enter as (`?presence=1`).
    pub member: Option<Entrant>,
    /// The topics a stream's channels send (`?topic=…&topic_pattern=…`), validated.
    pub filter: Option<FilterSpec>,
}

impl Permits {
    /// The member these credentials make for `?presence=1`: the token's `sub` and `info`; 400
    /// without one (`Entrant::new`).
    pub fn entrant(&self) -> Result<Entrant, Error> {
        let grant = self.grant.as_ref();
        Entrant::new(
            grant.and_then(|g| g.sub.as_deref()),
            grant.and_then(|g| g.info.as_ref()),
        )
    }

    /// These permits, entering every channel they open as `member`.
    pub fn entering(self, member: Option<Entrant>) -> Permits {
        Permits { member, ..self }
    }

    /// These permits, subscribing every channel they open with `filter`.
    pub fn filtering(self, filter: Option<FilterSpec>) -> Permits {
        Permits { filter, ..self }
    }

    /// When the token stops being accepted (as `Access::expires`); `None` when anonymous.
    pub fn expires(&self) -> Option<i64> {
        self.grant
            .as_ref()
            .map(|g| g.exp.saturating_add(auth::CLOCK_SKEW_SECONDS))
    }

    /// `Ok` when these rights allow `action` on `channel`: anonymous ones on public channels
    /// only (401 elsewhere), a token's by its patterns (403 naming the channel).
    pub fn check(
        &self,
        config: &Config,
        action: Action,
        channel: &ChannelName,
    ) -> Result<Access, Error> {
        match &self.grant {
            Some(grant) => allowed(grant, self.publisher, action, channel),
            None if action == Action::Subscribe
                && config.public_channels.iter().any(|p| p.matches(channel)) =>
            {
                Ok(Access {
                    publish: false,
                    expires: None,
                    publisher: None,
                })
            }
            None => Err(Error::Unauthorized(TokenFault::Missing)),
        }
    }

    /// `check` for every channel of a set, in order: the first refused one answers (a 403
    /// names it).
    pub fn check_all(
        &self,
        config: &Config,
        action: Action,
        set: &ChannelSet,
    ) -> Result<Vec<Access>, Error> {
        set.channels()
            .iter()
            .map(|c| self.check(config, action, c))
            .collect()
    }
}

fn allowed(
    grant: &Grant,
    publisher: Option<Publisher>,
    action: Action,
    channel: &ChannelName,
) -> Result<Access, Error> {
    if !grant.allows(action, channel) {
        let verb = match action {
            Action::Publish => "publish to",
            Action::Subscribe => "subscribe to",
        };
        return Err(Error::Forbidden(format!(
            "the token may not {verb} channel {channel}"
        )));
    }
    Ok(Access {
        publish: grant.allows(Action::Publish, channel),
        // The same leeway as verification: a stream must not end while a reconnect with
        // the same token would still be let in, or the client would loop until it is not.
        expires: Some(grant.exp.saturating_add(auth::CLOCK_SKEW_SECONDS)),
        publisher,
    })
}

pub fn now_s() -> i64 {
    (Date::now().as_millis() / 1000) as i64
}

/// The signing secret: a `wrangler secret` in production, a `.dev.vars` entry locally. Read
/// once per isolate, as the settings are (a new secret comes with a new deployment, so new
/// isolates): reading it cost about 0.1 ms of every request with a token.
pub fn secret(env: &Env) -> Result<Rc<str>, Error> {
    if let Some(known) = SECRET_READ.with(|s| s.get().cloned()) {
        return Ok(known);
    }
    let read: Rc<str> = env
        .secret(SECRET)
        .map(|s| s.to_string())
        .or_else(|_| env.var(SECRET).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Internal(format!("{SECRET} is not configured")))?
        .into();
    SECRET_READ.with(|s| s.get_or_init(|| read.clone()).clone());
    Ok(read)
}
