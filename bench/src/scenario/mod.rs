//! The seven scenarios, their sizes (`Plan`: full or `--quick`) and the order they run in. Each
//! scenario runs `plan.runs` times on fresh channels and adds one value per run to each of its
//! figures; a failed run is noted and the others go on.

mod fanout;
mod idle;
mod latency;
mod limit;
mod polling;
mod presence;
mod publish;
mod topics;

use std::time::{Duration, Instant};

use crate::nchan::Endpoint;
use crate::runtime::Runtime;
use crate::stats::Figures;

/// The scenarios, in the order docs/benchmarks.md presents them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Latency,
    Fanout,
    Idle,
    Polling,
    Publish,
    Presence,
    Topics,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Latency,
        Scenario::Fanout,
        Scenario::Idle,
        Scenario::Polling,
        Scenario::Publish,
        Scenario::Presence,
        Scenario::Topics,
    ];
    /// The order they run in: publishing last, so that its D1 mirror backlog cannot weigh on
    /// another scenario; polling early, on a quiet hub; topics, the newest, just before
    /// publishing, so that the others run as they did before it.
    pub const RUN_ORDER: [Scenario; 7] = [
        Scenario::Latency,
        Scenario::Polling,
        Scenario::Fanout,
        Scenario::Idle,
        Scenario::Presence,
        Scenario::Topics,
        Scenario::Publish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Fanout => "fanout",
            Scenario::Idle => "idle",
            Scenario::Polling => "polling",
            Scenario::Publish => "publish",
            Scenario::Presence => "presence",
            Scenario::Topics => "topics",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Latency => "1. Publish → deliver latency, one subscriber",
            Scenario::Fanout => "2. Fan-out: SSE and WebSocket subscribers on one channel",
            Scenario::Idle => "3. Idle connections: memory and hibernation",
            Scenario::Polling => "4. Polling throughput",
            Scenario::Publish => "5. Publish throughput",
            Scenario::Presence => "6. Presence: a join storm of members on one channel",
            Scenario::Topics => "7. Topics and Mercure: filtered subscribers and the Mercure face",
        }
    }

    /// Whether the scenario measures nchan too, with `--nchan`.
    pub fn has_nchan_column(self) -> bool {
        matches!(
            self,
            Scenario::Latency | Scenario::Fanout | Scenario::Idle | Scenario::Polling
        )
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn parse_list(list: &str) -> Result<Vec<Scenario>, String> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let s = Scenario::from_name(name).ok_or(format!("unknown scenario {name:?}"))?;
            if !out.contains(&s) {
                out.push(s);
            }
        }
        match out.is_empty() {
            true => Err("--only names no scenario".into()),
            false => Ok(out),
        }
    }
}

/// How big each scenario is. Full sizes are the ones docs/benchmarks.md describes.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub runs: usize,
    pub latency_events: u64,
    pub latency_warmup: u64,
    /// Rounds of each transport on the fresh hub before the first latency run.
    pub latency_cold: u64,
    pub fanout_subscribers: usize,
    /// A second, lighter fan-out: the latency when the runtime is not saturated.
    pub fanout_light_subscribers: usize,
    pub fanout_rate: u64,
    pub fanout_seconds: u64,
    /// Idle connections of each kind wanted (fewer if the fd limit cannot hold them).
    pub idle_connections: usize,
    /// Idle time before the hibernation check: the local runtime evicts after about 10 s.
    pub idle_wait: Duration,
    pub poll_concurrency: usize,
    pub poll_seconds: f64,
    pub publish_concurrency: usize,
    pub publish_seconds: f64,
    pub publish_channels: usize,
    /// Presence members in the join storm.
    pub presence_members: usize,
    /// Publishing with no crowd, before the storms: the baseline they are compared with.
    pub presence_baseline: Duration,
    /// The pace of the events published throughout. Every connection of a crowd gets each, so
    /// 5 a second to 1,000 is 5,000 deliveries a second, a third of what this runtime delivers
    /// (scenario 2); at 50 a second the events alone swamp it, with or without presence
    /// (docs/benchmarks.md#presence).
    pub presence_publish_every: Duration,
    /// Mercure pass: updates, one at a time, each also published natively for comparison.
    pub topics_mercure_events: u64,
    /// Filtered passes: events per channel, one at a time; one in ten matches the filter.
    pub topics_events: u64,
    /// Unmeasured events before each topics pass.
    pub topics_warmup: u64,
    /// The fd soft limit the bench and the runtimes run with.
    pub fd_limit: u64,
    /// No run starts after this much time has gone: the ones left are skipped, with a note.
    pub budget: Duration,
}

impl Plan {
    pub fn new(quick: bool, runs: usize, fd_limit: u64) -> Plan {
        Plan {
            quick,
            runs,
            latency_events: if quick { 50 } else { 1000 },
            latency_warmup: if quick { 5 } else { 20 },
            latency_cold: if quick { 100 } else { 10_000 },
            fanout_subscribers: if quick { 100 } else { 1000 },
            fanout_light_subscribers: if quick { 20 } else { 100 },
            fanout_rate: 20,
            fanout_seconds: if quick { 3 } else { 10 },
            idle_connections: if quick { 200 } else { 10_000 },
            idle_wait: Duration::from_secs(15),
            poll_concurrency: 10,
            poll_seconds: if quick { 2.0 } else { 5.0 },
            publish_concurrency: 10,
            publish_seconds: if quick { 2.0 } else { 5.0 },
            publish_channels: if quick { 10 } else { 100 },
            presence_members: if quick { 100 } else { 1000 },
            presence_baseline: Duration::from_secs(if quick { 3 } else { 20 }),
            presence_publish_every: Duration::from_millis(200),
            topics_mercure_events: if quick { 50 } else { 1000 },
            topics_events: if quick { 300 } else { 2000 },
            topics_warmup: if quick { 5 } else { 20 },
            fd_limit,
            budget: Duration::from_secs(if quick { 8 * 60 } else { 25 * 60 }),
        }
    }
}

/// Where the runtimes are.
#[derive(Clone, Debug)]
pub struct Setup {
    pub hub: String,
    pub hub_port: u16,
    pub hub_pgid: u32,
    pub noop: String,
    pub noop_port: u16,
    pub noop_pgid: u32,
    /// Keep the persist dirs of runtimes started by a scenario.
    pub keep: bool,
    /// nchan, when `--nchan` asked for the comparison and it could start.
    pub nchan: Option<Endpoint>,
}

impl Setup {
    pub fn new(hub: &Runtime, noop: &Runtime, keep: bool) -> Setup {
        Setup {
            hub: hub.base().to_string(),
            hub_port: hub.port(),
            hub_pgid: hub.pgid().unwrap_or(0),
            noop: noop.base().to_string(),
            noop_port: noop.port(),
            noop_pgid: noop.pgid().unwrap_or(0),
            keep,
            nchan: None,
        }
    }

    /// The same setup with `hub` as the hub.
    pub fn with_hub(&self, hub: &Runtime) -> Setup {
        Setup {
            hub: hub.base().to_string(),
            hub_port: hub.port(),
            hub_pgid: hub.pgid().unwrap_or(0),
            ..self.clone()
        }
    }
}

/// Runs the chosen scenarios, each `plan.runs` times. Never fails: a failed run becomes a note.
pub async fn run_all(plan: &Plan, only: &[Scenario], setup: &Setup) -> Figures {
    let mut all = Figures::default();
    let began = Instant::now();
    for scenario in Scenario::RUN_ORDER.into_iter().filter(|s| only.contains(s)) {
        let scenario_began = Instant::now();
        for run in 1..=plan.runs {
            if began.elapsed() > plan.budget {
                eprintln!(
                    "edgehub-bench: {} run {run} skipped: over the time budget",
                    scenario.name()
                );
                all.note(format!(
                    "{} run {run} skipped: the bench had run for over {} min",
                    scenario.name(),
                    plan.budget.as_secs() / 60
                ));
                continue;
            }
            let started = Instant::now();
            eprintln!(
                "edgehub-bench: {} run {run}/{} …",
                scenario.name(),
                plan.runs
            );
            let result = match scenario {
                Scenario::Latency => latency::run(plan, setup).await,
                Scenario::Fanout => fanout::run(plan, setup).await,
                Scenario::Idle => idle::run(plan, setup).await,
                Scenario::Polling => polling::run(plan, setup).await,
                Scenario::Publish => publish::run(plan, setup).await,
                Scenario::Presence => presence::run(plan, setup).await,
                Scenario::Topics => topics::run(plan, setup).await,
            };
            match result {
                Ok(figures) => {
                    for f in &figures.list {
                        if let Some(v) = f.values.last() {
                            eprintln!("    {:<52} {}", f.label, f.unit.format(*v));
                        }
                    }
                    all.extend(figures);
                }
                Err(why) => {
                    eprintln!("    FAILED: {why}");
                    all.note(format!("{} run {run} failed: {why}", scenario.name()));
                }
            }
            eprintln!("    ({:.1?})", started.elapsed());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        all.note(format!(
            "time: {} took {} s for {} run(s)",
            scenario.name(),
            scenario_began.elapsed().as_secs(),
            plan.runs
        ));
    }
    all
}
