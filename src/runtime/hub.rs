//! The `ChannelHub` Durable Object, one per channel: numbers and stores events in its SQLite log
//! and mirrors them to D1 in id order. Its trait methods only dispatch; the rules live in
//! `channel` and `protocol`. The Worker reaches it through `Hub` with already validated input.

use super::http::{internal, json, problem};
use super::log::ChannelLog;
use super::mirror;
use crate::error::Error;
use crate::protocol::envelope::format_time;
use crate::protocol::ChannelName;
use std::cell::Cell;
use std::rc::Rc;
use worker::wasm_bindgen;
use worker::{
    console_error, durable_object, Date, DurableObject, Env, Method, Request, RequestInit,
    Response, Result, State, Stub,
};

const DO_BINDING: &str = "CHANNEL_HUB";
/// The channel's name travels with every internal request: the object learns it on first use.
const CHANNEL_HEADER: &str = "x-edgehub-channel";
const PATH_PUBLISH: &str = "/publish";
const PATH_INFO: &str = "/info";
/// Events per D1 write while the mirror catches up.
const MIRROR_BATCH: u64 = 500;
/// How long after a failed D1 write the alarm retries.
const MIRROR_RETRY_MS: i64 = 1000;

/// The Worker's handle on one channel's object.
pub struct Hub {
    stub: Stub,
    channel: ChannelName,
}

impl Hub {
    pub fn get(env: &Env, channel: &ChannelName) -> std::result::Result<Hub, Error> {
        let stub = env
            .durable_object(DO_BINDING)
            .and_then(|ns| ns.id_from_name(channel.as_str())?.get_stub())
            .map_err(internal("reaching the channel object"))?;
        Ok(Hub {
            stub,
            channel: channel.clone(),
        })
    }

    /// Stores a validated batch (`[{"type","data"}]`, data as a string of compact JSON).
    pub async fn publish(&self, batch_json: String) -> std::result::Result<Response, Error> {
        self.call(Method::Post, PATH_PUBLISH, Some(batch_json))
            .await
    }

    pub async fn info(&self) -> std::result::Result<Response, Error> {
        self.call(Method::Get, PATH_INFO, None).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> std::result::Result<Response, Error> {
        let headers = worker::Headers::new();
        headers
            .set(CHANNEL_HEADER, self.channel.as_str())
            .map_err(internal("building a hub request"))?;
        let mut init = RequestInit::new();
        init.with_method(method).with_headers(headers);
        if let Some(body) = body {
            init.with_body(Some(body.into()));
        }
        let req = Request::new_with_init(&format!("https://hub{path}"), &init)
            .map_err(internal("building a hub request"))?;
        self.stub
            .fetch_with_request(req)
            .await
            .map_err(|e| Error::Unavailable(format!("channel object: {e}")))
    }
}

#[durable_object]
pub struct ChannelHub {
    state: State,
    env: Env,
    log: Option<ChannelLog>,
    /// Made when this instance is loaded: shows evictions from memory.
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
        self.start_mirror();
        Response::empty()
    }
}

impl ChannelHub {
    async fn dispatch(&self, mut req: Request) -> std::result::Result<Response, Error> {
        let log = self
            .log
            .as_ref()
            .ok_or_else(|| Error::Internal("the channel log did not open".into()))?;
        let channel = req
            .headers()
            .get(CHANNEL_HEADER)
            .ok()
            .flatten()
            .ok_or_else(|| Error::bad_request("internal request without a channel"))?;
        let channel = ChannelName::parse(&channel)?;
        match (req.method(), req.path().as_str()) {
            (Method::Post, PATH_PUBLISH) => {
                let batch = req.text().await.map_err(internal("reading a batch"))?;
                self.publish(log, &channel, batch)
            }
            (Method::Get, PATH_INFO) => self.info(log, &channel),
            _ => Err(Error::NotFound),
        }
    }

    fn publish(
        &self,
        log: &ChannelLog,
        channel: &ChannelName,
        batch: String,
    ) -> std::result::Result<Response, Error> {
        let count: Vec<serde::de::IgnoredAny> =
            serde_json::from_str(&batch).map_err(|e| Error::Internal(format!("batch: {e}")))?;
        let count = count.len() as u64;
        let now = Date::now().as_millis() as i64;
        let first = log
            .append(&self.state.storage(), channel.as_str(), batch, count, now)
            .map_err(internal("storing events"))?;
        let time = serde_json::to_string(&format_time(now).unwrap_or_default())?;
        let ids: Vec<String> = (first..first + count)
            .map(|id| format!("{{\"id\":{id},\"time\":{time}}}"))
            .collect();
        self.start_mirror();
        json(201, format!("{{\"events\":[{}]}}", ids.join(","))).map_err(internal("answering"))
    }

    fn info(
        &self,
        log: &ChannelLog,
        channel: &ChannelName,
    ) -> std::result::Result<Response, Error> {
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
            "subscribers": {"sse": 0, "ws": 0},
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
        self.state.wait_until(async move {
            if let Err(e) = pump(&log, &db).await {
                console_error!("edgehub: mirroring to D1 failed, retrying by alarm: {e}");
                if let Err(e) = storage.set_alarm(MIRROR_RETRY_MS).await {
                    console_error!("edgehub: setting the mirror alarm: {e}");
                }
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

fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return format!("t{}", Date::now().as_millis());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
