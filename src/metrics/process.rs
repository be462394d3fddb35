//! Process metrics under the names every Prometheus client library uses
//! (`process_*`), read from /proc/self when /metrics is scraped: a few small
//! reads, so the values are as of the scrape. Elsewhere than Linux they are
//! simply absent.

use metrics::{Unit, describe_gauge, gauge};

const CPU: &str = "process_cpu_seconds_total";
const RESIDENT: &str = "process_resident_memory_bytes";
const OPEN_FDS: &str = "process_open_fds";
const MAX_FDS: &str = "process_max_fds";
const START_TIME: &str = "process_start_time_seconds";

/// Clock ticks per second of /proc's times: USER_HZ, fixed at 100 in Linux's
/// user-space ABI whatever the kernel's HZ.
const USER_HZ: f64 = 100.0;

pub(super) fn describe() {
    describe_gauge!(CPU, Unit::Seconds, "User and system CPU time spent");
    describe_gauge!(RESIDENT, Unit::Bytes, "Resident memory size");
    describe_gauge!(OPEN_FDS, "Open file descriptors");
    describe_gauge!(MAX_FDS, "Maximum number of open file descriptors");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "Start time of the process since the Unix epoch"
    );
}

pub(super) fn refresh() {
    let Some(snapshot) = read() else { return };
    gauge!(CPU).set(snapshot.cpu_seconds);
    gauge!(RESIDENT).set(snapshot.resident_bytes);
    gauge!(OPEN_FDS).set(snapshot.open_fds);
    if let Some(max) = snapshot.max_fds {
        gauge!(MAX_FDS).set(max);
    }
    if let Some(start) = snapshot.start_time {
        gauge!(START_TIME).set(start);
    }
}

#[derive(Debug)]
struct Snapshot {
    cpu_seconds: f64,
    resident_bytes: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    start_time: Option<f64>,
}

fn read() -> Option<Snapshot> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (utime, stime, start_ticks) = times(&stat)?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| field_u64(&s, "btime"));
    Some(Snapshot {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        resident_bytes: field_u64(&status, "VmRSS:")? as f64 * 1024.0,
        open_fds,
        max_fds: std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| max_open_files(&l)),
        start_time: boot_time.map(|b| b as f64 + start_ticks as f64 / USER_HZ),
    })
}

/// utime, stime and starttime (fields 14, 15 and 22) of /proc/self/stat. The
/// command name (field 2) may hold spaces and parentheses: count from the last `)`.
fn times(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let at = |field: usize| fields.get(field - 3)?.parse().ok();
    Some((at(14)?, at(15)?, at(22)?))
}

/// The first number after `name` on the line that starts with it.
fn field_u64(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1234 0 0";
        assert_eq!(times(stat), Some((250, 50, 1234)));
    }

    #[test]
    fn the_soft_limit_of_open_files_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 1048576              files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn this_process_reads_its_own_numbers() {
        let s = read().expect("/proc/self is readable on Linux");
        assert!(s.resident_bytes > 1_000_000.0, "{s:?}");
        assert!(s.open_fds >= 3.0, "{s:?}");
        assert!(s.start_time.unwrap() > 1.6e9, "{s:?}");
    }
}
