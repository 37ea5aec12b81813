//! The Worker's handle on one channel's object (`Hub`): every call is a `protocol::call::Call`,
//! encoded there and sent as an internal HTTP request carrying the channel name and input the
//! Worker has already validated and authorised.

use super::access::Access;
use super::http::internal;
use crate::auth::Publisher;
use crate::channel::fanout::Transport;
use crate::error::Error;
use crate::protocol::call::{BatchItem, Call};
use crate::protocol::filter::FilterSpec;
use crate::protocol::presence::Entrant;
use crate::protocol::publish::NewEvent;
use crate::protocol::ChannelName;
use worker::js_sys::{Function, Promise, Reflect};
use worker::wasm_bindgen::{JsCast, JsValue};
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
        let items = events
            .iter()
            .map(|e| BatchItem {
                event_type: e.event_type.as_str().to_string(),
                data: e.data.clone(),
                topics: e.topics.clone(),
                update: None,
            })
            .collect();
        self.call(Call::Publish {
            items,
            key: key.map(str::to_string),
            publisher,
        })
        .await
    }

    /// Drops the retained history; ids are not reused.
    pub async fn purge(&self) -> Result<Response, Error> {
        self.call(Call::Purge).await
    }

    pub async fn info(&self) -> Result<Response, Error> {
        self.call(Call::Info).await
    }

    /// Opens a subscriber socket on the object, entering `member` into the channel's presence:
    /// the answer is a 101 carrying the client end.
    pub async fn subscribe(
        &self,
        transport: Transport,
        cursor: Option<u64>,
        access: Access,
        member: Option<Entrant>,
        filter: Option<FilterSpec>,
    ) -> Result<Response, Error> {
        self.call(Call::Subscribe {
            transport,
            cursor,
            publish: access.publish,
            expires: access.expires,
            publisher: access.publisher,
            member,
            filter,
            resume: None,
            shared: false,
        })
        .await
    }

    /// Opens a socket that may come to be its isolate's shared upstream (a many-channel lane:
    /// `runtime::stream::shared`): it carries no publishing right and no expiry (its clients'
    /// own connections end at theirs), and it may report how many clients it carries.
    pub async fn subscribe_shared(
        &self,
        transport: Transport,
        cursor: Option<u64>,
    ) -> Result<Response, Error> {
        self.call(shared_subscribe(transport, cursor)).await
    }

    /// Opens a Mercure subscriber's bridge socket: updates `filter` lets through, framed as
    /// Mercure updates, after the update with id `resume` if given (the answer's
    /// `RESUMED_HEADER` says where it starts).
    pub async fn subscribe_mercure(
        &self,
        access: Access,
        filter: FilterSpec,
        resume: Option<String>,
    ) -> Result<Response, Error> {
        self.call(Call::Subscribe {
            transport: Transport::Sse,
            cursor: None,
            publish: false,
            expires: access.expires,
            publisher: None,
            member: None,
            filter: Some(filter),
            resume,
            shared: false,
        })
        .await
    }

    /// Stores a Mercure update (one event, already validated and authorised).
    pub async fn publish_update(&self, item: BatchItem) -> Result<Response, Error> {
        self.call(Call::Publish {
            items: vec![item],
            key: None,
            publisher: None,
        })
        .await
    }

    /// `GET /channels/{c}/presence`.
    pub async fn presence(&self) -> Result<Response, Error> {
        self.call(Call::Presence).await
    }

    /// Starts subscribing an isolate's shared upstream (`runtime::tap`, or the lanes' one in
    /// `runtime::stream::shared`) from `cursor`, at once: the call is made before this
    /// returns, so it belongs to the request running now, which alone may then use its socket.
    /// The promise resolves to the object's answer.
    pub fn start_shared(self, transport: Transport, cursor: u64) -> Result<Promise, Error> {
        let req = self.request(&shared_subscribe(transport, Some(cursor)))?;
        let failed = |e: JsValue| Error::Unavailable(format!("channel object: {e:?}"));
        let stub: JsValue = self.stub.into_rpc();
        let fetch: Function = Reflect::get(&stub, &JsValue::from_str("fetch"))
            .map_err(failed)?
            .dyn_into()
            .map_err(failed)?;
        fetch
            .call1(&stub, req.inner())
            .map_err(failed)?
            .dyn_into()
            .map_err(failed)
    }

    async fn call(&self, call: Call) -> Result<Response, Error> {
        let req = self.request(&call)?;
        self.stub
            .fetch_with_request(req)
            .await
            .map_err(|e| Error::Unavailable(format!("channel object: {e}")))
    }

    fn request(&self, call: &Call) -> Result<Request, Error> {
        let encoded = call.encode(&self.channel)?;
        let failed = internal("building a hub request");
        let headers = Headers::new();
        for (name, value) in &encoded.headers {
            headers.set(name, value).map_err(&failed)?;
        }
        if matches!(call, Call::Subscribe { .. }) {
            headers.set("upgrade", "websocket").map_err(&failed)?;
        }
        let mut init = RequestInit::new();
        let method = if encoded.post {
            Method::Post
        } else {
            Method::Get
        };
        init.with_method(method).with_headers(headers);
        if let Some(body) = encoded.body {
            init.with_body(Some(body.into()));
        }
        Request::new_with_init(&format!("https://hub{}", encoded.path), &init).map_err(failed)
    }
}

/// The subscribe of a shared upstream: no publishing right, no expiry, no presence, no filter.
fn shared_subscribe(transport: Transport, cursor: Option<u64>) -> Call {
    Call::Subscribe {
        transport,
        cursor,
        publish: false,
        expires: None,
        publisher: None,
        member: None,
        filter: None,
        resume: None,
        shared: true,
    }
}
