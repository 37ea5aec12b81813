//! The topic filters of a channel object's subscribers (`protocol::topics`). A filtered
//! subscriber's socket carries its filter's key in a tag (`filter:<key>`) and a transport tag of
//! its own (`ws:topics`, `sse:topics`), so an unfiltered publish never looks at it; the filter
//! itself is kept in the object's SQLite (`filters`), since a socket's attachment (2 KiB) has no
//! room for 32 matchers, and compiled once per instance for every socket that shares it. Rows no
//! open socket names are dropped whenever a filtered subscriber arrives.

use super::subscribers::any_with_tag;
use crate::channel::fanout::{Frames, Transport};
use crate::error::Error;
use crate::protocol::filter::{EventTopics, Filter, FilterSpec};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use worker::worker_sys::DurableObjectState;
use worker::{SqlStorage, WebSocket};

/// The tag prefix that names a socket's filter.
pub const FILTER_TAG: &str = "filter:";

const CREATE: &str =
    "CREATE TABLE IF NOT EXISTS filters (key TEXT PRIMARY KEY, spec TEXT NOT NULL) WITHOUT ROWID";

/// The transport tag of a filtered subscriber.
pub fn transport_tag(transport: Transport) -> &'static str {
    match transport {
        Transport::Sse => "sse:topics",
        Transport::Ws => "ws:topics",
    }
}

#[derive(Deserialize)]
struct Row {
    spec: String,
}

#[derive(Deserialize)]
struct KeyRow {
    key: String,
}

/// The filters this instance has compiled, by key.
pub struct Filters {
    sql: SqlStorage,
    compiled: RefCell<HashMap<String, Rc<Filter>>>,
}

impl Filters {
    pub fn new(sql: SqlStorage) -> Filters {
        Filters {
            sql,
            compiled: RefCell::new(HashMap::new()),
        }
    }

    /// Compiles `spec` and stores it under its key (once for any number of sockets); drops the
    /// rows of filters no open socket uses any more.
    pub fn keep(
        &self,
        state: &DurableObjectState,
        spec: &FilterSpec,
    ) -> Result<Option<(String, Rc<Filter>)>, Error> {
        let Some(filter) = Filter::parse(spec)? else {
            return Ok(None);
        };
        let key = filter.key();
        let text = serde_json::to_string(&filter.spec())?;
        let failed = |e: worker::Error| Error::Internal(format!("storing a filter: {e}"));
        self.sql.exec(CREATE, None).map_err(failed)?;
        self.forget_unused(state, &key).map_err(failed)?;
        self.sql
            .exec(
                "INSERT OR IGNORE INTO filters (key, spec) VALUES (?1, ?2)",
                vec![key.clone().into(), text.into()],
            )
            .map_err(failed)?;
        let filter = Rc::new(filter);
        self.compiled
            .borrow_mut()
            .insert(key.clone(), filter.clone());
        Ok(Some((key, filter)))
    }

    /// The filter stored under `key` (compiled on first use by this instance).
    pub fn get(&self, key: &str) -> Option<Rc<Filter>> {
        if let Some(filter) = self.compiled.borrow().get(key) {
            return Some(filter.clone());
        }
        let rows: Vec<Row> = self
            .sql
            .exec(
                "SELECT spec FROM filters WHERE key = ?1",
                vec![key.to_string().into()],
            )
            .and_then(|c| c.to_array())
            .ok()?;
        let spec: FilterSpec = serde_json::from_str(&rows.first()?.spec).ok()?;
        let filter = Rc::new(Filter::parse(&spec).ok()??);
        self.compiled
            .borrow_mut()
            .insert(key.to_string(), filter.clone());
        Some(filter)
    }

    /// The filter of a socket, from its tags; `None` for a socket without one. A filtered
    /// socket whose filter cannot be read gets nothing rather than everything.
    pub fn of(&self, state: &DurableObjectState, ws: &WebSocket) -> Option<Rc<Filter>> {
        let key = key_of(state, ws)?;
        self.get(&key).or_else(|| Some(Rc::new(Filter::nothing())))
    }

    /// Deletes the rows of filters that no open filtered socket names (`keeping` aside).
    fn forget_unused(&self, state: &DurableObjectState, keeping: &str) -> worker::Result<()> {
        let mut used: HashSet<String> = HashSet::from([keeping.to_string()]);
        for transport in [Transport::Ws, Transport::Sse] {
            for ws in any_with_tag(state, transport_tag(transport)) {
                used.extend(key_of(state, &ws));
            }
        }
        let rows: Vec<KeyRow> = self.sql.exec("SELECT key FROM filters", None)?.to_array()?;
        for row in rows.into_iter().filter(|r| !used.contains(&r.key)) {
            self.sql.exec(
                "DELETE FROM filters WHERE key = ?1",
                vec![row.key.clone().into()],
            )?;
            self.compiled.borrow_mut().remove(&row.key);
        }
        Ok(())
    }
}

/// The filter key a socket's tags name.
pub fn key_of(state: &DurableObjectState, ws: &WebSocket) -> Option<String> {
    let raw: &worker::web_sys::WebSocket = ws.as_ref();
    state
        .get_tags(raw)
        .unwrap_or_default()
        .into_iter()
        .find_map(|tag| tag.strip_prefix(FILTER_TAG).map(str::to_string))
}

/// What each filter lets through of one publish: one flag per event, worked out once per
/// filter however many sockets share it.
pub struct Selection<'a> {
    topics: Vec<EventTopics<'a>>,
    by_key: HashMap<String, Vec<bool>>,
}

impl<'a> Selection<'a> {
    pub fn new(frames: &'a Frames) -> Selection<'a> {
        Selection {
            topics: frames
                .topics
                .iter()
                .zip(&frames.private)
                .map(|(t, private)| EventTopics::new(t.as_ref()).private(*private))
                .collect(),
            by_key: HashMap::new(),
        }
    }

    /// The flags for the filter stored under `key`.
    pub fn keep(&mut self, key: &str, filter: &Filter) -> &[bool] {
        let topics = &self.topics;
        self.by_key
            .entry(key.to_string())
            .or_insert_with(|| topics.iter().map(|t| filter.matches(t)).collect())
    }
}
