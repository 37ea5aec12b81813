//! `edgehub-bench`: starts the release hub and a no-op Worker under local workerd (`wrangler
//! dev`, both behind its proxy), runs the seven scenarios of docs/benchmarks.md a few times each,
//! prints every figure beside its target (never asserting one), writes bench/results.json and
//! regenerates the table in docs/benchmarks.md. Run it with `make bench` (`ARGS=--quick` for a
//! small smoke run). With `--nchan`, nchan runs beside it as a comparison column (issue 18).
//! Modules: `runtime` (the `wrangler dev` processes), `nchan` (nginx with nchan), `procfs`
//! (memory, fds, machine), `client` and `streams` (HTTP, SSE, WebSocket), `stats`, `report`,
//! `scenario/`.

mod client;
mod nchan;
mod procfs;
mod report;
mod runtime;
mod scenario;
mod stats;
mod streams;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::nchan::Nchan;
use crate::scenario::{Plan, Scenario, Setup};
use crate::stats::Figures;

const USAGE: &str = "usage: edgehub-bench [--quick] [--runs N] [--only LIST] [--idle-connections N]
                     [--nchan | --no-nchan] [--out FILE] [--docs FILE] [--merge] [--keep]

Benchmarks edgehub under local workerd (wrangler dev). Build the Worker first (`make build`;
`make bench` does both).
  --quick       small counts and one run, for smoke-testing; writes under target/bench/
                unless --out / --docs say otherwise
  --runs N      repetitions of each scenario (default 3; 1 with --quick)
  --only LIST   comma-separated scenarios: latency,fanout,idle,polling,publish,presence,
                topics (default: all)
  --idle-connections N
                idle connections wanted per kind (default 10000; 200 with --quick); fewer
                are opened when the fd limit cannot hold them
  --nchan       also measure nchan (nginx-light with libnginx-mod-nchan, installed with
                apt-get when missing) on 127.0.0.1 in latency, fanout, idle and polling, and
                report edgehub ÷ nchan; if it cannot be installed or started, the column is
                skipped with the reason
  --no-nchan    do not (the default)
  --out FILE    the results (default bench/results.json)
  --docs FILE   the page whose generated table is rewritten (default docs/benchmarks.md)
  --merge       keep the figures and notes of the scenarios that do not run from the results
                already at --out (same mode), say which run they came from, and write both
                there and into the table; without it the results hold only what ran
  --keep        keep the runtimes' persist dirs and logs under target/bench-tmp/";

/// The whole run may not take longer than this, whatever happens.
const FULL_DEADLINE: Duration = Duration::from_secs(40 * 60);
const QUICK_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// More time for the runs to start in with `--nchan`.
const NCHAN_BUDGET: Duration = Duration::from_secs(5 * 60);

struct Args {
    quick: bool,
    runs: usize,
    idle_connections: Option<usize>,
    only: Vec<Scenario>,
    out: PathBuf,
    docs: PathBuf,
    merge: bool,
    keep: bool,
    nchan: bool,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("edgehub-bench: {why}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgehub-bench: cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("edgehub-bench: {why}");
            ExitCode::FAILURE
        }
    }
}

/// Starts both runtimes, runs the plan, and stops both runtimes (their whole process groups)
/// whatever happened: an error, the deadline, or Ctrl-C.
async fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    // Read before anything runs, so that a file it cannot merge with costs no run.
    let kept = match args.merge {
        true => Some(report::read_kept(&args.out, &args.only, args.quick)?),
        false => None,
    };
    let fd_limit = procfs::raise_fd_limit()?;
    let mut plan = Plan::new(args.quick, args.runs, fd_limit);
    if let Some(n) = args.idle_connections {
        plan.idle_connections = n;
    }
    if args.nchan && !args.quick {
        // What nchan's passes add to a full run (docs/benchmarks.md#nchan-cost), so that they
        // do not push the last scenarios' runs past the budget.
        plan.budget += NCHAN_BUDGET;
    }
    eprintln!(
        "edgehub-bench: {} mode, {} run(s) of {}; fd limit {fd_limit}",
        if args.quick { "quick" } else { "full" },
        plan.runs,
        args.only
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (mut nchan, nchan_skipped) = start_nchan(&args, fd_limit).await;
    let mut hub = match runtime::start_hub(args.keep).await {
        Ok(h) => h,
        Err(why) => {
            stop_nchan(&mut nchan, args.keep).await;
            return Err(why);
        }
    };
    let mut noop = match runtime::start_noop(args.keep).await {
        Ok(n) => n,
        Err(why) => {
            hub.stop().await;
            stop_nchan(&mut nchan, args.keep).await;
            return Err(why);
        }
    };
    eprintln!(
        "edgehub-bench: hub at {} (pgid {}), no-op Worker at {} (pgid {}), up after {:.1?}",
        hub.base(),
        hub.pgid().unwrap_or(0),
        noop.base(),
        noop.pgid().unwrap_or(0),
        started.elapsed()
    );
    let mut setup = Setup::new(&hub, &noop, args.keep);
    setup.nchan = nchan.as_ref().map(Nchan::endpoint);
    let deadline = if args.quick {
        QUICK_DEADLINE
    } else {
        FULL_DEADLINE
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(deadline, scenario::run_all(&plan, &args.only, &setup)) => match r {
            Ok(figures) => Ok(figures),
            Err(_) => Err(format!("the run took longer than {deadline:?}; stopped")),
        },
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    hub.stop().await;
    noop.stop().await;
    let nchan_version = nchan.as_ref().map(|n| n.version.clone());
    stop_nchan(&mut nchan, args.keep).await;
    if !args.keep {
        hub.remove_dir();
        noop.remove_dir();
    }
    let mut figures: Figures = outcome?;
    if let Some(why) = nchan_skipped {
        figures.note(format!("nchan column skipped: {why}"));
    }
    let mut meta = report::Meta::collect(&plan, &args.only, started.elapsed());
    meta.nchan = nchan_version;
    if let Some(kept) = kept {
        meta.kept = kept.from.clone();
        figures = report::merge(figures, kept);
    }
    report::print(&figures, &meta);
    report::write_json(&args.out, &figures, &meta)?;
    report::write_docs(&args.docs, &figures, &meta)?;
    eprintln!(
        "edgehub-bench: wrote {} and {} after {:.1?}",
        args.out.display(),
        args.docs.display(),
        started.elapsed()
    );
    Ok(())
}

/// Starts nchan when `--nchan` asked for it and a scenario with an nchan column runs; otherwise,
/// or when it cannot be installed or started, says why the column is skipped (never an error).
async fn start_nchan(args: &Args, fd_limit: u64) -> (Option<Nchan>, Option<String>) {
    if !args.nchan {
        return (None, None);
    }
    if !args.only.iter().any(|s| s.has_nchan_column()) {
        let why = "none of the scenarios run has an nchan column (latency, fanout, idle, polling)";
        eprintln!("edgehub-bench: nchan column skipped: {why}");
        return (None, Some(why.into()));
    }
    let started = Instant::now();
    match Nchan::start(fd_limit).await {
        Ok(n) => {
            let e = n.endpoint();
            eprintln!(
                "edgehub-bench: nchan at {} (pgid {}; {}; config {}), up after {:.1?}",
                e.base,
                e.pgid,
                n.version,
                n.dir().join("nginx.conf").display(),
                started.elapsed()
            );
            (Some(n), None)
        }
        Err(why) => {
            eprintln!("edgehub-bench: nchan column skipped: {why}");
            (None, Some(why))
        }
    }
}

async fn stop_nchan(nchan: &mut Option<Nchan>, keep: bool) {
    if let Some(n) = nchan {
        n.stop().await;
        if !keep {
            n.remove_dir();
        }
    }
}

fn parse_args(list: Vec<String>) -> Result<Option<Args>, String> {
    let root = runtime::root();
    let (mut quick, mut runs, mut only, mut out, mut docs, mut keep) =
        (false, None, None, None, None, false);
    let mut merge = false;
    let mut nchan = false;
    let mut idle_connections = None;
    let mut it = list.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => quick = true,
            "--keep" => keep = true,
            "--merge" => merge = true,
            "--nchan" => nchan = true,
            "--no-nchan" => nchan = false,
            "--runs" => {
                let n: usize = value("--runs")?
                    .parse()
                    .map_err(|_| "--runs wants a number".to_string())?;
                if !(1..=10).contains(&n) {
                    return Err("--runs must be 1 to 10".into());
                }
                runs = Some(n);
            }
            "--idle-connections" => {
                let n: usize = value("--idle-connections")?
                    .parse()
                    .map_err(|_| "--idle-connections wants a number".to_string())?;
                if !(1..=100_000).contains(&n) {
                    return Err("--idle-connections must be 1 to 100000".into());
                }
                idle_connections = Some(n);
            }
            "--only" => only = Some(Scenario::parse_list(&value("--only")?)?),
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--docs" => docs = Some(PathBuf::from(value("--docs")?)),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let scratch = root.join("target/bench");
    let default_out = match quick {
        true => scratch.join("results-quick.json"),
        false => root.join("bench/results.json"),
    };
    let default_docs = match quick {
        true => scratch.join("benchmarks-quick.md"),
        false => root.join("docs/benchmarks.md"),
    };
    Ok(Some(Args {
        quick,
        runs: runs.unwrap_or(if quick { 1 } else { 3 }),
        idle_connections,
        only: only.unwrap_or_else(|| Scenario::ALL.to_vec()),
        out: out.unwrap_or(default_out),
        docs: docs.unwrap_or(default_docs),
        merge,
        keep,
        nchan,
    }))
}
