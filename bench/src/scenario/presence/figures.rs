//! The figures and the note of one run of the presence scenario, from what its phases recorded.

use std::time::Duration;

use super::member::{Seen, PING_EVERY};
use super::traffic::{self, Delivery, Sent};
use super::{Storm, CONNECT_CONCURRENCY, LEAVE_WAIT, OBSERVERS, SCENARIO};
use crate::scenario::Plan;
use crate::stats::{percent_of, percentile_ms, Figures, Target, Unit};

/// Everything one run recorded; times in `client::micros()`.
pub struct Run<'a> {
    pub plan: &'a Plan,
    /// The first publish of the baseline, which ends when the control starts.
    pub baseline: u64,
    pub control: Storm,
    /// When the observers had caught up after the control, if they did.
    pub settled: Option<u64>,
    pub members: Storm,
    pub sent: Vec<Sent>,
    /// Each observer's deliveries.
    pub delivered: Vec<Vec<Delivery>>,
    /// The channel's head after the last publish.
    pub head: u64,
    /// Why an observer stopped early, if one did.
    pub reader_end: Option<String>,
}

pub fn of(run: &Run) -> Figures {
    let mut f = Figures::default();
    let n = run.plan.presence_members;
    let (control, members) = (&run.control, &run.members);
    let window = |from: u64, to: u64| traffic::latencies(&run.delivered, from, to);
    let base = window(run.baseline, control.start);
    let during_control = window(control.start, control.end);
    let storm = window(members.start, members.end);
    let leave = window(members.leave, members.left());
    let mut add = |id: &str, label: &str, unit: Unit, target: Option<Target>, v: f64| {
        f.add(SCENARIO, &format!("presence.{id}"), label, unit, target, v);
    };
    let (p50, p99) = (
        |v: &[Duration]| percentile_ms(v, 0.5),
        |v: &[Duration]| percentile_ms(v, 0.99),
    );
    let vs = |v: &[Duration], of: &[Duration]| match p99(of) {
        b if b > 0.0 => percent_of(p99(v), b),
        _ => f64::NAN,
    };
    add(
        "baseline.p50",
        "no crowd: publish → deliver p50",
        Unit::Ms,
        None,
        p50(&base),
    );
    add(
        "baseline.p99",
        "no crowd: publish → deliver p99",
        Unit::Ms,
        None,
        p99(&base),
    );

    let who = format!("control, {n} plain subscribers");
    add(
        "control.open",
        &format!("{who}: first connect → all open"),
        Unit::Ms,
        None,
        ms(control.open.saturating_sub(control.start)),
    );
    add(
        "control.p50",
        &format!("{who}: publish → deliver p50"),
        Unit::Ms,
        None,
        p50(&during_control),
    );
    add(
        "control.p99",
        &format!("{who}: publish → deliver p99"),
        Unit::Ms,
        None,
        p99(&during_control),
    );
    add(
        "control.p99_vs_baseline",
        "control vs no crowd: p99",
        Unit::Percent,
        None,
        vs(&during_control, &base),
    );
    add_cpu(&mut add, "control", "control", control);

    let who = format!("storm, {n} members");
    add(
        "storm.open",
        &format!("{who}: first connect → all open"),
        Unit::Ms,
        None,
        ms(members.open.saturating_sub(members.start)),
    );
    add(
        "storm.synced",
        &format!("{who}: first connect → every member knows all {n}"),
        Unit::Ms,
        None,
        ms(members.end.saturating_sub(members.start)),
    );
    add(
        "storm.knew_all",
        &format!("{who}: members that came to know all {n}"),
        Unit::Count,
        Some(Target::AtLeast(n as f64)),
        members.knew_all as f64,
    );
    let median = |pick: fn(&Seen) -> u64| {
        let mut v: Vec<u64> = members.seen.iter().map(pick).collect();
        v.sort_unstable();
        v.get(v.len() / 2).map_or(f64::NAN, |x| *x as f64)
    };
    let most = members.seen.iter().map(|s| s.frames).max().unwrap_or(0);
    add(
        "storm.frames.median",
        "storm: presence frames per member, median",
        Unit::Count,
        None,
        median(|s| s.frames),
    );
    add(
        "storm.frames.max",
        "storm: presence frames per member, max",
        Unit::Count,
        None,
        most as f64,
    );
    add(
        "storm.diffs.median",
        "… of which `diff`, median",
        Unit::Count,
        None,
        median(|s| s.diffs),
    );
    add(
        "storm.joins.median",
        "… of which `join`, median",
        Unit::Count,
        None,
        median(|s| s.joins),
    );
    add(
        "storm.kib.median",
        "storm: presence bytes per member, median",
        Unit::Kib,
        None,
        median(|s| s.bytes) / 1024.0,
    );
    add(
        "storm.p50",
        "storm: publish → deliver p50",
        Unit::Ms,
        None,
        p50(&storm),
    );
    add(
        "storm.p99",
        "storm: publish → deliver p99",
        Unit::Ms,
        None,
        p99(&storm),
    );
    add(
        "storm.max",
        "storm: publish → deliver max",
        Unit::Ms,
        None,
        percentile_ms(&storm, 1.0),
    );
    add(
        "storm.p99_vs_baseline",
        "storm vs no crowd: p99",
        Unit::Percent,
        None,
        vs(&storm, &base),
    );
    add(
        "storm.p99_vs_control",
        "storm vs control: p99",
        Unit::Percent,
        None,
        vs(&storm, &during_control),
    );
    let mut took: Vec<Duration> = run
        .sent
        .iter()
        .filter(|s| (members.start..members.end).contains(&s.at_us))
        .map(|s| s.took)
        .collect();
    took.sort();
    add(
        "storm.publish_p99",
        "storm: publish answered p99",
        Unit::Ms,
        None,
        p99(&took),
    );
    add_cpu(&mut add, "storm", "storm", members);

    add(
        "leave.empty",
        &format!("leave storm: all {n} close → the listing counts none"),
        Unit::Ms,
        None,
        match members.empty {
            Ok(at) => ms(at.saturating_sub(members.leave)),
            Err(_) => f64::NAN,
        },
    );
    add(
        "leave.p50",
        "leave storm: publish → deliver p50",
        Unit::Ms,
        None,
        p50(&leave),
    );
    add(
        "leave.p99",
        "leave storm: publish → deliver p99",
        Unit::Ms,
        None,
        p99(&leave),
    );
    add(
        "leave.p99_vs_baseline",
        "leave storm vs no crowd: p99",
        Unit::Percent,
        None,
        vs(&leave, &base),
    );

    let refused = run.sent.iter().filter(|s| s.outcome.is_err()).count();
    add(
        "refused",
        "publishes not answered 201 (whole run)",
        Unit::Count,
        Some(Target::AtMost(0.0)),
        refused as f64,
    );
    add(
        "delivered",
        "observers: events delivered, of all stored",
        Unit::Percent,
        Some(Target::AtLeast(100.0)),
        traffic::delivered_share(&run.delivered, run.head),
    );
    f.note(note(run));
    f
}

/// CPU by role over a storm (100 % is one core busy).
fn add_cpu(
    add: &mut impl FnMut(&str, &str, Unit, Option<Target>, f64),
    id: &str,
    label: &str,
    storm: &Storm,
) {
    let secs = (storm.cpu_us as f64 / 1e6).max(1e-3);
    for ((role, after), (_, before)) in storm.cpu.after.iter().zip(&storm.cpu.before) {
        let key: String = role.chars().filter(char::is_ascii_alphanumeric).collect();
        add(
            &format!("{id}.cpu.{key}"),
            &format!("CPU during the {label}: {role}"),
            Unit::Percent,
            None,
            100.0 * (after - before) / secs,
        );
    }
}

/// The run's note: counts, and whatever went wrong.
fn note(run: &Run) -> String {
    let n = run.plan.presence_members;
    let (control, members) = (&run.control, &run.members);
    let bytes: u64 = members.seen.iter().map(|s| s.bytes).sum();
    let frames: u64 = members.seen.iter().map(|s| s.frames).sum();
    let mut text = format!(
        "presence: {OBSERVERS} observers; {} of {n} plain subscribers (the control) and {} of \
         {n} members opened, {CONNECT_CONCURRENCY} connecting at a time, each pinging every {} \
         s; {} publishes, one every {} ms; the members got {frames} presence frames, {:.1} MB, \
         in the storm",
        control.seen.len(),
        members.seen.len(),
        PING_EVERY.as_secs(),
        run.sent.len(),
        run.plan.presence_publish_every.as_millis(),
        bytes as f64 / 1e6,
    );
    for (what, storm) in [("control", control), ("storm", members)] {
        if let Some(why) = storm.failed.first() {
            text += &format!(
                "; {what}: {} failed to open, the first: {why}",
                storm.failed.len()
            );
        }
        let ended: Vec<&Seen> = storm.seen.iter().filter(|s| s.ended.is_some()).collect();
        if let Some(first) = ended.iter().min_by_key(|s| s.ended_at) {
            let silent = ended
                .iter()
                .filter_map(|s| s.ended_at.map(|at| at.saturating_sub(s.pinged_at)))
                .max()
                .unwrap_or(0);
            text += &format!(
                "; {what}: {} sockets ended before their close, the first {:.1} s after the first \
                 connect: {}; none had gone more than {:.1} s without sending `ping`",
                ended.len(),
                first.ended_at.unwrap_or(0).saturating_sub(storm.start) as f64 / 1e6,
                first.ended.as_deref().unwrap_or_default(),
                silent as f64 / 1e6,
            );
        }
        if let Err(last) = storm.empty {
            text += &format!(
                "; {what}: the channel still counted {} of the crowd {LEAVE_WAIT:?} after the \
                 close",
                last.map_or("?".into(), |l| l.to_string())
            );
        }
    }
    let odd: u64 = members.seen.iter().map(|s| s.odd).sum();
    if let Some(what) = members.seen.iter().find_map(|s| s.first_odd.as_ref()) {
        text += &format!("; {odd} presence frames broke the rules, the first: {what}");
    }
    let lost: u64 = members.seen.iter().map(|s| s.lost).sum();
    if lost > 0 {
        text += &format!("; members stopped knowing everyone {lost} times");
    }
    let failed: Vec<&Sent> = run.sent.iter().filter(|s| s.outcome.is_err()).collect();
    if let Some(why) = failed.iter().find_map(|s| s.outcome.as_ref().err()) {
        let phases = [
            ("the baseline", control.start),
            ("the control", members.start),
            ("the storm", members.leave),
            ("the leave storm and after", u64::MAX),
        ];
        let (mut from, mut by_phase) = (0, Vec::new());
        for (phase, until) in phases {
            let k = failed
                .iter()
                .filter(|s| (from..until).contains(&s.at_us))
                .count();
            by_phase.push(format!("{k} in {phase}"));
            from = until;
        }
        text += &format!(
            "; {} publishes failed ({}), the first: {why}",
            failed.len(),
            by_phase.join(", ")
        );
    }
    let resynced = members.seen.iter().filter(|s| s.syncs != 1).count();
    if resynced > 0 {
        text += &format!("; {resynced} members did not get exactly one `sync`");
    }
    if run.settled.is_none() {
        text += "; the observers had not caught up after the control when the storm began";
    }
    if let Some(why) = &run.reader_end {
        text += &format!("; an observer: {why}");
    }
    text
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}
