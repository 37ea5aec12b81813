//! The D1 mirror that `/poll` reads: written by the channel's Durable Object (`write`), read by
//! the stateless Worker (`read_page`). Schema in `migrations/`. A write is one D1 batch, so it
//! lands whole or not at all, and the DO sends batches in id order, one after the other.

use super::log::ChannelLog;
use crate::channel::poll::{PollRequest, StoredEvent};
use crate::channel::poll_filtered::{Scanned, SCAN_ROWS};
use crate::channel::poll_many::{ManyRequest, ManyRow};
use crate::channel::Window;
use crate::protocol::filter::Filter;
use crate::protocol::query::MAX_CURSOR;
use crate::protocol::topics::Topics;
use crate::protocol::ChannelName;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use worker::wasm_bindgen::JsValue;
use worker::D1Database;

pub const BINDING: &str = "DB";

/// Rows go to D1 as one JSON parameter expanded by `json_each`: two statements per write
/// whatever the batch size, under D1's 100-parameter limit.
const INSERT_EVENTS: &str = "INSERT OR IGNORE INTO events \
       (channel, seq, type, data, time_ms, size, topics) \
     SELECT ?1, json_extract(value, '$.id'), json_extract(value, '$.type'), \
            json_extract(value, '$.data'), json_extract(value, '$.time'), \
            length(CAST(json_extract(value, '$.data') AS BLOB)), \
            json_extract(value, '$.topics') \
     FROM json_each(?2)";

/// `head` only moves forward, so a retried older batch can never move it back.
const UPSERT_CHANNEL: &str = "INSERT INTO channels (channel, head, earliest, updated_ms) \
     VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (channel) DO UPDATE SET head = max(head, excluded.head), \
       earliest = max(earliest, excluded.earliest), updated_ms = excluded.updated_ms";

/// One query for a whole poll: the channel's mirrored window and the page's rows, read in one
/// statement so they agree. Rows are bounded by the head read with them, by `?3` (the limit
/// plus one) and by size: `page` finds, from the `events_size` index alone, the rows that start
/// before `?4` bytes of data, so the data of rows past the cut is never read. Data is smaller
/// than its envelope, so this is every row the page can hold, plus at most one.
const SELECT_PAGE: &str = "WITH page AS ( \
       SELECT seq, sum(size) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING \
                                   AND 1 PRECEDING) AS before \
       FROM (SELECT e.seq AS seq, e.size AS size FROM events e, channels h \
             WHERE h.channel = ?1 AND e.channel = ?1 AND e.seq > ?2 \
               AND e.seq >= h.earliest AND e.seq <= h.head \
             ORDER BY e.seq LIMIT ?3)) \
     SELECT c.head AS head, c.earliest AS earliest, e.seq AS seq, e.type AS type, \
       e.data AS data, e.time_ms AS time_ms, e.topics AS topics \
     FROM channels c \
       LEFT JOIN page p ON coalesce(p.before, 0) < ?4 \
       LEFT JOIN events e ON e.channel = c.channel AND e.seq = p.seq \
     WHERE c.channel = ?1 ORDER BY p.seq";

#[derive(Serialize)]
struct MirrorRow<'a> {
    id: u64,
    #[serde(rename = "type")]
    event_type: &'a str,
    data: &'a str,
    time: i64,
    /// The topics' JSON array as text (so `json_extract` gives the text, not an array).
    #[serde(skip_serializing_if = "Option::is_none")]
    topics: Option<String>,
}

/// Drops what the channel no longer retains, in the same batch as the window moves.
const PRUNE_EVENTS: &str = "DELETE FROM events WHERE channel = ?1 AND seq < ?2";

/// Mirrors `events` (ascending, following what D1 already has), moves the channel's window to
/// `head` (the last id D1 now holds) and `earliest`, and prunes below `earliest`: one batch.
pub async fn write(
    db: &D1Database,
    channel: &ChannelName,
    events: &[StoredEvent],
    window: Window,
    now_ms: f64,
) -> worker::Result<()> {
    let name = JsValue::from_str(channel.as_str());
    let mut statements = Vec::with_capacity(3);
    if !events.is_empty() {
        let rows: Vec<MirrorRow<'_>> = events
            .iter()
            .map(|e| MirrorRow {
                id: e.id,
                event_type: &e.event_type,
                data: &e.data,
                time: e.time_ms,
                topics: e.topics.as_ref().map(Topics::to_json),
            })
            .collect();
        let rows =
            serde_json::to_string(&rows).map_err(|e| worker::Error::RustError(e.to_string()))?;
        statements.push(
            db.prepare(INSERT_EVENTS)
                .bind(&[name.clone(), JsValue::from_str(&rows)])?,
        );
    }
    let earliest = JsValue::from_f64(window.earliest as f64);
    statements.push(
        db.prepare(PRUNE_EVENTS)
            .bind(&[name.clone(), earliest.clone()])?,
    );
    statements.push(db.prepare(UPSERT_CHANNEL).bind(&[
        name,
        JsValue::from_f64(window.head as f64),
        earliest,
        JsValue::from_f64(now_ms),
    ])?);
    for result in db.batch(statements).await? {
        if let Some(error) = result.error() {
            return Err(worker::Error::RustError(error));
        }
    }
    Ok(())
}

/// Events per D1 write while the mirror catches up.
const CATCH_UP_BATCH: u64 = 500;

/// Copies to D1 every event it lacks and the current window, in id order, batch after batch,
/// moving the log's `mirrored` mark only after D1 has committed each batch. `again` is set
/// (by the object's `start_mirror`) whenever the log changes while a catch-up runs: a pass
/// that was not a full batch ends the catch-up unless it was set meanwhile, so a catch-up costs
/// one pass, not a second one that reads nothing new. `fault` (a development-only switch)
/// makes every write fail, to test that the mirror heals.
pub async fn catch_up(
    log: &ChannelLog,
    db: &D1Database,
    fault: bool,
    again: &Cell<bool>,
) -> worker::Result<()> {
    loop {
        again.set(false);
        let Some(state) = log.state()? else {
            return Ok(());
        };
        let mirrored = state.mirrored;
        let events = log.after(mirrored, CATCH_UP_BATCH, None)?;
        let window = log.window_at(state.head)?;
        if events.is_empty() && state.mirrored_earliest == window.earliest {
            return Ok(());
        }
        if fault {
            return Err(worker::Error::RustError(
                "D1 writes are switched off (EDGEHUB_FAULT_D1_WRITES)".into(),
            ));
        }
        let channel = ChannelName::parse(&state.channel)
            .map_err(|_| worker::Error::RustError("stored channel name is invalid".into()))?;
        // Ids below `earliest` are gone from the log: the mirror has all there is of them.
        let through = events
            .last()
            .map_or(mirrored, |e| e.id)
            .max(window.earliest.saturating_sub(1));
        let mirrored_window = Window {
            head: through,
            earliest: window.earliest,
        };
        write(
            db,
            &channel,
            &events,
            mirrored_window,
            worker::Date::now().as_millis() as f64,
        )
        .await?;
        log.set_mirrored(through, window.earliest)?;
        if (events.len() as u64) < CATCH_UP_BATCH && !again.get() {
            return Ok(());
        }
    }
}

/// A row of a poll: its channel's window, and an event if the row has one. `pos` is the
/// channel's place in a multi-channel poll's set (absent, so 0, in a one-channel poll).
#[derive(Deserialize)]
struct PageRow {
    #[serde(default)]
    pos: usize,
    #[serde(default)]
    head: u64,
    #[serde(default)]
    earliest: u64,
    seq: Option<u64>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    data: Option<String>,
    time_ms: Option<i64>,
    #[serde(default)]
    topics: Option<String>,
}

const SELECT_WINDOW: &str = "SELECT head, earliest FROM channels WHERE channel = ?1";

/// The mirror's window for `channel` alone: one row, no events (`Window::EMPTY` for a channel
/// never mirrored).
pub async fn read_window(db: &D1Database, channel: &ChannelName) -> worker::Result<Window> {
    let statement = db
        .prepare(SELECT_WINDOW)
        .bind(&[JsValue::from_str(channel.as_str())])?;
    let row: Option<PageRow> = statement.first(None).await?;
    Ok(row.map_or(Window::EMPTY, |r| Window {
        head: r.head,
        earliest: r.earliest,
    }))
}

/// The mirror's window for `channel` and the rows a poll needs (at most `limit + 1`).
pub async fn read_page(
    db: &D1Database,
    channel: &ChannelName,
    req: &PollRequest,
) -> worker::Result<(Window, Vec<StoredEvent>)> {
    // Rows after the cursor, up to the mirror's head, at most `limit + 1` (the extra row only
    // tells whether the page was cut). No cursor reads no rows.
    let after = req.cursor.unwrap_or(MAX_CURSOR);
    let statement = db.prepare(SELECT_PAGE).bind(&[
        JsValue::from_str(channel.as_str()),
        JsValue::from_f64(after as f64),
        JsValue::from_f64(f64::from(req.limit) + 1.0),
        JsValue::from_f64(req.max_bytes as f64),
    ])?;
    let rows: Vec<PageRow> = statement.all().await?.results()?;
    let Some(first) = rows.first() else {
        return Ok((Window::EMPTY, Vec::new()));
    };
    let window = Window {
        head: first.head,
        earliest: first.earliest,
    };
    let events = rows
        .into_iter()
        .filter_map(|r| {
            Some(StoredEvent {
                id: r.seq?,
                event_type: r.event_type?,
                data: r.data?,
                time_ms: r.time_ms?,
                topics: r.topics.as_deref().and_then(Topics::from_json),
                update: None,
            })
        })
        .collect();
    Ok((window, events))
}

/// One query for a whole multi-channel poll (`channel::poll_many`): every channel's mirrored
/// window and the page's rows, in one statement so they agree. `?1` is the set as JSON
/// (`[[channel, after], …]` in the set's order; `after` is `MAX_CURSOR` for "from now on").
/// Each channel reads at most `?2` (the limit) consecutive ids from its position, from the
/// `events_size` index alone; they are ranked round-robin (the first of each channel in the
/// set's order, then the second, …), and only rows ranked within the limit and starting before
/// `?3` bytes of data are joined to their data. Every channel has a row, with or without an
/// event.
const SELECT_MANY: &str = "WITH want AS ( \
       SELECT CAST(key AS INTEGER) AS pos, json_extract(value, '$[0]') AS channel, \
              json_extract(value, '$[1]') AS after FROM json_each(?1)), \
     win AS ( \
       SELECT w.pos AS pos, w.channel AS channel, coalesce(c.head, 0) AS head, \
              coalesce(c.earliest, 1) AS earliest, \
              max(w.after, coalesce(c.earliest, 1) - 1) AS start \
       FROM want w LEFT JOIN channels c ON c.channel = w.channel), \
     cand AS ( \
       SELECT w.pos AS pos, e.seq AS seq, e.size AS size, \
              row_number() OVER (PARTITION BY w.pos ORDER BY e.seq) AS n \
       FROM win w JOIN events e ON e.channel = w.channel AND e.seq > w.start \
         AND e.seq <= min(w.head, w.start + ?2)), \
     page AS ( \
       SELECT pos, seq, \
              sum(size) OVER (ORDER BY n, pos ROWS BETWEEN UNBOUNDED PRECEDING \
                              AND 1 PRECEDING) AS before, \
              row_number() OVER (ORDER BY n, pos) AS rank \
       FROM cand) \
     SELECT w.pos AS pos, w.head AS head, w.earliest AS earliest, e.seq AS seq, \
       e.type AS type, e.data AS data, e.time_ms AS time_ms, e.topics AS topics \
     FROM win w \
       LEFT JOIN page p ON p.pos = w.pos AND coalesce(p.before, 0) < ?3 AND p.rank <= ?2 \
       LEFT JOIN events e ON e.channel = w.channel AND e.seq = p.seq \
     ORDER BY p.rank";

/// Every channel's mirrored window (in the set's order) and the rows a multi-channel poll
/// needs, round-robin.
pub async fn read_many(
    db: &D1Database,
    req: &ManyRequest,
) -> worker::Result<(Vec<Window>, Vec<ManyRow>)> {
    let want: Vec<(&str, u64)> = req
        .set
        .channels()
        .iter()
        .zip(req.cursors())
        .map(|(c, cursor)| (c.as_str(), cursor.unwrap_or(MAX_CURSOR)))
        .collect();
    let want = serde_json::to_string(&want).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let statement = db.prepare(SELECT_MANY).bind(&[
        JsValue::from_str(&want),
        JsValue::from_f64(f64::from(req.limit)),
        JsValue::from_f64(req.max_bytes as f64),
    ])?;
    let rows: Vec<PageRow> = statement.all().await?.results()?;
    let mut windows = vec![Window::EMPTY; req.set.channels().len()];
    let mut events = Vec::new();
    for row in rows {
        let pos = row.pos;
        if let Some(window) = windows.get_mut(pos) {
            *window = Window {
                head: row.head,
                earliest: row.earliest,
            };
        }
        if let (Some(id), Some(event_type), Some(data), Some(time_ms)) =
            (row.seq, row.event_type, row.data, row.time_ms)
        {
            events.push(ManyRow {
                lane: pos,
                event: StoredEvent {
                    id,
                    event_type,
                    data,
                    time_ms,
                    topics: row.topics.as_deref().and_then(Topics::from_json),
                    update: None,
                },
            });
        }
    }
    Ok((windows, events))
}

/// The first step of a filtered poll (`channel::poll_filtered`), in one query: every channel's
/// mirrored window and its candidate rows after its position, without their data: rows with
/// topics, and when the filter has only exact matchers (`?2`, a JSON array; null otherwise),
/// only rows with one of those topics, so D1 does that filtering itself. `?1` is the set as for
/// `SELECT_MANY`; at most `?3` rows per channel.
const SCAN_FILTERED: &str = "WITH want AS ( \
       SELECT CAST(key AS INTEGER) AS pos, json_extract(value, '$[0]') AS channel, \
              json_extract(value, '$[1]') AS after FROM json_each(?1)), \
     win AS ( \
       SELECT w.pos AS pos, w.channel AS channel, coalesce(c.head, 0) AS head, \
              coalesce(c.earliest, 1) AS earliest, \
              max(w.after, coalesce(c.earliest, 1) - 1) AS start \
       FROM want w LEFT JOIN channels c ON c.channel = w.channel), \
     cand AS ( \
       SELECT w.pos AS pos, e.seq AS seq, e.size AS size, e.topics AS topics, \
              row_number() OVER (PARTITION BY w.pos ORDER BY e.seq) AS n \
       FROM win w JOIN events e ON e.channel = w.channel AND e.seq > w.start \
         AND e.seq <= w.head AND e.topics IS NOT NULL \
         AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(e.topics) t \
                                    WHERE t.value IN (SELECT value FROM json_each(?2))))) \
     SELECT w.pos AS pos, w.head AS head, w.earliest AS earliest, c.seq AS seq, \
       c.size AS size, c.topics AS topics \
     FROM win w LEFT JOIN cand c ON c.pos = w.pos AND c.n <= ?3 \
     ORDER BY w.pos, c.seq";

/// The second step: the picked rows, `?1` as `[[pos, channel, seq], …]`.
const SELECT_PICKED: &str = "SELECT CAST(json_extract(p.value, '$[0]') AS INTEGER) AS pos, \
       e.seq AS seq, e.type AS type, e.data AS data, e.time_ms AS time_ms, e.topics AS topics \
     FROM json_each(?1) p JOIN events e ON e.channel = json_extract(p.value, '$[1]') \
       AND e.seq = json_extract(p.value, '$[2]')";

#[derive(Deserialize)]
struct ScanRow {
    pos: usize,
    head: u64,
    earliest: u64,
    seq: Option<u64>,
    size: Option<u64>,
    topics: Option<String>,
}

/// Each channel's mirrored window (in the set's order) and its candidate rows after `after`
/// (`MAX_CURSOR` for "from now on"), for a filtered poll.
pub async fn scan_filtered(
    db: &D1Database,
    lanes: &[(&ChannelName, u64)],
    filter: &Filter,
) -> worker::Result<(Vec<Window>, Vec<Vec<Scanned>>)> {
    let want: Vec<(&str, u64)> = lanes.iter().map(|(c, a)| (c.as_str(), *a)).collect();
    let want = serde_json::to_string(&want).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let exact = match filter.exact_only() {
        Some(topics) => JsValue::from_str(
            &serde_json::to_string(topics).map_err(|e| worker::Error::RustError(e.to_string()))?,
        ),
        None => JsValue::NULL,
    };
    let statement = db.prepare(SCAN_FILTERED).bind(&[
        JsValue::from_str(&want),
        exact,
        JsValue::from_f64(SCAN_ROWS as f64),
    ])?;
    let rows: Vec<ScanRow> = statement.all().await?.results()?;
    let mut windows = vec![Window::EMPTY; lanes.len()];
    let mut scans: Vec<Vec<Scanned>> = vec![Vec::new(); lanes.len()];
    for row in rows {
        if let Some(window) = windows.get_mut(row.pos) {
            *window = Window {
                head: row.head,
                earliest: row.earliest,
            };
        }
        if let (Some(id), Some(scan)) = (row.seq, scans.get_mut(row.pos)) {
            scan.push(Scanned {
                id,
                size: row.size.unwrap_or(0),
                topics: row.topics.as_deref().and_then(Topics::from_json),
            });
        }
    }
    Ok((windows, scans))
}

/// The events of the picked `(lane, channel, id)` rows, each with its lane.
pub async fn read_picked(
    db: &D1Database,
    picked: &[(usize, &ChannelName, u64)],
) -> worker::Result<Vec<(usize, StoredEvent)>> {
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<(usize, &str, u64)> = picked
        .iter()
        .map(|(l, c, id)| (*l, c.as_str(), *id))
        .collect();
    let list = serde_json::to_string(&list).map_err(|e| worker::Error::RustError(e.to_string()))?;
    let statement = db
        .prepare(SELECT_PICKED)
        .bind(&[JsValue::from_str(&list)])?;
    let rows: Vec<PageRow> = statement.all().await?.results()?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let event = StoredEvent {
                id: r.seq?,
                event_type: r.event_type?,
                data: r.data?,
                time_ms: r.time_ms?,
                topics: r.topics.as_deref().and_then(Topics::from_json),
                update: None,
            };
            Some((r.pos, event))
        })
        .collect())
}
