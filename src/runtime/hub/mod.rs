//! The `ChannelHub` Durable Object, one per channel: numbers and stores events in its SQLite log,
//! fans them out to its hibernatable subscribers, mirrors them to D1 in id order, and keeps the
//! log within retention. Its trait methods only dispatch; the rules live in `channel` and
//! `protocol`. The Worker reaches it through `Hub` (`client.rs`) with input already validated.

mod publish;
mod sockets;
mod upkeep;

use super::alarm::Alarm;
use super::filters::Filters;
use super::http::{internal, json, log_failure, problem};
use super::log::ChannelLog;
use super::presence::Presence;
use super::subscribers;
use crate::channel::fanout::Transport;
use crate::channel::flow::Floor;
use crate::channel::retention::Policy;
use crate::channel::subscriber::Attachment;
use crate::config::Config;
use crate::error::Error;
use crate::protocol::bridge::Upstream;
use crate::protocol::call::{Call, RESUMED_HEADER};
use crate::protocol::mercure::EARLIEST;
use crate::protocol::publish::PublishLimits;
use crate::protocol::query::percent_encode;
use crate::protocol::ws::{parse_client, ClientFrame, CloseCode, Refusal, PING, PONG};
use crate::protocol::ChannelName;
use publish::{published, Scoped};
use std::cell::Cell;
use std::rc::Rc;
use worker::wasm_bindgen;
use worker::{
    console_error, durable_object, Date, DurableObject, Env, Method, Request, Response, Result,
    State, WebSocket, WebSocketIncomingMessage,
};

#[durable_object]
pub struct ChannelHub {
    state: State,
    env: Env,
    log: Option<ChannelLog>,
    /// Made when this instance is loaded: shows evictions and hibernation.
    instance: String,
    /// Requests this instance has served: shows which requests reach the object at all.
    requests: Cell<u64>,
    /// True while a mirror catch-up runs; there is at most one, so D1 writes stay in id order.
    mirroring: Rc<Cell<bool>>,
    /// The log changed while a mirror catch-up ran (`mirror::catch_up`).
    mirror_again: Rc<Cell<bool>>,
    /// Consecutive failed catch-ups, for the retry backoff.
    mirror_failures: Rc<Cell<u32>>,
    alarm: Rc<Alarm>,
    /// A lower bound on every WebSocket's confirmed position (`channel::flow`).
    floor: Cell<Floor>,
    /// Settings, read once per instance: `[vars]` cannot change while it lives.
    config: Config,
    /// Who is on the channel (`runtime::presence`).
    presence: Presence,
    /// Subscribers' topic filters (`runtime::filters`).
    filters: Filters,
}

impl DurableObject for ChannelHub {
    fn new(state: State, env: Env) -> Self {
        let log = ChannelLog::open(&state.storage())
            .map_err(|e| console_error!("edgehub: opening the channel log: {e}"))
            .ok();
        // `ping` is answered by the runtime itself, without waking the object.
        if let Ok(pair) = worker::worker_sys::WebSocketRequestResponsePair::new(PING, PONG) {
            let _ = state.as_raw().set_websocket_auto_response(&pair);
        }
        let config = Config::from_lookup(|name| env.var(name).ok().map(|v| v.to_string()));
        let presence = Presence::new(state.as_raw(), &config);
        let filters = Filters::new(state.storage().sql());
        let hub = ChannelHub {
            state,
            env,
            log,
            instance: instance_id(),
            requests: Cell::new(0),
            mirroring: Rc::new(Cell::new(false)),
            mirror_again: Rc::new(Cell::new(false)),
            mirror_failures: Rc::new(Cell::new(0)),
            alarm: Rc::new(Alarm::default()),
            floor: Cell::new(Floor::default()),
            config,
            presence,
            filters,
        };
        // A crash between an answer and its D1 write leaves the mirror behind: catch up on wake.
        hub.start_mirror();
        hub
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.requests.set(self.requests.get() + 1);
        Ok(self.dispatch(req).await.unwrap_or_else(|e| {
            log_failure(&e);
            problem(&e)
        }))
    }

    async fn alarm(&self) -> Result<Response> {
        self.alarm.fired();
        let now = Date::now().as_millis() as i64;
        let next_expiry = subscribers::close_expired(&self.state, &self.presence, now / 1000);
        let next_stall = subscribers::close_stalled(&self.state, &self.presence, now);
        let next_sweep = self.presence.sweep(now);
        if let Some(log) = &self.log {
            if let Err(e) = log.prune_by_age(self.policy(), now) {
                console_error!("edgehub: pruning by age: {e}");
            }
        }
        self.start_mirror();
        let next = self
            .next_upkeep()
            .into_iter()
            .chain(next_expiry.map(|s| s * 1000))
            .chain(next_stall)
            .chain(next_sweep)
            .min();
        if let Some(at) = next {
            self.alarm.at_most(&self.state.storage(), at as f64).await;
        }
        Response::empty()
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let text = match message {
            WebSocketIncomingMessage::String(text) => text,
            WebSocketIncomingMessage::Binary(_) => {
                let err = Error::bad_request("binary frames are not accepted; send JSON text");
                let _ = ws.send_with_str(Refusal::from(err).frame());
                return Ok(());
            }
        };
        if text == PING {
            let _ = ws.send_with_str(PONG);
            return Ok(());
        }
        if let Some(n) = Upstream::decode_members(&text) {
            subscribers::carried(&ws, n);
            return Ok(());
        }
        let limits = PublishLimits {
            max_batch: 1,
            ..self.config.publish_limits()
        };
        let done = match parse_client(&text, limits) {
            Ok(ClientFrame::Publish(publish)) => self.socket_publish(&ws, publish),
            Ok(ClientFrame::Cursor(id)) => match self.socket_cursor(&ws, id) {
                Ok(stalls_at) => {
                    self.check_stall_at(stalls_at).await;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            Err(refused) => Err(refused),
        };
        if let Err(refused) = done {
            log_failure(&refused.error);
            let _ = ws.send_with_str(refused.frame());
        }
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        _code: usize,
        _reason: String,
        _clean: bool,
    ) -> Result<()> {
        self.presence.close(&ws, CloseCode::Normal);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        self.presence.close(&ws, CloseCode::Reconnect);
        Ok(())
    }
}

impl ChannelHub {
    fn log(&self) -> std::result::Result<&ChannelLog, Error> {
        self.log
            .as_ref()
            .ok_or_else(|| Error::Internal("the channel log did not open".into()))
    }

    fn policy(&self) -> Policy {
        Policy::new(self.config.retain_events, self.config.retain_seconds)
    }

    /// Decodes the Worker's call (`protocol::call`) and carries it out.
    async fn dispatch(&self, mut req: Request) -> std::result::Result<Response, Error> {
        let post = req.method() == Method::Post;
        let url = req.url().map_err(internal("reading the URL"))?;
        let body = match post {
            true => Some(req.text().await.map_err(internal("reading a call"))?),
            false => None,
        };
        let header = |name: &str| header(&req, name);
        let (channel, call) = Call::decode(
            post,
            url.path(),
            url.query().unwrap_or(""),
            header,
            body.as_deref(),
        )?;
        match call {
            Call::Publish {
                items,
                key,
                publisher,
            } => {
                let key = key.as_deref().map(|key| Scoped { key, publisher });
                let done = self.commit(&channel, items, key)?;
                published(done)
            }
            Call::Purge => {
                self.log()?.purge().map_err(internal("purging"))?;
                self.start_mirror();
                Ok(Response::builder().with_status(204).empty())
            }
            Call::Info => self.info(&channel),
            Call::Presence => {
                json(200, self.presence.listing(&channel)).map_err(internal("answering"))
            }
            Call::Subscribe {
                transport,
                cursor,
                publish,
                expires,
                publisher,
                member,
                filter,
                resume,
                shared,
            } => {
                if shared && transport == Transport::Sse && self.config.fault_take_over {
                    return Err(Error::Unavailable(
                        "take-overs are refused (EDGEHUB_FAULT_TAKE_OVER)".into(),
                    ));
                }
                let mut attachment = Attachment::new(transport, publish, expires);
                if shared {
                    attachment.members = Some(1);
                }
                let filter = match filter {
                    Some(spec) => self.filters.keep(self.state.as_raw(), &spec)?,
                    None => None,
                };
                let (cursor, resumed) = match resume {
                    Some(id) => {
                        let (cursor, resumed) = self.resume_after(id)?;
                        (Some(cursor), Some(resumed))
                    }
                    None => (cursor, None),
                };
                let mut answer = self
                    .subscribe(&channel, attachment, cursor, publisher, member, filter)
                    .await?;
                if let Some(resumed) = resumed {
                    answer
                        .headers_mut()
                        .set(RESUMED_HEADER, &percent_encode(&resumed))
                        .map_err(internal("answering"))?;
                }
                Ok(answer)
            }
        }
    }

    /// A Mercure last event id as a cursor, and what the subscriber is told it resumed after:
    /// that id, or `earliest` (asked for, or not found: everything retained is sent).
    fn resume_after(&self, id: String) -> std::result::Result<(u64, String), Error> {
        if id == EARLIEST {
            return Ok((0, id));
        }
        let seq = self
            .log()?
            .seq_of_update(&id)
            .map_err(internal("finding an update"))?;
        Ok(match seq {
            Some(seq) => (seq, id),
            None => (0, EARLIEST.to_string()),
        })
    }

    fn heartbeat_ms(&self) -> i64 {
        i64::try_from(self.config.heartbeat_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    fn flow_window(&self) -> u64 {
        self.config.slow_consumer_bytes as u64
    }

    fn info(&self, channel: &ChannelName) -> std::result::Result<Response, Error> {
        let log = self.log()?;
        let window = log.window().map_err(internal("reading the window"))?;
        let mirrored = log
            .state()
            .map_err(internal("reading the state"))?
            .map_or(0, |s| s.mirrored);
        let body = serde_json::json!({
            "channel": channel.as_str(),
            "head": window.head,
            "earliest": window.earliest,
            "retained": window.retained(),
            "mirrored": mirrored,
            "subscribers": {
                "sse": subscribers::clients(&self.state, Transport::Sse),
                "ws": subscribers::clients(&self.state, Transport::Ws),
            },
            // The sockets that carry them: a Worker isolate's shared upstream carries many.
            "sockets": {
                "sse": subscribers::sockets(&self.state, Transport::Sse).len(),
                "ws": subscribers::sockets(&self.state, Transport::Ws).len(),
            },
            "presence": self.presence.count(),
            "object": {"instance": self.instance, "requests": self.requests.get()},
        });
        json(200, body.to_string()).map_err(internal("answering"))
    }
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return format!("t{}", Date::now().as_millis());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
