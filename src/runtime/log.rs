//! The channel's event log in its Durable Object's SQLite storage: the source of truth. One
//! `state` row holds the channel name, the last id given (`head`) and how far the D1 mirror got
//! (`mirrored`, and the `earliest` it last wrote). Idempotency keys live beside the events.
//! Appends run in one `transactionSync`, so a batch, its key and its pruning commit together.

use crate::channel::poll::StoredEvent;
use crate::channel::retention::Policy;
use crate::channel::Window;
use serde::Deserialize;
use std::cell::RefCell;
use std::rc::Rc;
use worker::js_sys::{Function, Reflect};
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{SqlStorage, SqlStorageValue, Storage};

/// How long an idempotency key is remembered: a retry within this time gets the first answer.
pub const KEY_TTL_MS: i64 = 24 * 3600 * 1000;

const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, \
     data TEXT NOT NULL, time_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), \
     channel TEXT NOT NULL, head INTEGER NOT NULL, mirrored INTEGER NOT NULL, \
     mirrored_earliest INTEGER NOT NULL DEFAULT 1)",
    "CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, \
     first_id INTEGER NOT NULL, count INTEGER NOT NULL, time_ms INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS idempotency_time ON idempotency (time_ms)",
];

/// `?1` is the new head's predecessor, `?2` the time, `?3` a JSON array of
/// `{"type", "data"}` with `data` as a string of compact JSON: one statement for any batch.
const INSERT_BATCH: &str = "INSERT INTO events (seq, type, data, time_ms) \
     SELECT ?1 + key + 1, json_extract(value, '$.type'), json_extract(value, '$.data'), ?2 \
     FROM json_each(?3)";

#[derive(Debug, Clone, Deserialize)]
pub struct LogState {
    pub channel: String,
    pub head: f64,
    pub mirrored: f64,
    pub mirrored_earliest: f64,
}

/// A stored publish, as an idempotency key remembers it.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Published {
    pub first_id: f64,
    pub count: f64,
    pub time_ms: f64,
}

/// What an append did.
pub enum Appended {
    /// Stored as ids `first..first + count`.
    New { first: u64 },
    /// The key was seen with the same body: nothing stored, here is the first answer.
    Replayed(Published),
    /// The key was seen with another body.
    Conflict,
}

/// An idempotency key and the fingerprint of the body it came with.
pub struct Key<'a> {
    pub key: &'a str,
    pub fingerprint: &'a str,
}

#[derive(Deserialize)]
struct Row {
    seq: f64,
    #[serde(rename = "type")]
    event_type: String,
    data: String,
    time_ms: f64,
}

#[derive(Deserialize)]
struct Oldest {
    value: Option<f64>,
}

#[derive(Deserialize)]
struct Fingerprinted {
    fingerprint: String,
    first_id: f64,
    count: f64,
    time_ms: f64,
}

#[derive(Clone)]
pub struct ChannelLog {
    sql: SqlStorage,
}

fn int(n: u64) -> SqlStorageValue {
    SqlStorageValue::Integer(n as i64)
}

impl ChannelLog {
    pub fn open(storage: &Storage) -> worker::Result<Self> {
        let sql = storage.sql();
        for statement in SCHEMA {
            sql.exec(statement, None)?;
        }
        Ok(ChannelLog { sql })
    }

    pub fn state(&self) -> worker::Result<Option<LogState>> {
        let rows: Vec<LogState> = self
            .sql
            .exec(
                "SELECT channel, head, mirrored, mirrored_earliest FROM state WHERE id = 1",
                None,
            )?
            .to_array()?;
        Ok(rows.into_iter().next())
    }

    fn single(&self, query: &str) -> worker::Result<Option<f64>> {
        let rows: Vec<Oldest> = self.sql.exec(query, None)?.to_array()?;
        Ok(rows.into_iter().next().and_then(|r| r.value))
    }

    pub fn window(&self) -> worker::Result<Window> {
        let head = self.state()?.map_or(0, |s| s.head as u64);
        let earliest = self.single("SELECT min(seq) AS value FROM events")?;
        Ok(Window {
            head,
            earliest: earliest.map_or(head + 1, |e| e as u64),
        })
    }

    /// Stores `count` events described by `batch_json` after the current head and prunes to
    /// `policy`'s count, atomically; with a `key`, a repeat of the same body stores nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &self,
        storage: &Storage,
        channel: &str,
        batch_json: String,
        count: u64,
        time_ms: i64,
        key: Option<Key<'_>>,
        policy: Policy,
    ) -> worker::Result<Appended> {
        if let Some(key) = &key {
            if let Some(seen) = self.key(key.key)? {
                return Ok(if seen.fingerprint == key.fingerprint {
                    Appended::Replayed(Published {
                        first_id: seen.first_id,
                        count: seen.count,
                        time_ms: seen.time_ms,
                    })
                } else {
                    Appended::Conflict
                });
            }
        }
        let sql = self.sql.clone();
        let channel = channel.to_string();
        let key = key.map(|k| (k.key.to_string(), k.fingerprint.to_string()));
        let log = self.clone();
        transaction(storage, move || {
            let head = log.state()?.map_or(0, |s| s.head as u64);
            let now = SqlStorageValue::Integer(time_ms);
            sql.exec(
                INSERT_BATCH,
                vec![int(head), now.clone(), batch_json.into()],
            )?;
            sql.exec(
                "INSERT INTO state (id, channel, head, mirrored) VALUES (1, ?1, ?2, 0) \
                 ON CONFLICT (id) DO UPDATE SET head = excluded.head",
                vec![channel.into(), int(head + count)],
            )?;
            if let Some((key, fingerprint)) = key {
                sql.exec(
                    "INSERT INTO idempotency (key, fingerprint, first_id, count, time_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    vec![key.into(), fingerprint.into(), int(head + 1), int(count), now],
                )?;
            }
            let prune = policy.prune(head + count, time_ms);
            sql.exec(
                "DELETE FROM events WHERE seq <= ?1",
                vec![int(prune.through_id)],
            )?;
            Ok(Appended::New { first: head + 1 })
        })
    }

    fn key(&self, key: &str) -> worker::Result<Option<Fingerprinted>> {
        let rows: Vec<Fingerprinted> = self
            .sql
            .exec(
                "SELECT fingerprint, first_id, count, time_ms FROM idempotency WHERE key = ?1",
                vec![key.into()],
            )?
            .to_array()?;
        Ok(rows.into_iter().next())
    }

    /// Age pruning, run by the alarm: events past `policy`'s age and keys past `KEY_TTL_MS`.
    pub fn prune_by_age(&self, policy: Policy, now_ms: i64) -> worker::Result<()> {
        let prune = policy.prune(0, now_ms);
        self.sql.exec(
            // `<=`: the alarm fires at exactly oldest + max age, and must then delete it.
            "DELETE FROM events WHERE time_ms <= ?1",
            vec![SqlStorageValue::Integer(prune.before_ms)],
        )?;
        self.sql.exec(
            "DELETE FROM idempotency WHERE time_ms <= ?1",
            vec![SqlStorageValue::Integer(now_ms.saturating_sub(KEY_TTL_MS))],
        )?;
        Ok(())
    }

    /// When the oldest retained event and the oldest key were stored, for the next alarm.
    pub fn oldest(&self) -> worker::Result<(Option<i64>, Option<i64>)> {
        // Times follow ids, so the oldest event is the first by id: a key lookup, not a scan,
        // on every publish.
        let event = self.single("SELECT time_ms AS value FROM events ORDER BY seq LIMIT 1")?;
        let key = self.single("SELECT min(time_ms) AS value FROM idempotency")?;
        Ok((event.map(|t| t as i64), key.map(|t| t as i64)))
    }

    /// Drops every retained event; ids are not reused (`head` stays).
    pub fn purge(&self) -> worker::Result<()> {
        self.sql.exec("DELETE FROM events", None)?;
        Ok(())
    }

    /// At most `limit` events with ids greater than `after`, ascending.
    pub fn after(&self, after: u64, limit: u64) -> worker::Result<Vec<StoredEvent>> {
        let rows: Vec<Row> = self
            .sql
            .exec(
                "SELECT seq, type, data, time_ms FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                vec![int(after), int(limit)],
            )?
            .to_array()?;
        Ok(rows
            .into_iter()
            .map(|r| StoredEvent {
                id: r.seq as u64,
                event_type: r.event_type,
                data: r.data,
                time_ms: r.time_ms as i64,
            })
            .collect())
    }

    /// Records the channel's name before its first event (a subscriber can come first).
    pub fn name(&self, channel: &str) -> worker::Result<()> {
        self.sql.exec(
            "INSERT INTO state (id, channel, head, mirrored) VALUES (1, ?1, 0, 0) \
             ON CONFLICT (id) DO NOTHING",
            vec![channel.into()],
        )?;
        Ok(())
    }

    /// Notes what D1 now holds: every id through `mirrored`, and `earliest` as its window start.
    pub fn set_mirrored(&self, mirrored: u64, earliest: u64) -> worker::Result<()> {
        self.sql.exec(
            "UPDATE state SET mirrored = max(mirrored, ?1), mirrored_earliest = ?2 WHERE id = 1",
            vec![int(mirrored), int(earliest)],
        )?;
        Ok(())
    }
}

/// Runs `work` inside the storage's `transactionSync`: everything it writes commits together,
/// or nothing does when it fails. (worker 0.8 does not bind `transactionSync`.)
fn transaction<T: 'static>(
    storage: &Storage,
    work: impl FnOnce() -> worker::Result<T> + 'static,
) -> worker::Result<T> {
    let slot: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
    let out = slot.clone();
    let callback = Closure::once_into_js(move || -> Result<JsValue, JsValue> {
        let value = work().map_err(|e| JsValue::from_str(&e.to_string()))?;
        *out.borrow_mut() = Some(value);
        Ok(JsValue::UNDEFINED)
    });
    let raw: &JsValue = storage.as_raw().unchecked_ref();
    let run: Function = Reflect::get(raw, &JsValue::from_str("transactionSync"))?
        .dyn_into()
        .map_err(|_| worker::Error::RustError("storage.transactionSync is missing".into()))?;
    run.call1(raw, &callback)?;
    let value = slot.borrow_mut().take();
    value.ok_or_else(|| worker::Error::RustError("the transaction did not run".into()))
}
