//! Presence, as a channel's object keeps it (DESIGN.md "Presence"): who is on the channel
//! (`Roster`: one member per `sub`, however many connections; it joins with its first and leaves
//! with its last) and what its presence subscribers are told (`Outbox`: join and leave events,
//! batched so that a storm of arrivals cannot starve publishes). Pure: the object rebuilds the
//! roster from its sockets' attachments when it wakes, feeds it connects and disconnects, and
//! sends what a flushed `Batch` tells each subscriber. The frames are `protocol::presence`'s;
//! what subscribers see is `docs/API.md#presence`.
//!
//! Every change recorded has a position (`Outbox::position`, counting on from the last batch);
//! a subscriber stores the position at which it was sent its `sync`, so a batch tells it only
//! what happened after that, and never its own member's join.

use crate::auth::Info;
use std::collections::{btree_map, BTreeMap};

/// One member: its info (from the token of the connection that made it join) and its
/// connections (the ids its sockets carry, so a connection counted twice is still one), each
/// with when it entered (unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub info: Option<Info>,
    conns: BTreeMap<u64, i64>,
}

impl Member {
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// When its earliest open connection entered: what the sockets' tickets say too, so the
    /// same after a rebuild.
    pub fn since_ms(&self) -> i64 {
        self.conns.values().copied().min().unwrap_or_default()
    }
}

/// What a connect or a disconnect did to the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new member: the others are told it joined.
    Joined,
    /// Its last connection went: the others are told it left.
    Left,
    /// One more or one fewer connection of a member that stays (or one already counted, or
    /// never counted): nobody is told.
    Unchanged,
}

/// Every member of a channel, by `sub` (sorted, as `GET /channels/{c}/presence` lists them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    members: BTreeMap<String, Member>,
    /// Connections of all members together.
    connections: usize,
}

impl Roster {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// How many presence connections there are, all members together.
    pub fn connections(&self) -> usize {
        self.connections
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn get(&self, sub: &str) -> Option<&Member> {
        self.members.get(sub)
    }

    /// Whether a connection of `sub` may enter with at most `max_members` members: another
    /// connection of a member always may; a new member only below the cap.
    pub fn admits(&self, sub: &str, max_members: usize) -> bool {
        self.members.contains_key(sub) || self.members.len() < max_members
    }

    /// Connection `conn` of `sub` enters, at `now_ms`. A new member keeps `info`.
    pub fn connect(&mut self, sub: &str, conn: u64, info: Option<Info>, now_ms: i64) -> Change {
        match self.members.get_mut(sub) {
            Some(member) => {
                if let btree_map::Entry::Vacant(new) = member.conns.entry(conn) {
                    new.insert(now_ms);
                    self.connections += 1;
                }
                Change::Unchanged
            }
            None => {
                self.connections += 1;
                let member = Member {
                    info,
                    conns: BTreeMap::from([(conn, now_ms)]),
                };
                self.members.insert(sub.to_string(), member);
                Change::Joined
            }
        }
    }

    /// Connection `conn` of `sub` is gone; its member leaves with its last connection. A
    /// connection not counted changes nothing, so reporting one twice is harmless.
    pub fn disconnect(&mut self, sub: &str, conn: u64) -> Change {
        let Some(member) = self.members.get_mut(sub) else {
            return Change::Unchanged;
        };
        if member.conns.remove(&conn).is_none() {
            return Change::Unchanged;
        }
        self.connections -= 1;
        if !member.conns.is_empty() {
            return Change::Unchanged;
        }
        self.members.remove(sub);
        Change::Left
    }

    /// The first `limit` members, sorted by `sub`.
    pub fn list(&self, limit: usize) -> impl Iterator<Item = (&str, &Member)> {
        self.members
            .iter()
            .take(limit)
            .map(|(sub, member)| (sub.as_str(), member))
    }

    /// What becomes of the members when `other` replaces this roster: those only here leave,
    /// those only there join (with their info), sorted by `sub`.
    pub fn changes_to(&self, other: &Roster) -> Vec<(String, Change, Option<Info>)> {
        let left = self
            .members
            .iter()
            .filter(|(sub, _)| !other.members.contains_key(*sub))
            .map(|(sub, m)| (sub.clone(), Change::Left, m.info.clone()));
        let joined = other
            .members
            .iter()
            .filter(|(sub, _)| !self.members.contains_key(*sub))
            .map(|(sub, m)| (sub.clone(), Change::Joined, m.info.clone()));
        let mut all: Vec<_> = left.chain(joined).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether connection `conn` of `sub` is counted.
    pub fn counts(&self, sub: &str, conn: u64) -> bool {
        self.members
            .get(sub)
            .is_some_and(|m| m.conns.contains_key(&conn))
    }
}

/// What one batch tells one presence subscriber: the members that joined and those that left
/// since its `sync` or its last batch, net (joined and left again: neither), each sorted by
/// `sub`. It goes out as one frame (`protocol::presence::changes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Told {
    pub joins: Vec<(String, Option<Info>)>,
    pub leaves: Vec<(String, Option<Info>)>,
}

impl Told {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }
}

/// How long changes gather before a batch goes out, for a channel with `connections` presence
/// connections: 250 ms, and 1 ms more per two connections past 500, so that batches, each one
/// frame per connection, stay at about 2,000 frames a second however large the channel (a
/// join on a 10,000-connection channel shows within 5 s).
pub fn interval_ms(connections: usize) -> i64 {
    i64::try_from(connections / 2).unwrap_or(i64::MAX).max(250)
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    sub: String,
    joined: bool,
    info: Option<Info>,
}

/// The changes not yet sent, and when the last batch went out: a change after a quiet spell
/// goes out at once, later ones wait for the interval since the last batch, so arrivals are
/// sent in batches of at most one per interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbox {
    entries: Vec<Entry>,
    /// The position of `entries[0]`: how many changes went out in earlier batches.
    base: u64,
    flushed_at_ms: Option<i64>,
}

impl Outbox {
    /// Where the changes stand: a subscriber sent its `sync` now has seen everything before.
    pub fn position(&self) -> u64 {
        self.base.saturating_add(self.entries.len() as u64)
    }

    /// After a wake, with nothing pending: positions carry on after `seen`, the highest one a
    /// socket stored, so no socket is told a change twice or takes a later one for one it saw.
    pub fn carry_on_after(&mut self, seen: u64) {
        if self.entries.is_empty() {
            self.base = self.base.max(seen);
        }
    }

    pub fn record(&mut self, sub: &str, change: Change, info: Option<Info>) {
        let joined = match change {
            Change::Joined => true,
            Change::Left => false,
            Change::Unchanged => return,
        };
        self.entries.push(Entry {
            sub: sub.to_string(),
            joined,
            info,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the pending changes may go out (unix milliseconds): at once after a quiet spell,
    /// else `interval_ms` after the last batch. `None` with nothing pending.
    pub fn due_at(&self, interval_ms: i64) -> Option<i64> {
        if self.entries.is_empty() {
            return None;
        }
        Some(
            self.flushed_at_ms
                .map_or(i64::MIN, |t| t.saturating_add(interval_ms)),
        )
    }

    /// Takes the pending changes as a batch if they are due at `now_ms`.
    pub fn flush(&mut self, now_ms: i64, interval_ms: i64) -> Option<Batch> {
        if self.due_at(interval_ms)? > now_ms {
            return None;
        }
        self.flushed_at_ms = Some(now_ms);
        let batch = Batch {
            base: self.base,
            entries: std::mem::take(&mut self.entries),
        };
        self.base = batch.base.saturating_add(batch.entries.len() as u64);
        Some(batch)
    }
}

/// Changes going out together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    base: u64,
    entries: Vec<Entry>,
}

impl Batch {
    /// Where in this batch a subscriber whose `sync` came at `position` starts: subscribers with
    /// the same start are told the same, so the runtime frames each start once.
    pub fn start(&self, position: u64) -> usize {
        let into = position.saturating_sub(self.base);
        usize::try_from(into).map_or(self.entries.len(), |i| i.min(self.entries.len()))
    }

    /// What a subscriber starting at `start` is told: for each member that changed after it,
    /// the net change.
    pub fn told(&self, start: usize) -> Told {
        // Per member: was it present before `start` (its first change here is a leave), and
        // its last change.
        let mut net: BTreeMap<&str, (bool, &Entry)> = BTreeMap::new();
        for entry in self.entries.get(start..).unwrap_or_default() {
            net.entry(&entry.sub)
                .and_modify(|(_, last)| *last = entry)
                .or_insert((!entry.joined, entry));
        }
        let mut told = Told::default();
        for (sub, (was, last)) in net {
            let change = (sub.to_string(), last.info.clone());
            match (was, last.joined) {
                (false, true) => told.joins.push(change),
                (true, false) => told.leaves.push(change),
                _ => {}
            }
        }
        told
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn info(name: &str) -> Option<Info> {
        Info::parse(&format!(r#"{{"name":"{name}"}}"#)).ok()
    }

    fn joins(subs: &[(&str, Option<Info>)]) -> Told {
        Told {
            joins: subs
                .iter()
                .map(|(s, i)| (s.to_string(), i.clone()))
                .collect(),
            leaves: Vec::new(),
        }
    }

    #[test]
    fn a_member_is_one_sub_however_many_connections() {
        let mut r = Roster::default();
        assert_eq!(r.connect("ada", 1, info("Ada"), 10), Change::Joined);
        assert_eq!(r.connect("ada", 2, info("Other"), 20), Change::Unchanged);
        assert_eq!(r.connect("ada", 2, info("Other"), 25), Change::Unchanged);
        assert_eq!(r.connect("bo", 7, None, 30), Change::Joined);
        let ada = r.get("ada").unwrap();
        assert_eq!(
            (ada.connections(), ada.since_ms(), &ada.info),
            (2, 10, &info("Ada")),
            "counted once; since is the earliest; info the first"
        );
        assert_eq!(r.disconnect("ada", 9), Change::Unchanged, "not counted");
        assert_eq!(r.disconnect("ada", 1), Change::Unchanged);
        assert_eq!(
            r.get("ada").unwrap().since_ms(),
            20,
            "the earliest still open"
        );
        assert_eq!(r.disconnect("ada", 1), Change::Unchanged, "reported twice");
        assert!(r.counts("ada", 2) && !r.counts("ada", 1));
        assert_eq!(r.disconnect("ada", 2), Change::Left);
        assert_eq!(r.disconnect("ada", 2), Change::Unchanged);
        assert_eq!(r.list(10).map(|(s, _)| s).collect::<Vec<_>>(), vec!["bo"]);
    }

    #[test]
    fn a_roster_settled_against_the_sockets_says_who_left_and_joined() {
        let mut now = Roster::default();
        now.connect("ada", 1, None, 0);
        now.connect("bo", 2, info("Bo"), 0);
        let mut live = Roster::default();
        live.connect("bo", 3, info("Bo"), 0);
        live.connect("cy", 4, None, 0);
        assert_eq!(
            now.changes_to(&live),
            vec![
                ("ada".into(), Change::Left, None),
                ("cy".into(), Change::Joined, None)
            ],
            "bo stays, on another connection"
        );
    }

    #[test]
    fn the_cap_refuses_new_members_only() {
        let mut r = Roster::default();
        r.connect("a", 1, None, 0);
        r.connect("b", 2, None, 0);
        assert!(!r.admits("c", 2));
        assert!(r.admits("a", 2), "another connection of a member");
        let listed: Vec<&str> = r.list(1).map(|(s, _)| s).collect();
        assert_eq!((listed, r.len()), (vec!["a"], 2));
    }

    #[test]
    fn batches_go_out_at_once_after_quiet_then_once_per_interval() {
        let mut o = Outbox::default();
        assert_eq!((o.due_at(100), o.flush(0, 100)), (None, None));
        o.record("ada", Change::Joined, info("Ada"));
        o.record("cy", Change::Unchanged, None);
        assert!(o.due_at(100).unwrap() <= 0, "at once after a quiet spell");
        let batch = o.flush(1000, 100).unwrap();
        assert_eq!(batch.told(0), joins(&[("ada", info("Ada"))]));
        assert_eq!(o.position(), 1);
        o.record("bo", Change::Joined, None);
        assert_eq!(o.due_at(100), Some(1100));
        assert_eq!(o.flush(1050, 100), None, "not before the interval");
        o.record("bo", Change::Left, None);
        let batch = o.flush(1100, 100).unwrap();
        assert!(batch.told(0).is_empty(), "joined and left: nothing");
        assert_eq!(batch.start(2), 1, "synced between the two");
        assert_eq!(
            batch.told(1),
            Told {
                joins: vec![],
                leaves: vec![("bo".into(), None)]
            },
            "one that saw bo join sees it leave"
        );
        assert_eq!((batch.start(0), batch.start(9)), (0, 2));
        for i in [3, 1, 2] {
            o.record(&format!("m{i}"), Change::Joined, None);
        }
        o.record("ada", Change::Left, info("Ada"));
        let batch = o.flush(1200, 100).unwrap();
        let all = batch.told(0);
        assert_eq!(
            all.joins,
            joins(&[("m1", None), ("m2", None), ("m3", None)]).joins
        );
        assert_eq!(
            all.leaves,
            vec![("ada".into(), info("Ada"))],
            "sorted, in one"
        );
        assert_eq!(batch.told(3).joins, vec![], "synced after the joins");
    }

    #[test]
    fn connections_are_counted_once_each() {
        let mut r = Roster::default();
        r.connect("a", 1, None, 0);
        r.connect("a", 1, None, 5);
        r.connect("a", 2, None, 5);
        r.connect("b", 3, None, 5);
        assert_eq!((r.connections(), r.get("a").unwrap().since_ms()), (3, 0));
        r.disconnect("a", 1);
        r.disconnect("a", 1);
        r.disconnect("z", 1);
        assert_eq!(r.connections(), 2);
        assert_eq!(
            (interval_ms(0), interval_ms(500), interval_ms(1000)),
            (250, 250, 500)
        );
        assert_eq!(interval_ms(10_000), 5000);
    }

    #[test]
    fn after_a_wake_positions_carry_on_after_the_highest_seen() {
        let mut o = Outbox::default();
        o.carry_on_after(40);
        assert_eq!(o.position(), 40);
        o.record("a", Change::Joined, None);
        o.carry_on_after(90);
        assert_eq!(o.position(), 41, "not while changes are pending");
        let batch = o.flush(0, 10).unwrap();
        assert_eq!(
            (batch.start(39), batch.start(40), batch.start(41)),
            (0, 0, 1)
        );
    }

    proptest! {
        /// Subscribers arrive at random moments, each sent the roster then (`sync`), and follow
        /// the batches from their position: each ends knowing exactly the roster, never told
        /// of a member twice or of one leaving that it did not know.
        #[test]
        fn every_subscriber_following_the_batches_knows_the_roster(
            ops in prop::collection::vec((0u8..6, 0u8..3, any::<bool>(), 0i64..40), 0..200),
        ) {
            const INTERVAL: i64 = 25;
            let (mut roster, mut outbox) = (Roster::default(), Outbox::default());
            // Each subscriber: its position and what it knows.
            let mut subscribers: Vec<(u64, BTreeSet<String>)> = Vec::new();
            let mut now = 0i64;
            let names = |roster: &Roster| -> BTreeSet<String> {
                roster.list(usize::MAX).map(|(s, _)| s.to_string()).collect()
            };
            let deliver = |batch: Option<Batch>, subscribers: &mut Vec<(u64, BTreeSet<String>)>| {
                let Some(batch) = batch else { return Ok(()) };
                for (position, known) in subscribers.iter_mut() {
                    let told = batch.told(batch.start(*position));
                    for (sub, _) in told.leaves {
                        prop_assert!(known.remove(&sub), "left unknown");
                    }
                    for (sub, _) in told.joins {
                        prop_assert!(known.insert(sub), "shown twice");
                    }
                }
                Ok(())
            };
            for (who, conn, arrive, step) in ops {
                now += step;
                let sub = format!("s{who}");
                let change = match arrive {
                    true => roster.connect(&sub, u64::from(conn), None, now),
                    false => roster.disconnect(&sub, u64::from(conn)),
                };
                outbox.record(&sub, change, None);
                if arrive && who % 2 == 0 {
                    subscribers.push((outbox.position(), names(&roster)));
                }
                deliver(outbox.flush(now, INTERVAL), &mut subscribers)?;
            }
            deliver(outbox.flush(now + INTERVAL, INTERVAL), &mut subscribers)?;
            for (_, known) in &subscribers {
                prop_assert_eq!(known, &names(&roster));
            }
        }
    }
}
