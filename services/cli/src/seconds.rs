//! A bench run second by second: the complaints accepted and fully propagated in each second,
//! its calls (latency percentiles by RPC, errors by code), the propagation delay of the
//! complaints submitted in it, each service's and PostgreSQL's CPU and the services' resident
//! memory, the machine's busy and stolen CPU, PostgreSQL's WAL syncs, and how fast the host ran.
//!
//! The host's speed comes from a probe: a thread that, every [`PROBE_PERIOD`], runs the same
//! fixed computation (about half a millisecond of arithmetic, no memory traffic) and reads how
//! much CPU time it took from `/proc/thread-self/schedstat`. Time spent waiting for a CPU is not
//! in that figure, so the suite's own load hardly moves it; a host that runs this machine's
//! cores slower (a busy neighbour on the same physical core, a lower clock) does. On the shared
//! hosts these benchmarks run on, a single-threaded loop on an idle machine ran at 60 % of its
//! usual speed for seconds at a time with no time shown as stolen. The probe sees compute speed
//! only, not memory or disk, and costs about 0.25 % of one core.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::suite::SERVICE_NAMES;

/// How often the probe runs its computation.
pub const PROBE_PERIOD: Duration = Duration::from_millis(200);
/// About how much CPU time one probe computation takes on a fast host. With the period, about
/// 0.25 % of one core (a probe of 1 ms ten times a second came with a SubmitComplaint p99 1 ms
/// higher at half load in 3 pairs against a build without it; this one showed no difference).
const PROBE_WORK: Duration = Duration::from_micros(500);
/// A second whose host speed is at least this share of the fastest second counts as "at
/// speed" in the summary.
pub const AT_SPEED: f64 = 0.9;
/// A second below this share of the fastest counts as slow.
pub const SLOW: f64 = 0.8;

/// One finished call: when it began (since the load started), which RPC, how long it took,
/// and the code it failed with, if it failed unexpectedly.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub began_ms: u32,
    pub rpc: &'static str,
    pub micros: u32,
    pub error: Option<tonic::Code>,
}

/// How an unexpected error is counted: `RPC Code`, as in the whole run's `errors`.
pub fn error_key(rpc: &str, code: tonic::Code) -> String {
    format!("{rpc} {code:?}")
}

/// One probe computation: when it ended (since the load started) and the CPU time it took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe {
    pub at_ms: u32,
    pub cpu_ns: u64,
}

/// p50/p95/p99/max (ms) and count of a set of latencies.
#[derive(Clone, Debug, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Of latencies in microseconds (sorted here).
    pub fn of(mut micros: Vec<u32>) -> Self {
        micros.sort_unstable();
        Self {
            count: micros.len(),
            p50_ms: percentile(&micros, 50.0),
            p95_ms: percentile(&micros, 95.0),
            p99_ms: percentile(&micros, 99.0),
            max_ms: percentile(&micros, 100.0),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"count": self.count, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms})
    }
}

/// The nearest-rank percentile `p` (0–100) of sorted microseconds, in milliseconds.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

/// What was sampled at the end of each second. CPU figures are rates over the time since the
/// previous sample (CPU seconds a second, 1.0 = one core busy), so a late sample is not read
/// as a busier second: the machine's busy and stolen CPU, each service's CPU and its resident
/// bytes at the sample (in [`SERVICE_NAMES`] order), and the CPU of every PostgreSQL process
/// and of the bench itself. PostgreSQL's WAL syncs in the second, with the milliseconds they
/// took (when the server times them, `track_wal_io_timing`), are counts, and so are the
/// automatic vacuums and analyzes of the suite's tables that finished in the second.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub machine: Option<(f64, f64)>,
    pub wal: Option<(f64, Option<f64>)>,
    pub autovacuum: Option<f64>,
    pub services: Vec<Option<(f64, f64)>>,
    pub postgres: Option<f64>,
    /// The bench's own CPU seconds in it (the load generator).
    pub bench: Option<f64>,
}

/// Everything recorded during the measured load, in milliseconds since it started.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recorded<'a> {
    pub calls: &'a [Call],
    /// `(submitted_ms, delay_us)` of each propagated complaint.
    pub delays: &'a [(u32, u32)],
    /// When each accepted complaint's SubmitComplaint returned.
    pub accepted_ms: &'a [u32],
    /// When each complaint was seen fully propagated (case opened, both clocks started); those
    /// seen after the last second (while the bench waits for the stragglers) are left out.
    pub propagated_ms: &'a [u32],
    /// One a second, in order.
    pub samples: &'a [Sample],
    pub probes: &'a [Probe],
}

/// What one second of the load looked like.
#[derive(Clone, Debug, PartialEq)]
pub struct Second {
    pub second: usize,
    /// Complaints whose SubmitComplaint returned accepted in it.
    pub accepted: u64,
    /// Complaints seen fully propagated in it.
    pub propagated: u64,
    /// The calls that began in it, by RPC.
    pub rpc: BTreeMap<&'static str, Latency>,
    /// Calls that began in it and failed unexpectedly, by [`error_key`].
    pub errors: BTreeMap<String, u64>,
    /// Propagation delay of the complaints submitted in it.
    pub propagation: Option<Latency>,
    /// (busy, stolen) CPU of the whole machine in it (CPU seconds a second), when sampled.
    pub machine: Option<(f64, f64)>,
    /// PostgreSQL's WAL syncs in it, and the milliseconds they took (see [`Sample`]).
    pub wal: Option<(f64, Option<f64>)>,
    /// Automatic vacuums and analyzes of the suite's tables that finished in it: a second of
    /// them is a second in which PostgreSQL worked for more than the load.
    pub autovacuum: Option<f64>,
    /// Its probe computations' median speed against the fastest computation of the run.
    pub host_speed: Option<f64>,
    /// Each service's (CPU seconds a second in it, resident bytes at its end), in
    /// [`SERVICE_NAMES`] order, where read.
    pub services: Vec<Option<(f64, f64)>>,
    /// CPU seconds a second of every PostgreSQL process in it.
    pub postgres: Option<f64>,
    /// The bench's own CPU seconds a second in it.
    pub bench: Option<f64>,
}

impl Second {
    pub fn json(&self) -> serde_json::Value {
        let rpc: serde_json::Map<String, serde_json::Value> = self
            .rpc
            .iter()
            .map(|(name, l)| ((*name).to_owned(), l.json()))
            .collect();
        let services: serde_json::Map<String, serde_json::Value> = SERVICE_NAMES
            .iter()
            .zip(&self.services)
            .filter_map(|(name, reading)| {
                let (cpu, rss) = (*reading)?;
                Some((
                    (*name).to_owned(),
                    serde_json::json!({"cpu_percent": cpu * 100.0, "rss_mib": rss / MIB}),
                ))
            })
            .collect();
        serde_json::json!({
            "second": self.second,
            "accepted": self.accepted,
            "propagated": self.propagated,
            "rpc": rpc,
            "errors": self.error_count(),
            "errors_by_code": self.errors,
            "services": services,
            "postgres_cpu_percent": self.postgres.map(|cpu| cpu * 100.0),
            "bench_cpu_percent": self.bench.map(|cpu| cpu * 100.0),
            "propagation_delay_ms": self.propagation.as_ref().map(|l| serde_json::json!({"p50": l.p50_ms, "p99": l.p99_ms})),
            "machine_busy_percent": self.machine.map(|(busy, _)| busy * 100.0),
            "stolen_s": self.machine.map(|(_, steal)| steal),
            "wal_syncs": self.wal.map(|(syncs, _)| syncs),
            "wal_sync_ms": self.wal.and_then(|(_, ms)| ms),
            "autovacuum_passes": self.autovacuum,
            "host_speed_percent": self.host_speed.map(|s| s * 100.0),
        })
    }

    /// Unexpected errors of the calls that began in it.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Bytes in a mebibyte.
pub const MIB: f64 = 1_048_576.0;

/// Latency by RPC of the calls given.
pub fn by_rpc<'a>(calls: impl IntoIterator<Item = &'a Call>) -> BTreeMap<&'static str, Latency> {
    let mut micros: BTreeMap<&'static str, Vec<u32>> = BTreeMap::new();
    for call in calls {
        micros.entry(call.rpc).or_default().push(call.micros);
    }
    micros
        .into_iter()
        .map(|(name, micros)| (name, Latency::of(micros)))
        .collect()
}

/// The seconds `0..seconds` of a run: calls and propagation delays go to the second they
/// began in, acceptances to the second they happened in (anything past the end to the last
/// second: its call began in the run), propagations to the second they happened in (none past
/// the end: see [`propagated_after`]), samples are one a second in order, probes go to the
/// second their computation ended in.
pub fn per_second(seconds: usize, recorded: &Recorded<'_>) -> Vec<Second> {
    let seconds = seconds.max(1);
    let slot = |ms: u32| (ms as usize / 1000).min(seconds - 1);
    let mut in_second: Vec<Vec<&Call>> = vec![Vec::new(); seconds];
    for call in recorded.calls {
        in_second[slot(call.began_ms)].push(call);
    }
    let mut propagation: Vec<Vec<u32>> = vec![Vec::new(); seconds];
    for (submitted_ms, delay_us) in recorded.delays {
        propagation[slot(*submitted_ms)].push(*delay_us);
    }
    let count = |times: &mut dyn Iterator<Item = &u32>| {
        let mut counts = vec![0u64; seconds];
        for ms in times {
            counts[slot(*ms)] += 1;
        }
        counts
    };
    let accepted = count(&mut recorded.accepted_ms.iter());
    let end = (seconds * 1000) as u32;
    let propagated = count(&mut recorded.propagated_ms.iter().filter(|ms| **ms < end));
    let speeds = host_speeds(seconds, recorded.probes);
    in_second
        .into_iter()
        .zip(propagation)
        .enumerate()
        .map(|(second, (calls, delays))| {
            let sample = recorded.samples.get(second);
            let mut errors = BTreeMap::new();
            for call in &calls {
                if let Some(code) = call.error {
                    *errors.entry(error_key(call.rpc, code)).or_default() += 1;
                }
            }
            Second {
                second,
                accepted: accepted[second],
                propagated: propagated[second],
                rpc: by_rpc(calls.iter().copied()),
                errors,
                propagation: (!delays.is_empty()).then(|| Latency::of(delays)),
                machine: sample.and_then(|s| s.machine),
                wal: sample.and_then(|s| s.wal),
                autovacuum: sample.and_then(|s| s.autovacuum),
                host_speed: speeds[second],
                services: sample.map(|s| s.services.clone()).unwrap_or_default(),
                postgres: sample.and_then(|s| s.postgres),
                bench: sample.and_then(|s| s.bench),
            }
        })
        .collect()
}

/// How many complaints were seen propagated after the last of `seconds` whole seconds.
pub fn propagated_after(seconds: usize, propagated_ms: &[u32]) -> usize {
    let end = (seconds.max(1) * 1000) as u32;
    propagated_ms.iter().filter(|ms| **ms >= end).count()
}

/// Each second's host speed: the median CPU time of its probe computations against the
/// fastest computation of the whole run (1.0 = as fast as the host ever ran the probe).
pub fn host_speeds(seconds: usize, probes: &[Probe]) -> Vec<Option<f64>> {
    let mut by_second: Vec<Vec<u64>> = vec![Vec::new(); seconds];
    for probe in probes.iter().filter(|p| p.cpu_ns > 0) {
        if let Some(slot) = by_second.get_mut(probe.at_ms as usize / 1000) {
            slot.push(probe.cpu_ns);
        }
    }
    let Some(fastest) = probes.iter().map(|p| p.cpu_ns).filter(|n| *n > 0).min() else {
        return vec![None; seconds];
    };
    by_second
        .into_iter()
        .map(|mut ns| {
            if ns.is_empty() {
                return None;
            }
            ns.sort_unstable();
            Some(fastest as f64 / ns[ns.len() / 2] as f64)
        })
        .collect()
}

/// The run's host speed in brief, and an RPC's latency over the seconds at speed.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSummary {
    pub median: f64,
    pub slowest: f64,
    pub measured: usize,
    pub slow: usize,
    /// The RPC's calls in the seconds at [`AT_SPEED`] or faster, and how many seconds those were.
    pub at_speed: Option<(usize, Latency)>,
}

/// Summarises the seconds' host speeds, with the latency of `rpc`'s calls that began in the
/// seconds at speed.
pub fn host_summary(seconds: &[Second], calls: &[Call], rpc: &str) -> Option<HostSummary> {
    let mut speeds: Vec<f64> = seconds.iter().filter_map(|s| s.host_speed).collect();
    if speeds.is_empty() {
        return None;
    }
    speeds.sort_by(f64::total_cmp);
    let fast: Vec<bool> = seconds
        .iter()
        .map(|s| s.host_speed.is_some_and(|v| v >= AT_SPEED))
        .collect();
    let last = seconds.len().saturating_sub(1);
    let micros: Vec<u32> = calls
        .iter()
        .filter(|c| c.rpc == rpc && fast[(c.began_ms as usize / 1000).min(last)])
        .map(|c| c.micros)
        .collect();
    let fast_seconds = fast.iter().filter(|f| **f).count();
    Some(HostSummary {
        median: speeds[speeds.len() / 2],
        slowest: speeds[0],
        measured: speeds.len(),
        slow: speeds.iter().filter(|v| **v < SLOW).count(),
        at_speed: (fast_seconds > 0).then(|| (fast_seconds, Latency::of(micros))),
    })
}

/// When automatic vacuums and analyzes of the suite's tables ran, and an RPC's latency without
/// those seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct AutovacuumSummary {
    /// Passes finished in the run.
    pub passes: f64,
    /// Seconds (0-based) in which passes finished, and the one before each: a pass works for
    /// up to a second before it finishes.
    pub seconds: Vec<usize>,
    /// The RPC's calls that began in every other second, and how many seconds those were.
    pub elsewhere: (usize, Latency),
}

/// Summarises the seconds' automatic vacuums and analyzes (see [`AutovacuumSummary`]); `None`
/// when no second was sampled.
pub fn autovacuum_summary(
    seconds: &[Second],
    calls: &[Call],
    rpc: &str,
) -> Option<AutovacuumSummary> {
    if seconds.iter().all(|s| s.autovacuum.is_none()) {
        return None;
    }
    let mut busy = vec![false; seconds.len()];
    for (i, second) in seconds.iter().enumerate() {
        if second.autovacuum.is_some_and(|passes| passes > 0.0) {
            busy[i] = true;
            busy[i.saturating_sub(1)] = true;
        }
    }
    let last = seconds.len().saturating_sub(1);
    let micros: Vec<u32> = calls
        .iter()
        .filter(|c| c.rpc == rpc && !busy[(c.began_ms as usize / 1000).min(last)])
        .map(|c| c.micros)
        .collect();
    Some(AutovacuumSummary {
        passes: seconds.iter().filter_map(|s| s.autovacuum).sum(),
        seconds: (0..seconds.len()).filter(|i| busy[*i]).collect(),
        elsewhere: (busy.iter().filter(|b| !**b).count(), Latency::of(micros)),
    })
}

/// CPU time this thread has spent on a CPU, in nanoseconds (`/proc/thread-self/schedstat`).
/// The kernel brings the figure up to date when the thread stops running (it blocks or is
/// preempted), not while it runs: read right after a sleep it is exact up to that sleep.
pub fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// A fixed amount of arithmetic that the optimiser cannot remove.
fn spin(iterations: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

/// The probe thread; [`HostProbe::stop`] ends it and returns what it measured.
pub struct HostProbe {
    probes: Arc<Mutex<Vec<Probe>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostProbe {
    /// Starts probing on a thread of its own (the caller is not held up); times are counted
    /// from `started`. None where the thread's CPU time cannot be read (not Linux).
    pub fn start(started: Instant) -> Option<Self> {
        thread_cpu_ns()?;
        let probes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let probes = probes.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("host-probe".into())
                .spawn(move || {
                    // Size the computation once: about PROBE_WORK of CPU at the speed seen
                    // now. The CPU time between two readings, each right after a sleep (see
                    // `thread_cpu_ns`), is one computation's (and a few microseconds of
                    // bookkeeping).
                    let pause = Duration::from_millis(1);
                    std::thread::sleep(pause);
                    let Some(before) = thread_cpu_ns() else {
                        return;
                    };
                    spin(1_000_000);
                    std::thread::sleep(pause);
                    let Some(mut last) = thread_cpu_ns() else {
                        return;
                    };
                    let took = last.saturating_sub(before).max(1);
                    let iterations =
                        (1_000_000u128 * PROBE_WORK.as_nanos() / u128::from(took)) as u64;
                    while !stop.load(Ordering::Relaxed) {
                        spin(iterations.max(1));
                        let at_ms = started.elapsed().as_millis() as u32;
                        std::thread::sleep(PROBE_PERIOD);
                        let Some(now) = thread_cpu_ns() else {
                            return;
                        };
                        let cpu_ns = now.saturating_sub(last);
                        last = now;
                        probes.lock().unwrap().push(Probe { at_ms, cpu_ns });
                    }
                })
                .ok()?
        };
        Some(Self {
            probes,
            stop,
            thread: Some(thread),
        })
    }

    /// A handle that reads what has been measured so far.
    pub fn reader(&self) -> ProbeReader {
        ProbeReader(self.probes.clone())
    }

    /// Stops the probe and returns every measurement.
    pub fn stop(mut self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.reader().so_far()
    }
}

/// Reads a running [`HostProbe`]'s measurements.
#[derive(Clone)]
pub struct ProbeReader(Arc<Mutex<Vec<Probe>>>);

impl ProbeReader {
    pub fn so_far(&self) -> Vec<Probe> {
        self.0.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(began_ms: u32, rpc: &'static str, micros: u32, error: Option<tonic::Code>) -> Call {
        Call {
            began_ms,
            rpc,
            micros,
            error,
        }
    }

    fn probe(at_ms: u32, cpu_ns: u64) -> Probe {
        Probe { at_ms, cpu_ns }
    }

    #[test]
    fn calls_delays_and_samples_go_to_the_second_they_began_in() {
        let calls = [
            call(10, "SubmitComplaint", 2_000, None),
            call(999, "SubmitComplaint", 4_000, None),
            call(
                1_000,
                "SubmitComplaint",
                30_000,
                Some(tonic::Code::Unavailable),
            ),
            call(1_400, "GetCase", 1_000, Some(tonic::Code::Internal)),
            call(
                1_500,
                "SubmitComplaint",
                1_000,
                Some(tonic::Code::Unavailable),
            ),
            // Began after the last whole second (the load ran 2.2 s): counted in the last.
            call(2_100, "SubmitComplaint", 8_000, None),
        ];
        let delays = [(5, 100_000), (1_200, 300_000), (1_900, 200_000)];
        let samples = [
            Sample {
                machine: Some((1.5, 0.0)),
                wal: Some((400.0, Some(60.5))),
                autovacuum: Some(3.0),
                services: vec![Some((0.25, 40.0 * MIB)), None],
                postgres: Some(0.8),
                bench: Some(0.15),
            },
            Sample {
                machine: Some((1.9, 0.25)),
                wal: Some((380.0, None)),
                autovacuum: None,
                services: vec![Some((0.5, 42.0 * MIB)), Some((0.1, 30.0 * MIB))],
                postgres: None,
                bench: None,
            },
        ];
        let recorded = Recorded {
            calls: &calls,
            delays: &delays,
            // Returned at 12 ms and 1,020 ms; one past the end, in the last second.
            accepted_ms: &[12, 1_020, 2_150],
            // The last one after the run's two whole seconds: not in either.
            propagated_ms: &[900, 1_100, 1_300, 1_999, 2_400],
            samples: &samples,
            probes: &[],
        };
        let seconds = per_second(2, &recorded);
        assert_eq!(seconds.len(), 2);

        let first = &seconds[0];
        assert_eq!((first.accepted, first.propagated), (1, 1));
        let submit = &first.rpc["SubmitComplaint"];
        assert_eq!((submit.count, submit.p50_ms, submit.max_ms), (2, 4.0, 4.0));
        assert!(first.errors.is_empty());
        assert_eq!(first.propagation.as_ref().map(|l| l.count), Some(1));
        assert_eq!(first.machine, Some((1.5, 0.0)));
        assert_eq!(first.wal, Some((400.0, Some(60.5))));
        assert_eq!(first.autovacuum, Some(3.0));
        assert_eq!(first.services, vec![Some((0.25, 40.0 * MIB)), None]);
        assert_eq!((first.postgres, first.bench), (Some(0.8), Some(0.15)));
        assert!(!first.rpc.contains_key("GetCase"));

        let second = &seconds[1];
        assert_eq!((second.accepted, second.propagated), (2, 3));
        assert_eq!(propagated_after(2, recorded.propagated_ms), 1);
        assert_eq!(propagated_after(3, recorded.propagated_ms), 0);
        let submit = &second.rpc["SubmitComplaint"];
        assert_eq!((submit.count, submit.max_ms), (3, 30.0));
        assert_eq!(second.rpc["GetCase"].count, 1);
        assert_eq!(second.error_count(), 3);
        assert_eq!(second.errors["SubmitComplaint Unavailable"], 2);
        assert_eq!(second.errors["GetCase Internal"], 1);
        let propagation = second.propagation.as_ref().unwrap();
        assert_eq!((propagation.count, propagation.max_ms), (2, 300.0));
        assert_eq!(second.machine, Some((1.9, 0.25)));
        assert_eq!(second.wal, Some((380.0, None)));
        assert_eq!(second.autovacuum, None);
        assert_eq!(second.postgres, None);
        // The JSON names each service read, with its CPU in percent of one core.
        let json = second.json();
        assert_eq!(json["services"]["intake"]["cpu_percent"], 50.0);
        assert_eq!(json["services"]["case-management"]["rss_mib"], 30.0);
        assert!(json["services"]["sla-timer"].is_null());
        assert_eq!(json["errors"], 3);
        assert_eq!(json["errors_by_code"]["GetCase Internal"], 1);
        assert!(json["bench_cpu_percent"].is_null());
        assert_eq!(seconds[0].json()["bench_cpu_percent"], 15.0);
        assert_eq!(seconds[0].json()["autovacuum_passes"], 3.0);
        assert!(json["autovacuum_passes"].is_null());
        assert_eq!(
            (json["accepted"].as_u64(), json["propagated"].as_u64()),
            (Some(2), Some(3))
        );
        // A second never sampled has none of it.
        let third = &per_second(3, &recorded)[2];
        assert_eq!(
            (third.machine, third.wal, third.postgres, third.autovacuum),
            (None, None, None, None)
        );
        assert!(third.services.is_empty());
        assert_eq!(second.host_speed, None);
    }

    #[test]
    fn a_seconds_host_speed_is_its_median_probe_against_the_fastest_of_the_run() {
        let probes = [
            // Second 0: 1.0, 1.1 and 1.2 ms; the fastest of the run is 1.0 ms.
            probe(100, 1_000_000),
            probe(200, 1_100_000),
            probe(300, 1_200_000),
            // Second 1: twice as slow.
            probe(1_100, 2_000_000),
            probe(1_200, 2_000_000),
            // Second 3: one probe; a zero reading (no CPU time seen) is ignored.
            probe(3_500, 1_250_000),
            probe(3_600, 0),
            // Past the end: no such second, left out.
            probe(9_000, 4_000_000),
        ];
        let speeds = host_speeds(4, &probes);
        assert_eq!(speeds.len(), 4);
        assert!((speeds[0].unwrap() - 1.0 / 1.1).abs() < 1e-9);
        assert!((speeds[1].unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(speeds[2], None);
        assert!((speeds[3].unwrap() - 0.8).abs() < 1e-9);
        assert_eq!(host_speeds(2, &[]), vec![None, None]);
    }

    #[test]
    fn the_autovacuum_summary_leaves_out_the_seconds_its_passes_ran_in() {
        // Five seconds of 10 ms calls; passes finish in second 3, so seconds 2 and 3 (a pass
        // works before it finishes) go, with their 300 ms calls.
        let mut calls = Vec::new();
        for second in 0..5u32 {
            let micros = if second == 2 || second == 3 {
                300_000
            } else {
                10_000
            };
            for i in 0..10 {
                calls.push(call(second * 1000 + i, "SubmitComplaint", micros, None));
            }
        }
        let passes = [Some(0.0), Some(0.0), Some(0.0), Some(4.0), None];
        let samples: Vec<Sample> = passes
            .iter()
            .map(|autovacuum| Sample {
                autovacuum: *autovacuum,
                ..Sample::default()
            })
            .collect();
        let recorded = Recorded {
            calls: &calls,
            samples: &samples,
            ..Recorded::default()
        };
        let table = per_second(5, &recorded);
        let summary = autovacuum_summary(&table, &calls, "SubmitComplaint").unwrap();
        assert_eq!(summary.passes, 4.0);
        assert_eq!(summary.seconds, [2, 3]);
        let (seconds, latency) = summary.elsewhere;
        assert_eq!((seconds, latency.count), (3, 30));
        assert_eq!(latency.max_ms, 10.0);
        // Never sampled (a suite the bench did not start): no summary.
        let unsampled = per_second(
            5,
            &Recorded {
                calls: &calls,
                ..Recorded::default()
            },
        );
        assert_eq!(
            autovacuum_summary(&unsampled, &calls, "SubmitComplaint"),
            None
        );
    }

    #[test]
    fn the_summary_pools_the_calls_of_the_seconds_at_speed_only() {
        let mut calls = Vec::new();
        // Seconds 0 and 2 at full speed with 1–100 ms calls spread evenly; second 1 slow with
        // 500 ms calls, which must not reach the at-speed figure.
        for second in [0u32, 2] {
            for i in 0..100u32 {
                calls.push(call(
                    second * 1000 + i,
                    "SubmitComplaint",
                    (i + 1) * 1000,
                    None,
                ));
            }
        }
        for i in 0..50u32 {
            calls.push(call(1000 + i, "SubmitComplaint", 500_000, None));
            calls.push(call(1000 + i, "GetCase", 1_000, None));
        }
        let probes = [probe(10, 1_000), probe(1_010, 2_000), probe(2_010, 1_050)];
        let recorded = Recorded {
            calls: &calls,
            probes: &probes,
            ..Recorded::default()
        };
        let table = per_second(3, &recorded);
        let summary = host_summary(&table, &calls, "SubmitComplaint").unwrap();
        assert_eq!((summary.measured, summary.slow), (3, 1));
        assert!((summary.slowest - 0.5).abs() < 1e-9);
        assert!((summary.median - 1.0 / 1.05).abs() < 1e-9);
        let (seconds, latency) = summary.at_speed.unwrap();
        assert_eq!((seconds, latency.count), (2, 200));
        assert_eq!(latency.max_ms, 100.0);
        assert_eq!(latency.p99_ms, 99.0);
        // No probe at all: no summary.
        assert_eq!(
            host_summary(
                &per_second(
                    3,
                    &Recorded {
                        calls: &calls,
                        ..Recorded::default()
                    }
                ),
                &calls,
                "SubmitComplaint"
            ),
            None
        );
    }

    #[test]
    fn the_probe_reads_this_threads_cpu_time_and_measures_while_it_runs() {
        std::thread::sleep(Duration::from_millis(1));
        let before = thread_cpu_ns().expect("schedstat on Linux");
        spin(20_000_000);
        std::thread::sleep(Duration::from_millis(1));
        let after = thread_cpu_ns().unwrap();
        assert!(after > before, "{before} → {after}");

        let started = Instant::now();
        let probe = HostProbe::start(started).expect("a probe");
        std::thread::sleep(PROBE_PERIOD * 3);
        let probes = probe.stop();
        assert!(!probes.is_empty());
        assert!(probes.iter().all(|p| p.cpu_ns > 0));
        assert!(probes.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }
}
