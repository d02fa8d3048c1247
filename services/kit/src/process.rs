//! What Linux's `/proc` says of a process — CPU time, memory, threads, file descriptors — read
//! for the standard `process_*` series every service exports, and by the bench for the suite's
//! processes it started.
//!
//! The prometheus crate's own process collector counted `process_cpu_seconds_total` in whole
//! seconds (it rounded the kernel's ticks down), so a service at 25 % of a core showed as 0, 0,
//! 0, 1 in a rate over a few seconds; here the counter has the kernel's resolution (1/100 s).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts};

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`, 100 on every Linux architecture
/// the suite runs on).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of a `/proc/PID/stat` line the suite uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    /// The command name (in parentheses in the file; it may itself hold spaces and parentheses).
    pub command: String,
    pub parent_pid: u32,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub threads: i64,
    /// When the process started, in clock ticks after boot.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
}

impl Stat {
    /// Parses one `/proc/PID/stat` line.
    pub fn parse(line: &str) -> Option<Self> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        // The fields after the command, from field 3 (state) on: `fields[i]` is field i + 3.
        let fields: Vec<&str> = line.get(close + 2..)?.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).copied();
        let ticks = |n: usize| field(n)?.parse::<u64>().ok();
        Some(Self {
            command: line.get(open + 1..close)?.to_owned(),
            parent_pid: field(4)?.parse().ok()?,
            cpu_seconds: (ticks(14)? + ticks(15)?) as f64 / TICKS_PER_SECOND,
            threads: field(20)?.parse().ok()?,
            start_ticks: ticks(22)?,
            virtual_bytes: ticks(23)?,
        })
    }

    /// Of process `pid`; None once it has gone (or off Linux).
    pub fn of(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Of this process.
    pub fn own() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }
}

/// The ids of the processes running now (the numbered entries of `/proc`).
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Resident memory of a process, now and at its peak, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub resident_bytes: u64,
    /// The most the process ever had resident (the kernel's high-water mark, `VmHWM`).
    pub peak_resident_bytes: u64,
}

impl Memory {
    /// Parses the text of a `/proc/PID/status` file.
    pub fn parse(status: &str) -> Option<Self> {
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
                .map(|v| v * 1024)
        };
        Some(Self {
            resident_bytes: kib("VmRSS")?,
            peak_resident_bytes: kib("VmHWM")?,
        })
    }

    /// Of process `pid`.
    pub fn of(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
    }

    /// Of this process.
    pub fn own() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/self/status").ok()?)
    }
}

/// The soft limit of open files from the text of `/proc/PID/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// When the machine booted, in seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The standard `process_*` series of the running process, read from `/proc/self` at each
/// scrape.
pub struct ProcessCollector {
    descs: Vec<Desc>,
    /// `process_cpu_seconds_total`: a counter made afresh at each scrape with the kernel's
    /// figure, so scrapes at once never add the same difference twice (no state to update).
    cpu: Opts,
    resident: IntGauge,
    virtual_memory: IntGauge,
    threads: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: Gauge,
}

impl ProcessCollector {
    pub fn for_self() -> Self {
        let cpu = Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        );
        let cpu_template = Counter::with_opts(cpu.clone()).expect("metric");
        let int_gauge =
            |name: &str, help: &str| IntGauge::with_opts(Opts::new(name, help)).expect("metric");
        let resident = int_gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_memory = int_gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let threads = int_gauge("process_threads", "Number of OS threads in the process.");
        let open_fds = int_gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = int_gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let start_time = Gauge::with_opts(Opts::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        ))
        .expect("metric");
        if let (Some(boot), Some(stat)) = (boot_time_seconds(), Stat::own()) {
            start_time.set(boot + stat.start_ticks as f64 / TICKS_PER_SECOND);
        }
        let collectors: [&dyn Collector; 7] = [
            &cpu_template,
            &resident,
            &virtual_memory,
            &threads,
            &open_fds,
            &max_fds,
            &start_time,
        ];
        let descs = collectors
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        Self {
            descs,
            cpu,
            resident,
            virtual_memory,
            threads,
            open_fds,
            max_fds,
            start_time,
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(stat) = Stat::own() else {
            return Vec::new();
        };
        self.virtual_memory.set(stat.virtual_bytes as i64);
        self.threads.set(stat.threads);
        if let Some(memory) = Memory::own() {
            self.resident.set(memory.resident_bytes as i64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // Less the descriptor the listing itself holds open.
            self.open_fds.set((fds.count() as i64 - 1).max(0));
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .as_deref()
            .and_then(max_open_files)
        {
            self.max_fds.set(max);
        }
        let mut families = Vec::with_capacity(7);
        let cpu = Counter::with_opts(self.cpu.clone()).expect("metric");
        cpu.inc_by(stat.cpu_seconds);
        families.extend(cpu.collect());
        families.extend(self.resident.collect());
        families.extend(self.virtual_memory.collect());
        families.extend(self.threads.collect());
        families.extend(self.open_fds.collect());
        families.extend(self.max_fds.collect());
        families.extend(self.start_time.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_command_with_spaces_and_parentheses() {
        // As the kernel writes it: pid (comm) state ppid … utime(14) stime(15) … threads(20)
        // itrealvalue(21) starttime(22) vsize(23) rss(24) …
        let line = "4821 (tokio (rt) w) S 1 4821 4821 0 -1 4194560 1200 0 0 0 \
                    250 75 0 0 20 0 3 0 123456 987654321 2048 18446744073709551615";
        let stat = Stat::parse(line).unwrap();
        assert_eq!(stat.command, "tokio (rt) w");
        assert_eq!(stat.parent_pid, 1);
        assert_eq!(stat.cpu_seconds, 3.25);
        assert_eq!(stat.threads, 3);
        assert_eq!(stat.start_ticks, 123_456);
        assert_eq!(stat.virtual_bytes, 987_654_321);
        assert_eq!(Stat::parse("garbage"), None);
        assert_eq!(Stat::parse("1 (short) S 1 2"), None);
    }

    #[test]
    fn memory_comes_from_the_status_file_in_bytes() {
        let status =
            "Name:\tintake\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                resident_bytes: 40 * 1024 * 1024,
                peak_resident_bytes: 50 * 1024 * 1024,
            })
        );
        assert_eq!(Memory::parse("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_is_among_the_running_ones_with_its_parent() {
        let own = std::process::id();
        assert!(pids().any(|pid| pid == own));
        assert_eq!(
            Stat::of(own).map(|s| s.parent_pid),
            Some(std::os::unix::process::parent_id())
        );
    }

    #[test]
    fn the_open_files_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95364                95364                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files("Max open files  unlimited  unlimited files"),
            None
        );
    }

    /// Spins until this process has used `seconds` more of CPU time (however busy the machine).
    fn burn(seconds: f64) {
        let start = Stat::own().unwrap().cpu_seconds;
        let mut x = 1u64;
        while Stat::own().unwrap().cpu_seconds - start < seconds {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        }
    }

    fn series(families: &[MetricFamily], name: &str) -> f64 {
        let family = families
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("{name} exported"));
        let metric = &family.get_metric()[0];
        if name.ends_with("_total") {
            metric.get_counter().get_value()
        } else {
            metric.get_gauge().get_value()
        }
    }

    #[test]
    fn the_cpu_counter_moves_by_fractions_of_a_second() {
        let collector = ProcessCollector::for_self();
        let before = series(&collector.collect(), "process_cpu_seconds_total");
        burn(0.15);
        // The exported figure lies between two direct readings taken around it (whole seconds,
        // rounded down, would fall below the first).
        let direct_before = Stat::own().unwrap().cpu_seconds;
        let families = collector.collect();
        let direct_after = Stat::own().unwrap().cpu_seconds;
        let after = series(&families, "process_cpu_seconds_total");
        assert!(
            direct_before <= after && after <= direct_after,
            "exported {after}, read {direct_before} and {direct_after}"
        );
        assert!(after - before >= 0.15, "{before} → {after}");
        assert!(series(&families, "process_resident_memory_bytes") > 1_000_000.0);
        assert!(series(&families, "process_threads") >= 1.0);
        assert!(series(&families, "process_open_fds") >= 3.0);
        assert!(series(&families, "process_max_fds") >= 3.0);
        let started = series(&families, "process_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started > now - 3600.0 && started <= now + 1.0,
            "{started} vs {now}"
        );
    }
}
