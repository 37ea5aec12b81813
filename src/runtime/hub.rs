//! The `ChannelHub` Durable Object, one per channel: numbers and stores events in its SQLite log,
//! fans them out to its hibernatable subscribers, mirrors them to D1 in id order, and keeps the
//! log within retention. Its trait methods only dispatch; the rules live in `channel` and
//! `protocol`. The Worker reaches it through `Hub` (`client.rs`) with input already validated.

use super::alarm::{self, Alarm};
use super::http::{internal, json, log_failure, problem};
use super::log::{Batch, ChannelLog, Key, LogState, NewRow, Published, Recalled, KEY_TTL_MS};
use super::mirror;
use super::subscribers::{self, Attachment, FlowCheck, Join};
use crate::auth::Publisher;
use crate::channel::fanout::{Frames, Transport};
use crate::channel::flow::{self, Credit, Floor, Report};
use crate::channel::poll::StoredEvent;
use crate::channel::retention::Policy;
use crate::config::Config;
use crate::error::Error;
use crate::protocol::call::{BatchItem, Call};
use crate::protocol::envelope::format_time;
use crate::protocol::publish::{fingerprint, PublishLimits};
use crate::protocol::ws::{
    ack_frame, parse_client, ClientFrame, ClientPublish, CloseCode, Refusal, PING, PONG,
};
use crate::protocol::ChannelName;
use std::cell::Cell;
use std::rc::Rc;
use worker::wasm_bindgen;
use worker::{
    console_error, durable_object, Date, DurableObject, Env, Method, Request, Response, Result,
    State, WebSocket, WebSocketIncomingMessage,
};

/// An idempotency key and whose it is.
#[derive(Clone, Copy)]
struct Scoped<'a> {
    key: &'a str,
    publisher: Option<Publisher>,
}

impl Scoped<'_> {
    /// The key as stored: the same key from another publisher is another key.
    fn stored(&self) -> String {
        let publisher = self.publisher.map_or_else(String::new, |p| p.hex());
        format!("{publisher}/{}", self.key)
    }
}

/// What a commit gave: the ids and time, and whether it was a replay of an earlier publish.
struct Committed {
    published: Published,
    replayed: bool,
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
    /// True while a mirror catch-up runs; there is at most one, so D1 writes stay in id order.
    mirroring: Rc<Cell<bool>>,
    /// Consecutive failed catch-ups, for the retry backoff.
    mirror_failures: Rc<Cell<u32>>,
    alarm: Rc<Alarm>,
    /// A lower bound on every WebSocket's confirmed position (`channel::flow`).
    floor: Cell<Floor>,
    /// Settings, read once per instance: `[vars]` cannot change while it lives.
    config: Config,
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
        let hub = ChannelHub {
            state,
            env,
            log,
            instance: instance_id(),
            requests: Cell::new(0),
            mirroring: Rc::new(Cell::new(false)),
            mirror_failures: Rc::new(Cell::new(0)),
            alarm: Rc::new(Alarm::default()),
            floor: Cell::new(Floor::default()),
            config,
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
        let next_expiry = subscribers::close_expired(&self.state, now / 1000);
        let next_stall = subscribers::close_stalled(&self.state, now);
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
            Call::Subscribe {
                transport,
                cursor,
                publish,
                expires,
                publisher,
            } => {
                let attachment = Attachment::new(transport, publish, expires);
                self.subscribe(&channel, attachment, cursor, publisher)
                    .await
            }
        }
    }

    /// Stores a batch atomically (or finds the first answer for its idempotency key), then
    /// delivers it live and starts the mirror. Delivery comes after the store, in id order, and
    /// a publish never waits for D1. Each event is encoded once, before the store, which keeps
    /// its frame's stream position (`channel::flow`).
    fn commit(
        &self,
        channel: &ChannelName,
        items: Vec<BatchItem>,
        key: Option<Scoped<'_>>,
    ) -> std::result::Result<Committed, Error> {
        let log = self.log()?;
        let stored_key = key.map(|k| k.stored());
        let print = key.map(|_| {
            fingerprint(
                items
                    .iter()
                    .map(|i| (i.event_type.as_str(), i.data.as_str())),
            )
        });
        let key = stored_key
            .as_deref()
            .zip(print.as_deref())
            .map(|(key, fingerprint)| Key { key, fingerprint });
        if let Some(key) = &key {
            match log.recall(key).map_err(internal("reading a key"))? {
                Recalled::New => {}
                Recalled::Replayed(published) => {
                    return Ok(Committed {
                        published,
                        replayed: true,
                    })
                }
                Recalled::Conflict => return Err(Error::IdempotencyConflict),
            }
        }
        let now = Date::now().as_millis() as i64;
        let count = items.len() as u64;
        let first_write = !log.born();
        let (head, before) = log
            .state()
            .map_err(internal("reading the state"))?
            .map_or((0, 0), |s| (s.head, s.bytes));
        let stored: Vec<StoredEvent> = items
            .into_iter()
            .zip(head + 1..)
            .map(|(item, id)| StoredEvent {
                id,
                event_type: item.event_type,
                data: item.data,
                time_ms: now,
            })
            .collect();
        let frames = Frames::encode(channel, &stored);
        let (starts, end) = flow::starts(before, frames.ws.iter().map(String::len));
        let rows: Vec<NewRow<'_>> = stored
            .iter()
            .zip(starts)
            .map(|(e, start)| NewRow {
                event_type: &e.event_type,
                data: &e.data,
                start,
            })
            .collect();
        let batch = Batch {
            head,
            rows_json: serde_json::to_string(&rows)
                .map_err(|e| Error::Internal(format!("batch: {e}")))?,
            count,
            bytes: end,
            time_ms: now,
        };
        log.append(
            &self.state.storage(),
            channel.as_str(),
            batch,
            key,
            self.policy(),
        )
        .map_err(internal("storing events"))?;
        if first_write {
            // Subscribers of a channel without storage got no expiry alarm (it would have
            // stored one): close the expired now, before they are sent anything, and set it.
            if let Some(exp) = subscribers::close_expired(&self.state, now / 1000) {
                let (alarm, storage) = (self.alarm.clone(), self.state.storage());
                alarm::in_background(&self.state, async move {
                    alarm.at_most(&storage, exp as f64 * 1000.0).await
                });
            }
        }
        let check = FlowCheck {
            window: self.flow_window(),
            end,
            now_ms: now,
            floor: &self.floor,
            sent_after: &|cursor| log.time_after(cursor).ok().flatten(),
        };
        subscribers::fan_out(&self.state, &frames, check);
        self.start_mirror();
        self.schedule_upkeep();
        let published = Published {
            first_id: head + 1,
            count,
            time_ms: now,
        };
        Ok(Committed {
            published,
            replayed: false,
        })
    }

    fn flow_window(&self) -> u64 {
        self.config.slow_consumer_bytes as u64
    }

    /// A WebSocket client's `cursor` report: it has every event through `id`. Moves its credit
    /// forward; an id it was never sent is an error; a repeat changes nothing. A subscriber held
    /// by a paced replay (a WebSocket client, or an SSE bridge) is sent what its credit now
    /// allows; returns when it would stall if it is still held, for the alarm.
    fn socket_cursor(&self, ws: &WebSocket, id: u64) -> std::result::Result<Option<i64>, Error> {
        let Some(mut attachment) = Attachment::read(ws) else {
            return Ok(None);
        };
        if attachment.transport == Transport::Sse && attachment.sent.is_none() {
            // A live SSE bridge guards its own client; its reports change nothing here.
            return Ok(None);
        }
        let log = self.log()?;
        let state = log.state().map_err(internal("reading the state"))?;
        let head = state.as_ref().map_or(0, |s| s.head);
        let now = Date::now().as_millis() as i64;
        let credit = attachment.credit;
        let sent = attachment.sent.unwrap_or(head);
        let report = match credit {
            Some(c) => c.report(id, sent),
            None => Credit::new(0, 0, now).report(id, sent),
        };
        let moved = match report {
            Report::Ahead { sent } => {
                return Err(Error::bad_request(format!(
                    "cursor {id} is ahead of the last id you were sent ({sent}): report ids \
                     you have received"
                )))
            }
            Report::Stale if credit.is_some() => return Ok(None),
            Report::Advance(_) | Report::Stale => {
                let bytes = log.bytes_at(id).map_err(internal("reading a position"))?;
                if credit.is_none() {
                    self.floor.set(self.floor.get().joined(bytes));
                }
                Credit::new(id, bytes, now)
            }
        };
        attachment.credit = Some(moved);
        if let Some(sent) = attachment.sent {
            let channel = self.socket_channel(ws, state)?;
            let window = self.flow_window();
            subscribers::resume_replay(ws, log, &channel, sent, &mut attachment, window)?;
            if attachment.sent.is_some() {
                self.floor.set(self.floor.get().holding());
            }
        }
        ws.serialize_attachment(attachment)
            .map_err(internal("storing a cursor"))?;
        Ok(attachment.sent.map(|_| moved.stalls_at()))
    }

    /// A publish sent over a subscriber's own WebSocket: same validation and storage as HTTP.
    fn socket_publish(
        &self,
        ws: &WebSocket,
        publish: ClientPublish,
    ) -> std::result::Result<(), Refusal> {
        let reference = publish.reference.clone();
        let with_ref = |e: Error| Refusal::answering(e, reference.clone());
        let attachment = Attachment::read(ws);
        if attachment.is_some_and(|a| a.expired(Date::now().as_millis() as i64 / 1000)) {
            subscribers::close(ws, CloseCode::TokenExpired);
            return Ok(());
        }
        if !attachment.is_some_and(|a| a.publish) {
            return Err(with_ref(Error::Forbidden(
                "this socket's token may not publish here".into(),
            )));
        }
        let state = self
            .log()
            .and_then(|log| log.state().map_err(internal("reading the state")))
            .map_err(with_ref)?;
        let channel = self.socket_channel(ws, state).map_err(with_ref)?;
        let item = BatchItem {
            event_type: publish.event.event_type.as_str().to_string(),
            data: publish.event.data,
        };
        let publisher = subscribers::tagged(&self.state, ws).publisher;
        let key = publish
            .idempotency_key
            .as_deref()
            .map(|key| Scoped { key, publisher });
        let done = self.commit(&channel, vec![item], key).map_err(with_ref)?;
        let _ = ws.send_with_str(ack_frame(reference.as_deref(), done.published.first_id));
        Ok(())
    }

    /// The channel a socket was accepted for: its tag, or else (a socket accepted before
    /// tags) the name the log stored.
    fn socket_channel(
        &self,
        ws: &WebSocket,
        state: Option<LogState>,
    ) -> std::result::Result<ChannelName, Error> {
        subscribers::tagged(&self.state, ws)
            .channel
            .or_else(|| state.and_then(|s| ChannelName::parse(&s.channel).ok()))
            .ok_or_else(|| Error::Internal("socket on a channel without a name".into()))
    }

    /// Accepts a subscriber socket. Nothing is stored for it: a channel that never had an
    /// event stays without storage, and its expiry alarm waits for the first publish.
    async fn subscribe(
        &self,
        channel: &ChannelName,
        attachment: Attachment,
        cursor: Option<u64>,
        publisher: Option<Publisher>,
    ) -> std::result::Result<Response, Error> {
        let log = self.log()?;
        let exp = attachment.exp;
        let join = Join {
            channel,
            publisher,
            attachment,
            cursor,
            window: log.window().map_err(internal("reading the window"))?,
            flow_window: self.flow_window(),
            now_ms: Date::now().as_millis() as i64,
        };
        let accepted = subscribers::accept(&self.state, log, join, &self.floor)?;
        self.check_stall_at(accepted.stalls_at).await;
        let client = accepted.client;
        if let (Some(exp), true) = (exp, log.born()) {
            self.alarm
                .at_most(&self.state.storage(), exp as f64 * 1000.0)
                .await;
        }
        Response::from_websocket(client).map_err(internal("answering"))
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
                "sse": subscribers::sockets(&self.state, Transport::Sse).len(),
                "ws": subscribers::sockets(&self.state, Transport::Ws).len(),
            },
            "object": {"instance": self.instance, "requests": self.requests.get()},
        });
        json(200, body.to_string()).map_err(internal("answering"))
    }

    /// When the log next needs pruning: the oldest event's age-out or the oldest key's expiry.
    /// `None` when nothing is retained, so an idle empty channel keeps no alarm.
    fn next_upkeep(&self) -> Option<i64> {
        let (event, key) = self.log.as_ref()?.oldest().ok()?;
        let event = self.policy().next_expiry(event);
        let key = key.map(|t| t.saturating_add(KEY_TTL_MS));
        event.into_iter().chain(key).min()
    }

    /// Sets the alarm for when a client held by a paced replay would stall, if one is.
    async fn check_stall_at(&self, at_ms: Option<i64>) {
        if let Some(at) = at_ms {
            self.alarm.at_most(&self.state.storage(), at as f64).await;
        }
    }

    fn schedule_upkeep(&self) {
        let Some(at) = self.next_upkeep() else {
            return;
        };
        let (alarm, storage) = (self.alarm.clone(), self.state.storage());
        alarm::in_background(&self.state, async move {
            alarm.at_most(&storage, at as f64).await
        });
    }

    /// Starts a mirror catch-up unless one is running. It runs after the publish has been
    /// answered: a publish waits for the object's own storage, never for D1. A failure retries
    /// by alarm with backoff (1 s doubling to 60 s).
    fn start_mirror(&self) {
        let (Some(log), false) = (self.log.clone(), self.mirroring.get()) else {
            return;
        };
        let db = match self.env.d1(mirror::BINDING) {
            Ok(db) => db,
            Err(e) => return console_error!("edgehub: no D1 binding: {e}"),
        };
        let fault = self.config.fault_d1_writes;
        self.mirroring.set(true);
        let (mirroring, failures, alarm) = (
            self.mirroring.clone(),
            self.mirror_failures.clone(),
            self.alarm.clone(),
        );
        let storage = self.state.storage();
        alarm::in_background(&self.state, async move {
            match mirror::catch_up(&log, &db, fault).await {
                Ok(()) => failures.set(0),
                Err(e) => {
                    let n = failures.get().saturating_add(1);
                    failures.set(n);
                    let backoff = (1000.0 * 2f64.powi(n.min(7) as i32 - 1)).min(60_000.0);
                    console_error!("edgehub: mirroring to D1 failed ({n} in a row), retrying in {backoff} ms: {e}");
                    alarm
                        .at_most(&storage, Date::now().as_millis() as f64 + backoff)
                        .await;
                }
            }
            mirroring.set(false);
        });
    }
}

/// The answer to a publish: each event's id and time (200 for a retry answered by its key).
fn published(done: Committed) -> std::result::Result<Response, Error> {
    let p = done.published;
    let time = serde_json::to_string(&format_time(p.time_ms).unwrap_or_default())?;
    let first = p.first_id;
    let ids: Vec<String> = (first..first + p.count)
        .map(|id| format!("{{\"id\":{id},\"time\":{time}}}"))
        .collect();
    let status = if done.replayed { 200 } else { 201 };
    json(status, format!("{{\"events\":[{}]}}", ids.join(","))).map_err(internal("answering"))
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
