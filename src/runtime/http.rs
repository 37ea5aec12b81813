//! Response helpers and body reading: the one place an `Error` becomes a problem response, and
//! the size checks made while a body is read.

use crate::error::{Error, PROBLEM_CONTENT_TYPE};
use crate::protocol::route::split_url;
use worker::js_sys::{Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::ReadableStreamDefaultReader;
use worker::{console_error, Headers, Response, Url};

pub const JSON: &str = "application/json";

/// A request as the Worker receives it, read without its `cf` properties: the worker crate's
/// `Request` reads them on every request it wraps, and that one getter cost about 0.25 ms of the
/// isolate's time per request under `wrangler dev` (a CPU profile of 2,000 publishes: 6.6 % of
/// it), for properties the hub never uses.
pub struct Inbound(worker::web_sys::Request);

impl Inbound {
    pub fn new(req: worker::web_sys::Request) -> Inbound {
        Inbound(req)
    }

    pub fn headers(&self) -> Headers {
        Headers(self.0.headers())
    }

    /// The method as sent (the worker crate reads every method it does not know as GET).
    pub fn method(&self) -> String {
        self.0.method()
    }

    pub fn url(&self) -> Result<Url, Error> {
        Url::parse(&self.0.url()).map_err(|_| Error::bad_request("unreadable URL"))
    }

    /// Its origin, path and query, cut from the serialized URL (`split_url`) or, for one that
    /// is not plain, parsed in full.
    pub fn target(&self) -> Result<Target, Error> {
        let raw = self.0.url();
        if let Some((origin, path, query)) = split_url(&raw) {
            return Ok(Target {
                origin: origin.to_string(),
                path: path.to_string(),
                query: query.to_string(),
            });
        }
        let url = Url::parse(&raw).map_err(|_| Error::bad_request("unreadable URL"))?;
        Ok(Target {
            origin: url.origin().ascii_serialization(),
            path: url.path().to_string(),
            query: url.query().unwrap_or("").to_string(),
        })
    }
}

/// Where a request goes: its URL's origin, path and query (both still percent-encoded).
pub struct Target {
    pub origin: String,
    pub path: String,
    pub query: String,
}

/// Builds a response with a fixed body; header values here are our own, never client input.
pub fn respond(status: u16, content_type: &str, body: String) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", content_type)?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::from_bytes(body.into_bytes())?
        .with_status(status)
        .with_headers(headers))
}

pub fn json(status: u16, body: String) -> worker::Result<Response> {
    respond(status, JSON, body)
}

/// The single conversion of an `Error` into an RFC 9457 response; internal details are never
/// sent (the edge logs them first: `log_failure`).
pub fn problem(err: &Error) -> Response {
    let body = serde_json::to_string(&err.problem()).unwrap_or_default();
    let built = respond(err.status(), PROBLEM_CONTENT_TYPE, body).and_then(|r| {
        for (name, value) in err.headers() {
            r.headers().set(name, &value)?;
        }
        Ok(r)
    });
    built.unwrap_or_else(|_| Response::builder().with_status(500).empty())
}

/// Logs a failure that is ours, not the client's (internal errors, dependencies that did not
/// answer), with its internal detail; called at the edges, where a failure leaves the hub as an
/// answer or an error frame. Nothing about tokens is ever in an `Error`.
pub fn log_failure(err: &Error) {
    if let Some(detail) = err.log_detail() {
        console_error!("edgehub {}: {}", err.code(), detail);
    }
}

/// A worker-level failure (a JS exception from a binding) as our internal error.
pub fn internal(context: &str) -> impl Fn(worker::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{context}: {e}"))
}

/// How much of a refused body is read and dropped before the answer, so that an HTTP/1.1
/// connection (and a proxy in front, such as `wrangler dev`'s) sees the request end normally.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;

/// The body as bytes, read as a stream and refused with 413 at the first chunk that takes it
/// over `max` (or before reading, when `Content-Length` already says so): a hostile body never
/// costs more than `max` plus one chunk of memory.
pub async fn read_body(req: &Inbound, max: usize) -> Result<Vec<u8>, Error> {
    let too_large = || Error::TooLarge(format!("the request body may be at most {max} bytes"));
    let declared = req.headers().get("content-length").ok().flatten();
    if let Some(len) = declared.and_then(|v| v.trim().parse::<u64>().ok()) {
        if len > max as u64 {
            return Err(too_large());
        }
    }
    let Some(stream) = req.0.body() else {
        return Ok(Vec::new());
    };
    // A body that cannot be read (cut off, a broken chunk) is the client's fault.
    let unreadable = |_| Error::bad_request("the request body could not be read to its end");
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    let mut body = Vec::new();
    let mut refused = false;
    let mut read = 0usize;
    loop {
        let chunk = JsFuture::from(reader.read()).await.map_err(unreadable)?;
        let done = Reflect::get(&chunk, &JsValue::from_str("done")).map_err(unreadable)?;
        if done.as_bool().unwrap_or(true) {
            return if refused { Err(too_large()) } else { Ok(body) };
        }
        let value = Reflect::get(&chunk, &JsValue::from_str("value")).map_err(unreadable)?;
        let bytes = Uint8Array::new(&value);
        read = read.saturating_add(bytes.length() as usize);
        if read > max {
            refused = true;
            body = Vec::new();
            if read > DRAIN_BYTES {
                return Err(too_large());
            }
            continue;
        }
        body.extend_from_slice(&bytes.to_vec());
    }
}

/// True for `application/json`, with or without parameters such as `charset`.
pub fn is_json(req: &Inbound) -> bool {
    req.headers()
        .get("content-type")
        .ok()
        .flatten()
        .and_then(|v| {
            v.split(';')
                .next()
                .map(|m| m.trim().eq_ignore_ascii_case(JSON))
        })
        .unwrap_or(false)
}
