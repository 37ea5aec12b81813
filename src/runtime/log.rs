//! The channel's event log in its Durable Object's SQLite storage: the source of truth. One
//! `state` row holds the channel name, the last id given (`head`) and how far the D1 mirror got
//! (`mirrored`). Appends run in one `transactionSync`, so a batch is stored whole or not at all.

use crate::channel::poll::StoredEvent;
use crate::channel::Window;
use serde::Deserialize;
use std::cell::RefCell;
use std::rc::Rc;
use worker::js_sys::{Function, Reflect};
use worker::wasm_bindgen::closure::Closure;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{SqlStorage, SqlStorageValue, Storage};

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, \
     data TEXT NOT NULL, time_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), \
     channel TEXT NOT NULL, head INTEGER NOT NULL, mirrored INTEGER NOT NULL)",
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
struct Earliest {
    earliest: Option<f64>,
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
                "SELECT channel, head, mirrored FROM state WHERE id = 1",
                None,
            )?
            .to_array()?;
        Ok(rows.into_iter().next())
    }

    pub fn window(&self) -> worker::Result<Window> {
        let head = self.state()?.map_or(0, |s| s.head as u64);
        let rows: Vec<Earliest> = self
            .sql
            .exec("SELECT min(seq) AS earliest FROM events", None)?
            .to_array()?;
        let earliest = rows.into_iter().next().and_then(|r| r.earliest);
        Ok(Window {
            head,
            earliest: earliest.map_or(head + 1, |e| e as u64),
        })
    }

    /// Stores `count` events described by `batch_json` after the current head, atomically, and
    /// returns the first new id.
    pub fn append(
        &self,
        storage: &Storage,
        channel: &str,
        batch_json: String,
        count: u64,
        time_ms: i64,
    ) -> worker::Result<u64> {
        let sql = self.sql.clone();
        let channel = channel.to_string();
        let log = self.clone();
        transaction(storage, move || {
            let head = log.state()?.map_or(0, |s| s.head as u64);
            sql.exec(
                INSERT_BATCH,
                vec![
                    int(head),
                    SqlStorageValue::Integer(time_ms),
                    batch_json.into(),
                ],
            )?;
            sql.exec(
                "INSERT INTO state (id, channel, head, mirrored) VALUES (1, ?1, ?2, 0) \
                 ON CONFLICT (id) DO UPDATE SET head = excluded.head",
                vec![channel.into(), int(head + count)],
            )?;
            Ok(head + 1)
        })
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

    pub fn set_mirrored(&self, id: u64) -> worker::Result<()> {
        self.sql.exec(
            "UPDATE state SET mirrored = max(mirrored, ?1) WHERE id = 1",
            vec![int(id)],
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
