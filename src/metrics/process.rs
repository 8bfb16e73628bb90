//! Process metrics read from `/proc/self` at each scrape: resident memory,
//! open and maximum file descriptors, CPU time and start time. Rendered by
//! hand because the CPU counter is fractional, which the facade's integer
//! counters cannot carry. Where `/proc` is missing (not Linux) only the
//! start time is reported.

use std::fmt::Write as _;

use super::name;

/// Clock ticks per second of `/proc/<pid>/stat` times. `USER_HZ` is 100 on
/// every Linux architecture in use (the Prometheus Go client assumes the
/// same), and reading `sysconf` would need `libc` for one constant.
const USER_HZ: f64 = 100.0;

/// Fields of `/proc/self/stat` after the command name, zero-based from
/// field 3 (`state`).
const UTIME: usize = 11;
const STIME: usize = 12;
const STARTTIME: usize = 19;

struct Stat {
    cpu_seconds: f64,
    start_ticks: f64,
}

fn stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces and parentheses: split after the last `)`.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some(Stat {
        cpu_seconds: (field(UTIME)? + field(STIME)?) / USER_HZ,
        start_ticks: field(STARTTIME)?,
    })
}

/// Unix seconds the process started at, from the boot time and the
/// process's start tick.
pub(super) fn start_time() -> Option<f64> {
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: f64 = boot
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime + stat()?.start_ticks / USER_HZ)
}

fn resident_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

fn open_fds() -> Option<f64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count() as f64)
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

fn push(out: &mut String, metric: &str, kind: &str, help: &str, value: Option<f64>) {
    let Some(value) = value else { return };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {metric} {help}");
    let _ = writeln!(out, "# TYPE {metric} {kind}");
    let _ = writeln!(out, "{metric} {value}");
    out.push('\n');
}

/// Appends the process metrics to `out` in text format.
pub(super) fn render(out: &mut String, start_time: f64) {
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    let stat = stat();
    push(
        out,
        name::PROCESS_CPU_SECONDS_TOTAL,
        "counter",
        "User and system CPU time spent, in seconds.",
        stat.as_ref().map(|s| s.cpu_seconds),
    );
    push(
        out,
        name::PROCESS_RESIDENT_MEMORY_BYTES,
        "gauge",
        "Resident memory size in bytes.",
        resident_bytes(),
    );
    push(
        out,
        name::PROCESS_OPEN_FDS,
        "gauge",
        "Open file descriptors.",
        open_fds(),
    );
    push(
        out,
        name::PROCESS_MAX_FDS,
        "gauge",
        "Soft limit on open file descriptors.",
        max_fds(),
    );
    push(
        out,
        name::PROCESS_START_TIME_SECONDS,
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        Some(start_time),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_proc_self() {
        let mut out = String::new();
        render(&mut out, start_time().expect("start time"));
        for metric in [
            name::PROCESS_CPU_SECONDS_TOTAL,
            name::PROCESS_RESIDENT_MEMORY_BYTES,
            name::PROCESS_OPEN_FDS,
            name::PROCESS_MAX_FDS,
            name::PROCESS_START_TIME_SECONDS,
        ] {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{metric} ")))
                .unwrap_or_else(|| panic!("{metric} missing in {out}"));
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .expect("number");
            assert!(value > 0.0, "{line}");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let started = start_time().expect("start time");
        assert!(started <= now + 1.0 && started > now - 86_400.0 * 365.0);
    }
}
