//! An SSE client for the hub's `/sse/{channel}`: `SseStream` reads a live HTTP answer chunk by
//! chunk (every read bounded by a deadline) and feeds `sse_parser::Parser`, so the tests see
//! the stream exactly as a browser's `EventSource` would, plus the raw bytes and heartbeats.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::api::{Api, Resp};
use crate::sse_parser::{is_heartbeat, Item, Parser, SseEvent};

/// HTTP for streams: like `api::client()` but without an overall timeout, which would cut a
/// long-lived stream; every read here is bounded by its caller's deadline instead.
fn stream_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    })
}

/// `/sse/{channel}` with an optional `since`.
pub fn sse_path(channel: &str, since: Option<u64>) -> String {
    match since {
        Some(s) => format!("/sse/{channel}?since={s}"),
        None => format!("/sse/{channel}"),
    }
}

/// A live event stream and the parser reading it.
pub struct SseStream {
    resp: reqwest::Response,
    pub parser: Parser,
    queue: VecDeque<Item>,
    ended: bool,
    /// Every byte received so far, for exact-wire assertions.
    pub raw: Vec<u8>,
    pub heartbeats: usize,
    pub opened: Instant,
    /// How many of `parser.id_only_blocks` `next_id_only_block` has handed out.
    id_blocks_taken: usize,
}

impl SseStream {
    /// Opens `path_and_query` with extra request headers. A non-200 answer comes back as `Err`,
    /// read whole, so a test can assert on the refusal.
    pub async fn open(api: &Api, path: &str, headers: &[(&str, &str)]) -> Result<SseStream, Resp> {
        let mut req = stream_client().get(format!("{}{path}", api.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let opened = Instant::now();
        let sent = tokio::time::timeout(Duration::from_secs(60), req.send()).await;
        let resp = match sent {
            Ok(Ok(r)) if r.status().as_u16() == 200 => r,
            Ok(Ok(r)) => {
                let status = r.status().as_u16();
                let headers = r.headers().clone();
                let body = tokio::time::timeout(Duration::from_secs(10), r.bytes()).await;
                let body = body.ok().and_then(Result::ok).unwrap_or_default().to_vec();
                return Err(Resp {
                    status,
                    headers,
                    body,
                });
            }
            Ok(Err(e)) => return Err(no_answer(format!("{e}"))),
            Err(_) => return Err(no_answer("no answer within 60 s".into())),
        };
        Ok(SseStream {
            resp,
            parser: Parser::default(),
            queue: VecDeque::new(),
            ended: false,
            raw: Vec::new(),
            heartbeats: 0,
            opened,
            id_blocks_taken: 0,
        })
    }

    /// Opens `/sse/{channel}[?since=]`, with a bearer token if given; panics on a refusal.
    pub async fn subscribe(
        api: &Api,
        channel: &str,
        since: Option<u64>,
        token: Option<&str>,
    ) -> SseStream {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        let path = sse_path(channel, since);
        match SseStream::open(api, &path, &headers).await {
            Ok(s) => s,
            Err(r) => panic!("GET {path}: {} {}", r.status, r.text()),
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let value = self.resp.headers().get(name)?;
        value.to_str().ok().map(str::to_string)
    }

    /// True once the server ended the stream (cleanly or not).
    pub fn ended(&self) -> bool {
        self.ended && self.queue.is_empty()
    }

    /// The next event or comment; `None` when `wait` passes first or the stream has ended.
    pub async fn next_item(&mut self, wait: Duration) -> Option<Item> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.ended || !self.pull(deadline).await {
                return None;
            }
        }
    }

    /// Reads one chunk into the parser and the queue; false when `deadline` passed first.
    async fn pull(&mut self, deadline: tokio::time::Instant) -> bool {
        match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
            Err(_) => return false,
            Ok(Ok(Some(bytes))) => {
                self.raw.extend_from_slice(&bytes);
                let items = self.parser.feed(&bytes);
                self.heartbeats += items.iter().filter(|i| is_heartbeat(i)).count();
                self.queue.extend(items);
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                self.parser.finish();
                self.ended = true;
            }
        }
        true
    }

    /// The `id:` of the next block that carried only an id (no data, so no event: it sets the
    /// last event id, as a multi-channel stream's opening block does), reading on if need be.
    /// Events read meanwhile stay queued for `next_item`. `None` on timeout or end of stream.
    pub async fn next_id_only_block(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(id) = self.parser.id_only_blocks.get(self.id_blocks_taken) {
                self.id_blocks_taken += 1;
                return Some(id.clone());
            }
            if self.ended || !self.pull(deadline).await {
                return None;
            }
        }
    }

    /// The next event, skipping comments; `None` on timeout or end of stream.
    pub async fn next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left).await? {
                Item::Event(e) => return Some(e),
                Item::Comment(_) => continue,
            }
        }
    }

    /// Events (gap notices included) until one with id `last` or above arrived, the stream
    /// ended, or `wait` passed.
    pub async fn events_through(&mut self, last: u64, wait: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while let Some(e) = self
            .next_event(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            let done = e.kind != "gap" && e.id().is_some_and(|id| id >= last);
            got.push(e);
            if done {
                break;
            }
        }
        got
    }

    /// Reads until the server ends the stream or `wait` passes; returns the events read.
    pub async fn read_to_end(&mut self, wait: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while !self.ended() && Instant::now() < deadline {
            if let Some(Item::Event(e)) = self
                .next_item(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                got.push(e);
            }
        }
        got
    }
}

fn no_answer(why: String) -> Resp {
    Resp {
        status: 0,
        headers: reqwest::header::HeaderMap::new(),
        body: format!("no answer: {why}").into_bytes(),
    }
}

/// The ids of real events (gap notices have none), in the order received.
pub fn event_ids(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.kind != "gap")
        .filter_map(SseEvent::id)
        .collect()
}
