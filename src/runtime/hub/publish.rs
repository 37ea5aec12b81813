//! Publishing on the channel's object: an HTTP publish (decoded in `mod.rs`) or a socket's
//! `publish` frame is committed here: the idempotency key recalled, the batch encoded once and
//! stored in one transaction, then fanned out live and mirrored in the background.

use super::super::alarm;
use super::super::http::{internal, json};
use super::super::log::{Batch, ChannelLog, Key, NewRow, Published, Recalled};
use super::super::subscribers::{self, FlowCheck};
use super::ChannelHub;
use crate::auth::Publisher;
use crate::channel::fanout::Frames;
use crate::channel::flow;
use crate::channel::poll::StoredEvent;
use crate::error::Error;
use crate::protocol::call::BatchItem;
use crate::protocol::envelope::format_time;
use crate::protocol::publish::fingerprint;
use crate::protocol::topics::Topics;
use crate::protocol::update::UpdateMeta;
use crate::protocol::ws::{ack_frame, ClientPublish, CloseCode, Refusal};
use crate::protocol::ChannelName;
use worker::{Date, Response, WebSocket};

/// An idempotency key and whose it is.
#[derive(Clone, Copy)]
pub(super) struct Scoped<'a> {
    pub key: &'a str,
    pub publisher: Option<Publisher>,
}

impl Scoped<'_> {
    /// The key as stored: the same key from another publisher is another key.
    fn stored(&self) -> String {
        let publisher = self.publisher.map_or_else(String::new, |p| p.hex());
        format!("{publisher}/{}", self.key)
    }
}

/// What a commit gave: the ids and time, and whether it was a replay of an earlier publish.
pub(super) struct Committed {
    published: Published,
    replayed: bool,
}

impl ChannelHub {
    /// Stores a batch atomically (or finds the first answer for its idempotency key), then
    /// delivers it live and starts the mirror. Delivery comes after the store, in id order, and
    /// a publish never waits for D1. Each event is encoded once, before the store, which keeps
    /// its frame's stream position (`channel::flow`).
    pub(super) fn commit(
        &self,
        channel: &ChannelName,
        items: Vec<BatchItem>,
        key: Option<Scoped<'_>>,
    ) -> Result<Committed, Error> {
        let log = self.log()?;
        let stored_key = key.map(|k| k.stored());
        let print = key.map(|_| {
            fingerprint(
                items
                    .iter()
                    .map(|i| (i.event_type.as_str(), i.data.as_str(), i.topics.as_ref())),
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
        let first_write = !log.born();
        let (head, before) = log
            .state()
            .map_err(internal("reading the state"))?
            .map_or((0, 0), |s| (s.head, s.bytes));
        let (frames, batch) = prepare(channel, items, head, before, now)?;
        let (end, count) = (batch.bytes, batch.count);
        log.append(
            &self.state.storage(),
            channel.as_str(),
            batch,
            key,
            self.policy(),
        )
        .map_err(internal("storing events"))?;
        self.deliver(log, &frames, (head + count, end), now, first_write);
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

    /// After a commit: sends the frames to every live subscriber, then starts the mirror and
    /// the upkeep alarm. On a channel's first write, subscribers that joined before it had
    /// storage got no expiry alarm (it would have stored one): the expired are closed now,
    /// before they are sent anything, and the alarm is set.
    /// `(head, end)`: the new head and the stream position after its event frame.
    fn deliver(
        &self,
        log: &ChannelLog,
        frames: &Frames,
        (head, end): (u64, u64),
        now: i64,
        first_write: bool,
    ) {
        if first_write {
            if let Some(exp) = subscribers::close_expired(&self.state, &self.presence, now / 1000) {
                let (alarm, storage) = (self.alarm.clone(), self.state.storage());
                alarm::in_background(self.state.as_raw(), async move {
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
            matched_after: &|cursor, filter| log.time_after_matching(cursor, filter).ok().flatten(),
            head,
        };
        subscribers::fan_out(&self.state, &self.presence, &self.filters, frames, check);
        self.start_mirror();
        self.schedule_upkeep();
    }

    /// A publish sent over a subscriber's own WebSocket: same validation and storage as HTTP.
    pub(super) fn socket_publish(
        &self,
        ws: &WebSocket,
        publish: ClientPublish,
    ) -> Result<(), Refusal> {
        let reference = publish.reference.clone();
        let with_ref = |e: Error| Refusal::answering(e, reference.clone());
        let attachment = subscribers::attachment(ws);
        if attachment
            .as_ref()
            .is_some_and(|a| a.expired(Date::now().as_millis() as i64 / 1000))
        {
            self.presence.close(ws, CloseCode::TokenExpired);
            return Ok(());
        }
        if !attachment.as_ref().is_some_and(|a| a.publish) {
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
            topics: publish.event.topics,
            update: None,
        };
        let publisher = subscribers::tagged(self.state.as_raw(), ws).publisher;
        let key = publish
            .idempotency_key
            .as_deref()
            .map(|key| Scoped { key, publisher });
        let done = self.commit(&channel, vec![item], key).map_err(with_ref)?;
        let _ = ws.send_with_str(ack_frame(reference.as_deref(), done.published.first_id));
        Ok(())
    }
}

/// Numbers `items` after `head`, encodes them once for both transports, and lays out the rows
/// the log stores, each with its frame's stream position from `before` on.
fn prepare(
    channel: &ChannelName,
    items: Vec<BatchItem>,
    head: u64,
    before: u64,
    now: i64,
) -> Result<(Frames, Batch), Error> {
    let count = items.len() as u64;
    let stored: Vec<StoredEvent> = items
        .into_iter()
        .zip(head + 1..)
        .map(|(item, id)| StoredEvent {
            id,
            event_type: item.event_type,
            data: item.data,
            time_ms: now,
            topics: item.topics,
            update: item.update,
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
            topics: e.topics.as_ref().map(Topics::to_json),
            mid: e.update.as_ref().map(|u| u.id.as_str()),
            meta: e.update.as_ref().map(UpdateMeta::to_json),
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
    Ok((frames, batch))
}

/// The answer to a publish: each event's id and time (200 for a retry answered by its key).
pub(super) fn published(done: Committed) -> Result<Response, Error> {
    let p = done.published;
    let time = serde_json::to_string(&format_time(p.time_ms).unwrap_or_default())?;
    let first = p.first_id;
    let ids: Vec<String> = (first..first + p.count)
        .map(|id| format!("{{\"id\":{id},\"time\":{time}}}"))
        .collect();
    let status = if done.replayed { 200 } else { 201 };
    json(status, format!("{{\"events\":[{}]}}", ids.join(","))).map_err(internal("answering"))
}
