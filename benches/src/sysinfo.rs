//! What the harness reads about the process and the machine (Linux `/proc`).

use std::collections::BTreeMap;

/// Peak resident set size of this process, in bytes (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// Current resident set size, in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS:").map(|kb| kb * 1024)
}

fn status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Resets the peak RSS to the current RSS, so that a run's peak is its own.
/// Returns false where the kernel does not support it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time (seconds) of every thread of this process, by thread id, with its name.
pub fn thread_cpu() -> BTreeMap<u64, (String, f64)> {
    thread_cpu_of("self")
}

/// CPU time (seconds) of every thread of process `pid` (`"self"` for this
/// one), by thread id, with its name.
pub fn thread_cpu_of(pid: &str) -> BTreeMap<u64, (String, f64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let p = e.path();
        let name = std::fs::read_to_string(p.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        // schedstat: nanoseconds on CPU, precise; stat: clock ticks, coarse.
        let secs = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .map(|ns| ns as f64 / 1e9)
            .or_else(|| {
                let s = std::fs::read_to_string(p.join("stat")).ok()?;
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some(ticks as f64 / 100.0)
            })
            .unwrap_or(0.0);
        out.insert(tid, (name, secs));
    }
    out
}

/// The role of a thread, from its name.
pub fn role(thread_name: &str) -> &'static str {
    if thread_name.starts_with("sluice-worker") {
        "workers (parse, route, filter, encode)"
    } else if thread_name.starts_with("sluice-delivery") {
        "delivery (batching, plugin calls)"
    } else if thread_name.starts_with("sluice-bench-gen") {
        "load generator"
    } else if thread_name.starts_with("sluice-sink-") {
        "local sink server (the vendor's stand-in)"
    } else if thread_name.starts_with("sluice-aws") || thread_name.starts_with("reqwest-") {
        "plugin I/O runtimes"
    } else if thread_name.starts_with("sluice-bench")
        || thread_name.starts_with("sluice-rejects")
        || thread_name.starts_with("sluice-metrics")
    {
        "harness and bookkeeping"
    } else {
        "ingest (read, frame, shard)"
    }
}

/// A description of the machine: CPU model, cores, memory.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or("? GiB".to_string(), |kb| {
            format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    format!("{cpu}, {cores} cores, {mem}")
}

/// The git commit the working tree is at (with `+dirty` when modified), if known.
pub fn commit() -> String {
    if let Ok(c) = std::env::var("SLUICE_COMMIT") {
        return c;
    }
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}+dirty") } else { c }
        }
        None => "unknown".into(),
    }
}
