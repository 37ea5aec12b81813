//! What the bench reads from `/proc` (Linux only): the processes of a runtime's process group,
//! their proportional set size (`smaps_rollup`'s `Pss`), CPU time, open fds and fd limits, and
//! the machine (cores, memory, CPU model). Also raises our own fd soft limit to the hard limit.

use std::fs;

pub use edgehub_launch::group_pids;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Roles of a runtime's processes, by what they run. The proxy is wrangler dev's workerd that
/// listens on the port clients use; the worker is the workerd running the Worker, its Durable
/// Objects and the local D1 (under `scripts/serve.mjs`, the only workerd); node is wrangler's,
/// or `serve.mjs`'s, which holds its connection front (docs/benchmarks.md#fd-limit).
pub const ROLES: [&str; 3] = [
    "workerd (worker)",
    "workerd (proxy)",
    "node (wrangler or the front)",
];

/// One live process of a group.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub role: Option<&'static str>,
}

/// PSS of a group's runtime processes (workerd and node), in KiB, and each role's share.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub total_kib: u64,
    pub by_role: Vec<(&'static str, u64)>,
}

impl Memory {
    pub fn role(&self, role: &str) -> u64 {
        self.by_role
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, k)| *k)
            .sum()
    }
}

/// Raises our fd soft limit to the hard limit (the runtimes we spawn inherit it). Returns it.
pub fn raise_fd_limit() -> Result<u64, String> {
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        return Ok(limit.current.unwrap_or(u64::MAX));
    };
    if limit.current.is_some_and(|soft| soft >= hard) {
        return Ok(hard);
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    setrlimit(Resource::Nofile, raised).map_err(|e| format!("raising the fd limit: {e}"))?;
    Ok(hard)
}

/// The group's processes with their roles; `port` tells the proxy workerd from the other.
pub fn group(pgid: u32, port: u16) -> Vec<Proc> {
    let entry = format!("--socket-addr=entry=127.0.0.1:{port}");
    let pids = group_pids(pgid);
    let comm = |pid: u32| fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    // Without wrangler dev's proxy (`scripts/serve.mjs`) the one workerd serves the port itself.
    let workerds = pids
        .iter()
        .filter(|p| comm(**p).trim() == "workerd")
        .count();
    pids.into_iter()
        .map(|pid| {
            let comm = comm(pid);
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let role = match comm.trim() {
                "workerd" if workerds > 1 && cmdline.contains(&entry) => Some(ROLES[1]),
                "workerd" => Some(ROLES[0]),
                c if c.starts_with("node") => Some(ROLES[2]),
                _ => None,
            };
            Proc { pid, role }
        })
        .collect()
}

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`, 100 on Linux's usual builds).
const TICKS_PER_S: f64 = 100.0;

/// CPU time (user + system) a process has used so far, seconds; `pid` may be `self`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after `(comm)`: state is the first; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_S)
}

/// CPU seconds used so far by the group's workerd and node processes, by role.
pub fn cpu_by_role(pgid: u32, port: u16) -> Vec<(&'static str, f64)> {
    let mut out: Vec<(&'static str, f64)> = Vec::new();
    for p in group(pgid, port) {
        let Some(role) = p.role else { continue };
        let secs = cpu_seconds(&p.pid.to_string()).unwrap_or(0.0);
        match out.iter_mut().find(|(r, _)| *r == role) {
            Some((_, s)) => *s += secs,
            None => out.push((role, secs)),
        }
    }
    out
}

/// PSS of every live process of a group (nchan's nginx master and worker), in KiB.
pub fn group_pss_kib(pgid: u32) -> u64 {
    group_pids(pgid).into_iter().filter_map(pss_kib).sum()
}

/// CPU seconds used so far by every live process of a group.
pub fn group_cpu_seconds(pgid: u32) -> f64 {
    group_pids(pgid)
        .into_iter()
        .filter_map(|pid| cpu_seconds(&pid.to_string()))
        .sum()
}

/// PSS of the group's workerd and node processes.
pub fn memory(pgid: u32, port: u16) -> Memory {
    let mut mem = Memory::default();
    for p in group(pgid, port) {
        let Some(role) = p.role else { continue };
        let kib = pss_kib(p.pid).unwrap_or(0);
        mem.total_kib += kib;
        match mem.by_role.iter_mut().find(|(r, _)| *r == role) {
            Some((_, k)) => *k += kib,
            None => mem.by_role.push((role, kib)),
        }
    }
    mem
}

/// `Pss:` of `/proc/<pid>/smaps_rollup`, in KiB.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&text, "Pss:")
}

/// Open fds of one process.
pub fn fd_count(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Open fds of our own process.
pub fn own_fd_count() -> u64 {
    fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// The soft `Max open files` of a process.
pub fn fd_limit(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The machine: logical cores, memory in bytes, the CPU model.
pub fn machine() -> (usize, u64, String) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let cores = match cores {
        0 => std::thread::available_parallelism().map_or(0, |n| n.get()),
        n => n,
    };
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = kib_field(&meminfo, "MemTotal:").unwrap_or(0) * 1024;
    (cores, mem, model)
}

/// The number after `name` on its line, in a `/proc` file whose sizes are in kB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
