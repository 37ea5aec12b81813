//! Presence, as a channel's object keeps it (DESIGN.md "Presence", issue 15): who is on the
//! channel (`Roster`: one member per `sub`, however many connections; it joins with its first
//! and leaves with its last) and what its presence subscribers are told (`Outbox`: join and
//! leave events, coalesced so that a storm of arrivals cannot starve publishes). Pure: the
//! object rebuilds the roster from its sockets' attachments when it wakes, feeds it connects and
//! disconnects, and sends what the outbox flushes. The frames are `protocol::presence`'s. The
//! object does not use this module yet.

use crate::auth::Info;
use std::collections::BTreeMap;

/// One member: its info (from its first connection's token), how many connections it has, and
/// since when it is present (unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub info: Option<Info>,
    pub connections: u32,
    pub since_ms: i64,
}

/// What a connect or a disconnect did to the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new member: the others are told it joined.
    Joined,
    /// Its last connection went: the others are told it left.
    Left,
    /// One more or one fewer connection of a member that stays: nobody is told.
    Unchanged,
}

/// Every member of a channel, by `sub` (sorted, as `GET /channels/{c}/presence` lists them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    members: BTreeMap<String, Member>,
}

impl Roster {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn get(&self, sub: &str) -> Option<&Member> {
        self.members.get(sub)
    }

    /// Whether one more connection of `sub` fits under `max_members` (a new member needs room;
    /// another connection of a member does not).
    pub fn admits(&self, sub: &str, max_members: usize) -> bool {
        self.members.contains_key(sub) || self.members.len() < max_members
    }

    /// A connection of `sub` arrived at `now_ms`. The member keeps the info and the time of its
    /// first connection.
    pub fn connect(&mut self, sub: &str, info: Option<Info>, now_ms: i64) -> Change {
        match self.members.get_mut(sub) {
            Some(member) => {
                member.connections = member.connections.saturating_add(1);
                Change::Unchanged
            }
            None => {
                let member = Member {
                    info,
                    connections: 1,
                    since_ms: now_ms,
                };
                self.members.insert(sub.to_string(), member);
                Change::Joined
            }
        }
    }

    /// A connection of `sub` went. A disconnect of a member that is not there changes nothing
    /// (a socket closed twice, or one counted before a restart): a member never goes below zero.
    pub fn disconnect(&mut self, sub: &str) -> Change {
        let Some(member) = self.members.get_mut(sub) else {
            return Change::Unchanged;
        };
        if member.connections > 1 {
            member.connections -= 1;
            return Change::Unchanged;
        }
        self.members.remove(sub);
        Change::Left
    }

    /// The members, sorted by `sub`, at most `limit` (the total is `len`).
    pub fn list(&self, limit: usize) -> impl Iterator<Item = (&str, &Member)> {
        self.members
            .iter()
            .take(limit)
            .map(|(sub, member)| (sub.as_str(), member))
    }
}

/// A presence event for the channel's presence subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Join {
        sub: String,
        info: Option<Info>,
    },
    Leave {
        sub: String,
        info: Option<Info>,
    },
    /// Too many changes at once to send one by one: the whole roster again (every presence
    /// subscriber replaces what it knew).
    Resync,
}

/// Join and leave events waiting to go out: sent at most every `interval_ms`, a member that
/// joined and left (or left and came back) within one interval says nothing, and more than
/// `max_events` changes in one interval become one `Resync`. So 1,000 members arriving within
/// a second cost each presence subscriber a few frames, not 1,000, and publishes keep flowing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbox {
    /// Each changed member's net change, and the info to show with it.
    pending: BTreeMap<String, (Change, Option<Info>)>,
    /// When the last flush went out (unix milliseconds).
    flushed_at_ms: i64,
}

impl Outbox {
    /// Records a roster change of `sub`.
    pub fn record(&mut self, sub: &str, change: Change, info: Option<Info>) {
        if change == Change::Unchanged {
            return;
        }
        match self.pending.get(sub).map(|(c, _)| *c) {
            // Joined then left, or left then joined again, within one interval: nothing to say.
            Some(earlier) if earlier != change => {
                self.pending.remove(sub);
            }
            _ => {
                self.pending.insert(sub.to_string(), (change, info));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the next flush may go out, if anything waits (`None`: nothing waits).
    pub fn due_at(&self, interval_ms: i64) -> Option<i64> {
        (!self.pending.is_empty()).then(|| self.flushed_at_ms.saturating_add(interval_ms))
    }

    /// What to send now, if the interval has passed since the last flush: the changes in `sub`
    /// order, or one `Resync` when there are more than `max_events`.
    pub fn flush(&mut self, now_ms: i64, interval_ms: i64, max_events: usize) -> Vec<Notice> {
        if self.pending.is_empty() || now_ms < self.flushed_at_ms.saturating_add(interval_ms) {
            return Vec::new();
        }
        self.flushed_at_ms = now_ms;
        let pending = std::mem::take(&mut self.pending);
        if pending.len() > max_events {
            return vec![Notice::Resync];
        }
        pending
            .into_iter()
            .map(|(sub, (change, info))| match change {
                Change::Left => Notice::Leave { sub, info },
                _ => Notice::Join { sub, info },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(name: &str) -> Option<Info> {
        Info::parse(&format!(r#"{{"name":"{name}"}}"#)).ok()
    }

    #[test]
    fn a_member_is_one_sub_however_many_connections() {
        let mut r = Roster::default();
        assert_eq!(r.connect("ada", info("Ada"), 10), Change::Joined);
        assert_eq!(r.connect("ada", info("Other"), 20), Change::Unchanged);
        assert_eq!(r.connect("bo", None, 30), Change::Joined);
        let ada = r.get("ada").unwrap();
        assert_eq!(
            (ada.connections, ada.since_ms, &ada.info),
            (2, 10, &info("Ada"))
        );
        assert_eq!(r.disconnect("ada"), Change::Unchanged);
        assert_eq!(r.disconnect("ada"), Change::Left);
        assert_eq!(r.disconnect("ada"), Change::Unchanged, "never below zero");
        assert_eq!(r.list(10).map(|(s, _)| s).collect::<Vec<_>>(), vec!["bo"]);
    }

    #[test]
    fn the_cap_refuses_new_members_only() {
        let mut r = Roster::default();
        r.connect("a", None, 0);
        r.connect("b", None, 0);
        assert!(!r.admits("c", 2));
        assert!(r.admits("a", 2), "another connection of a member");
        let listed: Vec<&str> = r.list(1).map(|(s, _)| s).collect();
        assert_eq!((listed, r.len()), (vec!["a"], 2));
    }

    #[test]
    fn changes_within_an_interval_are_coalesced() {
        let mut o = Outbox::default();
        o.record("ada", Change::Joined, info("Ada"));
        o.record("bo", Change::Joined, None);
        o.record("bo", Change::Left, None);
        o.record("cy", Change::Unchanged, None);
        assert_eq!(o.due_at(100), Some(100));
        assert_eq!(o.flush(50, 100, 10), vec![], "not before the interval");
        assert_eq!(
            o.flush(100, 100, 10),
            vec![Notice::Join {
                sub: "ada".into(),
                info: info("Ada")
            }]
        );
        assert!(o.is_empty() && o.due_at(100).is_none());
        for i in 0..11 {
            o.record(&format!("m{i}"), Change::Joined, None);
        }
        assert_eq!(
            o.flush(150, 100, 10),
            vec![],
            "the interval counts from the last flush"
        );
        assert_eq!(o.flush(200, 100, 10), vec![Notice::Resync]);
    }

    proptest! {
        /// Whatever the connects and disconnects, a subscriber that applies every flush (a
        /// resync replacing what it knew) knows exactly the roster: nobody twice, nobody left
        /// behind.
        #[test]
        fn a_subscriber_following_the_flushes_knows_the_roster(
            ops in prop::collection::vec((0u8..6, any::<bool>(), 0i64..40), 0..200),
            max_events in 1usize..8,
        ) {
            let (mut roster, mut outbox) = (Roster::default(), Outbox::default());
            let mut known: BTreeMap<String, ()> = BTreeMap::new();
            let mut now = 0i64;
            let apply = |notices: Vec<Notice>, roster: &Roster, known: &mut BTreeMap<String, ()>| {
                for n in notices {
                    match n {
                        Notice::Join { sub, .. } => {
                            prop_assert!(known.insert(sub, ()).is_none(), "shown twice");
                        }
                        Notice::Leave { sub, .. } => {
                            prop_assert!(known.remove(&sub).is_some(), "left unknown");
                        }
                        Notice::Resync => {
                            *known = roster.list(usize::MAX).map(|(s, _)| (s.to_string(), ())).collect();
                        }
                    }
                }
                Ok(())
            };
            for (who, arrive, step) in ops {
                now += step;
                let sub = format!("s{who}");
                let change = match arrive {
                    true => roster.connect(&sub, None, now),
                    false => roster.disconnect(&sub),
                };
                outbox.record(&sub, change, None);
                apply(outbox.flush(now, 25, max_events), &roster, &mut known)?;
            }
            apply(outbox.flush(now + 25, 25, max_events), &roster, &mut known)?;
            let want: BTreeMap<String, ()> = roster.list(usize::MAX).map(|(s, _)| (s.to_string(), ())).collect();
            prop_assert_eq!(known, want);
        }
    }
}
