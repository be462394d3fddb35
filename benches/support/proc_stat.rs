//! CPU time from /proc, shared by the benches that report CPU a link
//! (`#[path]`-included: a file under benches/support/ is no bench target).

/// Microseconds a clock tick (USER_HZ = 100 on Linux).
pub const TICK_US: f64 = 10_000.0;

/// Clock ticks of CPU (user + system) in one /proc stat file
/// (`/proc/<pid>/stat`, `/proc/self/task/<tid>/stat`), if it can be read.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let s = std::fs::read_to_string(stat).ok()?;
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime), counted from the state (field 3).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}
