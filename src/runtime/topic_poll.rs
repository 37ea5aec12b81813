//! Polls with a topic filter, one channel or many (`channel::poll_filtered`): one D1 query
//! scans the channels' candidate rows without their data, a second reads the data of the rows
//! the page takes (none when nothing matched). The `ETag` is the unfiltered one with the
//! filter's key in it, so a 304 comes from this isolate's window cache as it does unfiltered.

use super::mirror;
use crate::channel::poll::{PollPage, StoredEvent};
use crate::channel::poll_filtered::{cut, pick, position, Cut, LaneScan};
use crate::channel::poll_many::{ChannelGap, ManyPage};
use crate::channel::Window;
use crate::error::Error;
use crate::protocol::filter::Filter;
use crate::protocol::query::MAX_CURSOR;
use crate::protocol::stream::StreamCursor;
use crate::protocol::ChannelName;
use worker::D1Database;

/// An unfiltered poll's `ETag` with `filter`'s key in it.
pub fn etag(unfiltered: &str, filter: &Filter) -> String {
    let inner = unfiltered.trim_matches('"');
    format!("\"{inner}.t{}\"", filter.key())
}

/// One filtered poll's reading: each channel's window, position and gap, and the page.
pub struct Read {
    pub windows: Vec<Window>,
    gaps: Vec<Option<(u64, u64)>>,
    cut: Cut,
}

/// Scans `channels` after their cursors (in the set's order) and reads the page `filter`
/// lets through: at most `limit` events and about `max_bytes` of envelopes.
pub async fn read(
    db: &D1Database,
    channels: &[(&ChannelName, Option<u64>)],
    filter: &Filter,
    limit: u32,
    max_bytes: usize,
) -> Result<Read, Error> {
    let unavailable = |e: worker::Error| Error::Unavailable(format!("reading the mirror: {e}"));
    let starts: Vec<(&ChannelName, u64)> = channels
        .iter()
        .map(|(c, cursor)| (*c, cursor.unwrap_or(MAX_CURSOR)))
        .collect();
    let (windows, scans) = mirror::scan_filtered(db, &starts, filter)
        .await
        .map_err(unavailable)?;
    let mut gaps = Vec::with_capacity(channels.len());
    let lanes: Vec<LaneScan> = channels
        .iter()
        .zip(&windows)
        .zip(scans)
        .map(|(((_, cursor), window), rows)| {
            let (after, gap) = position(*cursor, *window);
            gaps.push(gap);
            LaneScan {
                after,
                head: window.head,
                rows,
            }
        })
        .collect();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let picks = pick(&lanes, filter, limit, max_bytes);
    let picked: Vec<(usize, &ChannelName, u64)> = picks
        .order
        .iter()
        .filter_map(|&(lane, id)| channels.get(lane).map(|(c, _)| (lane, *c, id)))
        .collect();
    let rows = mirror::read_picked(db, &picked)
        .await
        .map_err(unavailable)?;
    let envelope = |lane: usize, e: &StoredEvent| {
        channels
            .get(lane)
            .map_or_else(String::new, |(c, _)| e.envelope(c))
    };
    let cut = cut(&lanes, &picks, rows, max_bytes, envelope);
    Ok(Read { windows, gaps, cut })
}

impl Read {
    /// The page of a one-channel poll.
    pub fn page(self) -> PollPage {
        let head = self.windows.first().map_or(0, |w| w.head);
        PollPage {
            ids: self.cut.events.iter().map(|(_, id, _)| *id).collect(),
            envelopes: self.cut.events.into_iter().map(|(_, _, e)| e).collect(),
            next: self.cut.next.first().copied().unwrap_or(head),
            more: self.cut.more,
            gap: self
                .gaps
                .first()
                .copied()
                .flatten()
                .map(|(_, earliest)| earliest),
            head,
        }
    }

    /// The page of a multi-channel poll over `channels` (the set, in its order).
    pub fn many_page(self, channels: &[ChannelName]) -> ManyPage {
        let mut next = StreamCursor::default();
        for (channel, id) in channels.iter().zip(&self.cut.next) {
            next.set(channel, *id);
        }
        let gaps = channels
            .iter()
            .zip(&self.gaps)
            .filter_map(|(channel, gap)| {
                gap.map(|(requested, earliest)| ChannelGap {
                    channel: channel.clone(),
                    requested,
                    earliest,
                })
            })
            .collect();
        ManyPage {
            envelopes: self.cut.events.into_iter().map(|(_, _, e)| e).collect(),
            next,
            more: self.cut.more,
            gaps,
        }
    }
}
