//! The `ChannelHub` Durable Object, one per channel: numbers and stores events in its SQLite log,
//! fans them out to its hibernatable subscribers, and mirrors them to D1 in id order. Its trait
//! methods only dispatch; the rules live in `channel` and `protocol`. The Worker reaches it
//! through `Hub` (see `client.rs`) with input it has already validated.

use super::http::{internal, json, problem};
use super::log::ChannelLog;
use super::subscribers::{self, Attachment};
use super::{alarm, mirror};
use crate::channel::fanout::Transport;
use crate::channel::poll::StoredEvent;
use crate::config::Config;
use crate::error::Error;
use crate::protocol::envelope::format_time;
use crate::protocol::publish::PublishLimits;
use crate::protocol::query::{parse_cursor, query_param};
use crate::protocol::ws::{ack_frame, error_frame, parse_client, CloseCode, PING, PONG};
use crate::protocol::ChannelName;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::rc::Rc;
use worker::wasm_bindgen;
use worker::{
    console_error, durable_object, Date, DurableObject, Env, Method, Request, Response, Result,
    State, WebSocket, WebSocketIncomingMessage,
};

/// The channel's name travels with every internal request: the object learns it on first use.
pub const CHANNEL_HEADER: &str = "x-edgehub-channel";
/// Set by the Worker on a subscribe when the token also allows publishing.
pub const PUBLISH_HEADER: &str = "x-edgehub-publish";
/// Set by the Worker on a subscribe: the token's expiry, unix seconds.
pub const EXPIRES_HEADER: &str = "x-edgehub-expires";
pub const PATH_PUBLISH: &str = "/publish";
pub const PATH_INFO: &str = "/info";
pub const PATH_SUBSCRIBE: &str = "/subscribe";
/// Events per D1 write while the mirror catches up.
const MIRROR_BATCH: u64 = 500;
/// How long after a failed D1 write the alarm retries.
const MIRROR_RETRY_MS: f64 = 1000.0;

/// One event of a batch as the Worker sends it: `data` is a string of compact JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchItem {
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: String,
}

#[durable_object]
pub struct ChannelHub {
    state: State,
    env: Env,
    log: Option<ChannelLog>,
    /// Made when this instance is loaded: shows evictions and hibernation.
    instance: String,
    /// Requests this instance has served: shows which requests reach the object at all.
    requests: Cell<u64>,
    /// True while a mirror pump runs; there is at most one, so D1 writes stay in id order.
    pumping: Rc<Cell<bool>>,
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
        ChannelHub {
            state,
            env,
            log,
            instance: instance_id(),
            requests: Cell::new(0),
            pumping: Rc::new(Cell::new(false)),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.requests.set(self.requests.get() + 1);
        Ok(self.dispatch(req).await.unwrap_or_else(|e| problem(&e)))
    }

    async fn alarm(&self) -> Result<Response> {
        let next_expiry = subscribers::close_expired(&self.state, now_s());
        if let Some(exp) = next_expiry {
            alarm::at_most(&self.state.storage(), exp as f64 * 1000.0).await;
        }
        self.start_mirror();
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
                let _ = ws.send_with_str(error_frame(&err, None));
                return Ok(());
            }
        };
        if text == PING {
            let _ = ws.send_with_str(PONG);
            return Ok(());
        }
        if let Err((err, reference)) = self.socket_publish(&ws, &text) {
            let _ = ws.send_with_str(error_frame(&err, reference.as_deref()));
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
        subscribers::close(&ws, CloseCode::Normal);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        subscribers::close(&ws, CloseCode::Reconnect);
        Ok(())
    }
}

impl ChannelHub {
    fn log(&self) -> std::result::Result<&ChannelLog, Error> {
        self.log
            .as_ref()
            .ok_or_else(|| Error::Internal("the channel log did not open".into()))
    }

    fn config(&self) -> Config {
        Config::from_lookup(|name| self.env.var(name).ok().map(|v| v.to_string()))
    }

    async fn dispatch(&self, mut req: Request) -> std::result::Result<Response, Error> {
        let channel = header(&req, CHANNEL_HEADER)
            .ok_or_else(|| Error::bad_request("internal request without a channel"))?;
        let channel = ChannelName::parse(&channel)?;
        match (req.method(), req.path().as_str()) {
            (Method::Post, PATH_PUBLISH) => {
                let items: Vec<BatchItem> =
                    req.json().await.map_err(internal("reading a batch"))?;
                let stored = self.commit(&channel, items)?;
                let time = serde_json::to_string(
                    &format_time(stored.first().map_or(0, |e| e.time_ms)).unwrap_or_default(),
                )?;
                let ids: Vec<String> = stored
                    .iter()
                    .map(|e| format!("{{\"id\":{},\"time\":{time}}}", e.id))
                    .collect();
                json(201, format!("{{\"events\":[{}]}}", ids.join(",")))
                    .map_err(internal("answering"))
            }
            (Method::Get, PATH_INFO) => self.info(&channel),
            (Method::Get, PATH_SUBSCRIBE) => self.subscribe(&req, &channel).await,
            _ => Err(Error::NotFound),
        }
    }

    /// Stores a batch atomically, then delivers it live and starts the mirror. Delivery comes
    /// after the store, in id order, and a publish never waits for D1.
    fn commit(
        &self,
        channel: &ChannelName,
        items: Vec<BatchItem>,
    ) -> std::result::Result<Vec<StoredEvent>, Error> {
        let log = self.log()?;
        let batch =
            serde_json::to_string(&items).map_err(|e| Error::Internal(format!("batch: {e}")))?;
        let now = Date::now().as_millis() as i64;
        let count = items.len() as u64;
        let first = log
            .append(&self.state.storage(), channel.as_str(), batch, count, now)
            .map_err(internal("storing events"))?;
        let stored: Vec<StoredEvent> = items
            .into_iter()
            .zip(first..)
            .map(|(item, id)| StoredEvent {
                id,
                event_type: item.event_type,
                data: item.data,
                time_ms: now,
            })
            .collect();
        subscribers::fan_out(&self.state, channel, &stored);
        self.start_mirror();
        Ok(stored)
    }

    /// A publish sent over a subscriber's own WebSocket: same validation and storage as HTTP.
    fn socket_publish(
        &self,
        ws: &WebSocket,
        text: &str,
    ) -> std::result::Result<(), (Error, Option<String>)> {
        let config = self.config();
        let limits = PublishLimits {
            max_data_bytes: config.max_data_bytes,
            max_batch: 1,
        };
        let publish = parse_client(text, limits)?;
        let reference = publish.reference.clone();
        let attachment = Attachment::read(ws);
        if attachment.is_some_and(|a| a.expired(now_s())) {
            subscribers::close(ws, CloseCode::TokenExpired);
            return Ok(());
        }
        if !attachment.is_some_and(|a| a.publish) {
            return Err((
                Error::Forbidden("this socket's token may not publish here".into()),
                reference,
            ));
        }
        let channel = self
            .log()
            .and_then(|log| log.state().map_err(internal("reading the state")))
            .map_err(|e| (e, reference.clone()))?
            .and_then(|s| ChannelName::parse(&s.channel).ok());
        let channel = channel.ok_or_else(|| {
            (
                Error::Internal("socket on a channel without a name".into()),
                reference.clone(),
            )
        })?;
        let item = BatchItem {
            event_type: publish.event.event_type.as_str().to_string(),
            data: publish.event.data,
        };
        let stored = self
            .commit(&channel, vec![item])
            .map_err(|e| (e, reference.clone()))?;
        if let Some(event) = stored.first() {
            let _ = ws.send_with_str(ack_frame(reference.as_deref(), event.id));
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        req: &Request,
        channel: &ChannelName,
    ) -> std::result::Result<Response, Error> {
        let log = self.log()?;
        if log
            .state()
            .map_err(internal("reading the state"))?
            .is_none()
        {
            // Remember the name now, so a socket's publish on a fresh channel knows it.
            log.name(channel.as_str())
                .map_err(internal("naming the channel"))?;
        }
        let url = req.url().map_err(internal("reading the URL"))?;
        let query = url.query().unwrap_or("");
        let transport = query_param(query, "transport")
            .and_then(Result::ok)
            .and_then(|t| Transport::parse(&t))
            .ok_or_else(|| Error::bad_request("internal subscribe without a transport"))?;
        let cursor = query_param(query, "since")
            .transpose()?
            .map(|s| parse_cursor(&s))
            .transpose()?;
        let publish = header(req, PUBLISH_HEADER).is_some_and(|v| v == "1");
        let exp = header(req, EXPIRES_HEADER).and_then(|v| v.parse::<i64>().ok());
        let window = log.window().map_err(internal("reading the window"))?;
        let client = subscribers::accept(
            &self.state,
            channel,
            Attachment::new(transport, publish, exp),
            cursor,
            window,
            |after, limit| log.after(after, limit),
        )?;
        if let Some(exp) = exp {
            alarm::at_most(&self.state.storage(), exp as f64 * 1000.0).await;
        }
        Response::from_websocket(client).map_err(internal("answering"))
    }

    fn info(&self, channel: &ChannelName) -> std::result::Result<Response, Error> {
        let log = self.log()?;
        let window = log.window().map_err(internal("reading the window"))?;
        let mirrored = log
            .state()
            .map_err(internal("reading the state"))?
            .map_or(0, |s| s.mirrored as u64);
        let body = serde_json::json!({
            "channel": channel.as_str(),
            "head": window.head,
            "earliest": window.earliest,
            "retained": window.retained(),
            "mirrored": mirrored,
            "subscribers": {
                "sse": subscribers::sockets(&self.state, Transport::Sse).len(),
                "ws": subscribers::sockets(&self.state, Transport::Ws).len(),
            },
            "object": {"instance": self.instance, "requests": self.requests.get()},
        });
        json(200, body.to_string()).map_err(internal("answering"))
    }

    /// Starts the mirror pump unless one is running. It runs after the publish has been
    /// answered: a publish waits for the object's own storage, never for D1.
    fn start_mirror(&self) {
        let (Some(log), false) = (self.log.clone(), self.pumping.get()) else {
            return;
        };
        let db = match self.env.d1(mirror::BINDING) {
            Ok(db) => db,
            Err(e) => return console_error!("edgehub: no D1 binding: {e}"),
        };
        self.pumping.set(true);
        let pumping = self.pumping.clone();
        let storage = self.state.storage();
        alarm::in_background(&self.state, async move {
            if let Err(e) = pump(&log, &db).await {
                console_error!("edgehub: mirroring to D1 failed, retrying by alarm: {e}");
                alarm::at_most(&storage, Date::now().as_millis() as f64 + MIRROR_RETRY_MS).await;
            }
            pumping.set(false);
        });
    }
}

/// Copies every event the mirror lacks to D1, in id order, batch after batch, moving the
/// `mirrored` mark only after D1 has committed each batch.
async fn pump(log: &ChannelLog, db: &worker::D1Database) -> Result<()> {
    loop {
        let Some(state) = log.state()? else {
            return Ok(());
        };
        let batch = log.after(state.mirrored as u64, MIRROR_BATCH)?;
        let Some(last) = batch.last().map(|e| e.id) else {
            return Ok(());
        };
        let channel = ChannelName::parse(&state.channel)
            .map_err(|_| worker::Error::RustError("stored channel name is invalid".into()))?;
        let earliest = log.window()?.earliest;
        mirror::write(
            db,
            &channel,
            &batch,
            earliest,
            Date::now().as_millis() as f64,
        )
        .await?;
        log.set_mirrored(last)?;
    }
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

fn now_s() -> i64 {
    (Date::now().as_millis() / 1000) as i64
}

fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return format!("t{}", Date::now().as_millis());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
