//! The Worker's handle on one channel's object (`Hub`): every call is an internal HTTP request
//! carrying the channel name and input the Worker has already validated and authorised.

use super::access::Access;
use super::http::internal;
use super::hub::{
    BatchItem, CHANNEL_HEADER, EXPIRES_HEADER, KEY_HEADER, PATH_INFO, PATH_PUBLISH, PATH_PURGE,
    PATH_SUBSCRIBE, PUBLISHER_HEADER, PUBLISH_HEADER,
};
use crate::auth::Publisher;
use crate::channel::fanout::Transport;
use crate::error::Error;
use crate::protocol::publish::NewEvent;
use crate::protocol::ChannelName;
use worker::{Env, Headers, Method, Request, RequestInit, Response, Stub};

const DO_BINDING: &str = "CHANNEL_HUB";

pub struct Hub {
    stub: Stub,
    channel: ChannelName,
}

impl Hub {
    pub fn get(env: &Env, channel: &ChannelName) -> Result<Hub, Error> {
        let stub = env
            .durable_object(DO_BINDING)
            .and_then(|ns| ns.id_from_name(channel.as_str())?.get_stub())
            .map_err(internal("reaching the channel object"))?;
        Ok(Hub {
            stub,
            channel: channel.clone(),
        })
    }

    /// Stores a validated batch; the answer is the object's 201 (or its problem). An
    /// idempotency key is `publisher`'s own.
    pub async fn publish(
        &self,
        events: &[NewEvent],
        key: Option<&str>,
        publisher: Option<Publisher>,
    ) -> Result<Response, Error> {
        let items: Vec<BatchItem> = events
            .iter()
            .map(|e| BatchItem {
                event_type: e.event_type.as_str().to_string(),
                data: e.data.clone(),
            })
            .collect();
        let body = serde_json::to_string(&items)
            .map_err(|e| Error::Internal(format!("encoding a batch: {e}")))?;
        let headers = Headers::new();
        if let Some(key) = key {
            headers
                .set(KEY_HEADER, key)
                .map_err(internal("building a publish"))?;
        }
        if let Some(publisher) = publisher {
            headers
                .set(PUBLISHER_HEADER, &publisher.hex())
                .map_err(internal("building a publish"))?;
        }
        self.call(Method::Post, PATH_PUBLISH, headers, Some(body))
            .await
    }

    /// Drops the retained history; ids are not reused.
    pub async fn purge(&self) -> Result<Response, Error> {
        self.call(Method::Post, PATH_PURGE, Headers::new(), None)
            .await
    }

    pub async fn info(&self) -> Result<Response, Error> {
        self.call(Method::Get, PATH_INFO, Headers::new(), None)
            .await
    }

    /// Opens a subscriber socket on the object: the answer is a 101 carrying the client end.
    pub async fn subscribe(
        &self,
        transport: Transport,
        cursor: Option<u64>,
        access: Access,
    ) -> Result<Response, Error> {
        let headers = Headers::new();
        let set = |name: &str, value: &str| {
            headers
                .set(name, value)
                .map_err(internal("building a subscribe"))
        };
        set("upgrade", "websocket")?;
        set(PUBLISH_HEADER, if access.publish { "1" } else { "0" })?;
        if let (true, Some(publisher)) = (access.publish, access.publisher) {
            set(PUBLISHER_HEADER, &publisher.hex())?;
        }
        if let Some(exp) = access.expires {
            set(EXPIRES_HEADER, &exp.to_string())?;
        }
        let since = cursor.map_or_else(String::new, |c| format!("&since={c}"));
        let path = format!("{PATH_SUBSCRIBE}?transport={}{since}", transport.tag());
        self.call(Method::Get, &path, headers, None).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: Headers,
        body: Option<String>,
    ) -> Result<Response, Error> {
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
