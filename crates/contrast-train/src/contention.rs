//! How much of the machine's CPU other processes took while a run trained.
//!
//! Throughput and wall time are only as clean as the machine was: a build, a test
//! suite or another run beside training slows it without changing any of its
//! results. Each epoch therefore records the share of the machine's CPU time that
//! went to anything but this process (other processes, other ranks of the same job
//! on the same machine, and time the hypervisor stole), so that a table can tell a
//! disturbed timing from a slow method.
//!
//! Read from Linux's `/proc/stat` (machine-wide CPU time in clock ticks, all
//! CPUs) and `/proc/self/stat` (this process's user and system time, every thread).
//! Elsewhere, or when either cannot be read, there is no figure.

/// The share of the machine's CPU going to others above which a run's or an epoch's
/// timings are called disturbed: a few percent is the background of an idle machine
/// (the shell, the page cache, the hypervisor), a build or a second run takes tens.
pub const DISTURBED: f64 = 0.05;

/// A reading of the machine's and this process's CPU clocks, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuClock {
    /// Ticks every CPU spent busy (user, nice, system, interrupts, steal).
    busy: u64,
    /// Ticks every CPU spent busy or idle (waiting for I/O counts as idle).
    total: u64,
    /// Ticks this process's threads ran (user and system).
    own: u64,
}

impl CpuClock {
    /// The clocks now; `None` where `/proc` does not give them.
    pub fn now() -> Option<Self> {
        let machine = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        Self::parse(&machine, &own)
    }

    /// The clocks from the text of `/proc/stat` and `/proc/self/stat`.
    pub fn parse(machine: &str, own: &str) -> Option<Self> {
        let (busy, total) = machine_ticks(machine)?;
        Some(Self {
            busy,
            total,
            own: own_ticks(own)?,
        })
    }

    /// The share (0 to 1) of the machine's CPU time between `self` and `later` that
    /// went to anything but this process; `None` when no time passed.
    pub fn others_share(&self, later: &Self) -> Option<f64> {
        let total = later.total.checked_sub(self.total)?;
        if total == 0 {
            return None;
        }
        let busy = later.busy.saturating_sub(self.busy);
        let own = later.own.saturating_sub(self.own);
        // The two files are read a moment apart, so own may exceed busy by a tick.
        Some((busy.saturating_sub(own) as f64 / total as f64).min(1.0))
    }
}

/// Busy and total ticks from the aggregate `cpu` line of `/proc/stat`: `user nice
/// system idle iowait irq softirq steal [guest guest_nice]` (guest time is already
/// inside user and nice).
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy, busy + idle + iowait))
}

/// User plus system ticks from `/proc/self/stat`: fields 14 and 15, counted after
/// the parenthesised command name (which may itself hold spaces and parentheses).
fn own_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(user: u64, idle: u64, steal: u64) -> String {
        format!("cpu  {user} 5 10 {idle} 3 0 2 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 9\n")
    }

    fn own(utime: u64, stime: u64) -> String {
        format!("4242 (a (b) c) R 1 2 3 0 -1 4194304 122 0 0 0 {utime} {stime} 0 0 20 0 1 0")
    }

    #[test]
    fn parses_both_files() {
        let c = CpuClock::parse(&machine(100, 50, 7), &own(30, 4)).unwrap();
        assert_eq!(
            c,
            CpuClock {
                busy: 100 + 5 + 10 + 2 + 7,
                total: 100 + 5 + 10 + 50 + 3 + 2 + 7,
                own: 34
            }
        );
        assert_eq!(CpuClock::parse("intr 1\n", &own(1, 1)), None);
        assert_eq!(CpuClock::parse("cpu  1 2 3\n", &own(1, 1)), None);
        assert_eq!(CpuClock::parse(&machine(1, 1, 1), "12 (x) R 1"), None);
    }

    #[test]
    fn others_take_what_this_process_did_not() {
        let a = CpuClock::parse(&machine(100, 100, 0), &own(0, 0)).unwrap();
        // 200 more ticks: 150 busy (this process 90 of them, steal 10), 50 idle.
        let b = CpuClock::parse(&machine(240, 150, 10), &own(80, 10)).unwrap();
        let share = a.others_share(&b).unwrap();
        assert!((share - 60.0 / 200.0).abs() < 1e-12, "{share}");
        // Alone on the machine: nothing went to others.
        let c = CpuClock::parse(&machine(190, 150, 0), &own(80, 10)).unwrap();
        assert_eq!(a.others_share(&c), Some(0.0));
        assert_eq!(a.others_share(&a), None);
    }

    #[test]
    fn reads_this_machine_where_proc_exists() {
        if !std::path::Path::new("/proc/stat").exists() {
            return;
        }
        let a = CpuClock::now().expect("/proc/stat and /proc/self/stat parse");
        // Spin until this process's clock and the machine's both move (a tick is 10 ms
        // of CPU; a busy test machine may give this thread a fraction of the wall time,
        // and /proc/stat's totals can lag the process's own count by a tick), 10 s at
        // most.
        let t = std::time::Instant::now();
        let mut b = a;
        while (b.own == a.own || b.total == a.total) && t.elapsed().as_secs() < 10 {
            std::hint::black_box((0..10_000u64).sum::<u64>());
            b = CpuClock::now().unwrap();
        }
        assert!(b.own > a.own && b.total > a.total, "{a:?} {b:?}");
        let share = a.others_share(&b).unwrap();
        assert!((0.0..=1.0).contains(&share), "{share}");
    }
}
