//! The Mercure client of scenario 7, as Mercure's own clients speak to the hub
//! (docs/mercure.md): a publish is a form with Mercure's development token; a subscriber is an
//! anonymous 0.x `GET /.well-known/mercure?topic=…` read as `EventSource` reads it.

use std::collections::VecDeque;
use std::time::Duration;

use crate::client;

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
const MERCURE_PATH: &str = "/.well-known/mercure";
const FORM: &str = "application/x-www-form-urlencoded";
/// Mercure's well-known development token: HS256 over `{"alg":"HS256","typ":"JWT"}` and
/// `{"mercure":{"publish":["*"],"subscribe":["*"]}}` with `runtime::MERCURE_KEY`, no `exp`
/// (the hub's own verifier accepts it: see the tests).
const MERCURE_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                             eyJtZXJjdXJlIjp7InB1Ymxpc2giOlsiKiJdLCJzdWJzY3JpYmUiOlsiKiJdfX0.\
                             nINXJPMGL7u4vvquYYm3zgMosrqrxTSooTs7R_OJLZA";

/// `POST /.well-known/mercure` with a ready form and the development token: the update's id,
/// from the answer (200, `text/plain`).
pub async fn publish(base: &str, form: String) -> Result<String, String> {
    let r = client::http()
        .post(format!("{base}{MERCURE_PATH}"))
        .header("authorization", format!("Bearer {MERCURE_TOKEN}"))
        .header("content-type", FORM)
        .body(form)
        .send()
        .await
        .map_err(|e| format!("Mercure publish: {e}"))?;
    let status = r.status().as_u16();
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("Mercure publish: {e}"))?;
    let text = String::from_utf8_lossy(&body).trim().to_string();
    match status {
        200 => Ok(text),
        s => Err(format!("Mercure publish: {s} {text}")),
    }
}

/// One Mercure update as a subscriber reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Update {
    pub id: String,
    pub data: String,
}

/// An anonymous Mercure 0.x subscriber (`GET /.well-known/mercure?topic=…`), read as
/// `EventSource` reads it: blocks at blank lines (the hub ends lines with LF), `id:` and
/// `data:` fields, comments skipped. Every read is bounded by the caller's deadline.
pub struct MercureSub {
    resp: reqwest::Response,
    pending: Vec<u8>,
    queue: VecDeque<Update>,
}

impl MercureSub {
    pub async fn open(base: &str, topic: &str) -> Result<MercureSub, String> {
        let url = format!("{base}{MERCURE_PATH}?topic={}", client::encode(topic));
        let req = client::streams()
            .get(&url)
            .header("accept", "text/event-stream");
        let resp = match tokio::time::timeout(OPEN_TIMEOUT, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("GET {url}: {e}")),
            Err(_) => return Err(format!("GET {url}: no answer within {OPEN_TIMEOUT:?}")),
        };
        if resp.status().as_u16() != 200 {
            return Err(format!("GET {url}: {}", resp.status()));
        }
        Ok(MercureSub {
            resp,
            pending: Vec::new(),
            queue: VecDeque::new(),
        })
    }

    /// The next update; `Ok(None)` when the deadline passes first.
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> Result<Option<Update>, String> {
        loop {
            if let Some(u) = self.queue.pop_front() {
                return Ok(Some(u));
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return Ok(None),
                Ok(Ok(Some(bytes))) => self.feed(&bytes),
                Ok(Ok(None)) => return Err("the Mercure stream ended".into()),
                Ok(Err(e)) => return Err(format!("reading the Mercure stream: {e}")),
            }
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.pending.drain(..end + 2).collect();
            self.queue
                .extend(parse_update(&String::from_utf8_lossy(&block)));
        }
    }
}

/// One SSE block to an update: its `id:` and its `data:` lines joined with LF, as `EventSource`
/// joins them; `None` for a block without data (comments, a lone `retry:`).
fn parse_update(block: &str) -> Option<Update> {
    let (mut id, mut data) = (String::new(), None::<Vec<&str>>);
    for line in block.lines() {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "id" => id = value.to_string(),
            "data" => data.get_or_insert_with(Vec::new).push(value),
            _ => {}
        }
    }
    data.map(|lines| Update {
        id,
        data: lines.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgehub::auth::mercure::{verify, MercureKeys};

    #[test]
    fn the_development_token_verifies_with_the_hubs_key_and_may_publish_anything() {
        let key = crate::runtime::MERCURE_KEY.as_bytes().to_vec();
        let keys = MercureKeys {
            publisher: key.clone(),
            subscriber: key.clone(),
            audience: String::new(),
            issuer: String::new(),
        };
        let grant = verify(MERCURE_TOKEN, &key, &keys, 1_800_000_000).unwrap();
        assert!(!grant.v1);
        assert!(grant.may_publish(
            &["https://bench.example/g/7/items/7".to_string()],
            |_, _| false
        ));
    }

    #[test]
    fn sse_blocks_become_updates_and_comments_are_skipped() {
        assert_eq!(
            parse_update("event: x\nretry: 5\nid: a-1\ndata: 7\ndata:\ndata:  two\n\n"),
            Some(Update {
                id: "a-1".into(),
                data: "7\n\n two".into()
            })
        );
        assert_eq!(parse_update(": heartbeat\n\n"), None);
        assert_eq!(parse_update("retry: 2000\n\n"), None);
    }
}
