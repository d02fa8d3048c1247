//! The benchmark itself, run for a few seconds as a user would: five real service processes on
//! a fresh database, pgbench before and after, and a report whose counts add up. Speed is not
//! asserted (these machines are shared); what the report says about the run is.

use std::time::Duration;

use complaints_kit::testing;
use sqlx::Connection as _;

use complaints_cli::suite::SERVICE_NAMES as SERVICES;

/// The bench starts the suite on fixed ports: one run at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a bench run left: whether it succeeded, its output, its JSON report (if it wrote one)
/// and the name of its database; the server it ran against, and the turn it holds.
struct Finished {
    server: String,
    _turn: tokio::sync::MutexGuard<'static, ()>,
    success: bool,
    stdout: String,
    stderr: String,
    json: Option<serde_json::Value>,
    database: Option<String>,
}

/// Runs `complaints bench ARGS --json FILE` against the test server (ARGS split at spaces),
/// with `env` set too, once no other run is going.
async fn bench(args: &str, env: &[(&str, &str)]) -> Finished {
    bench_holding(args, env, &[]).await
}

/// [`bench`], with `ports` of 127.0.0.1 held by this test for the whole run.
async fn bench_holding(args: &str, env: &[(&str, &str)], ports: &[u16]) -> Finished {
    let turn = ONE_AT_A_TIME.lock().await;
    let _held: Vec<std::net::TcpListener> = ports
        .iter()
        .map(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).expect("a free port"))
        .collect();
    let server = testing::server_url().await;
    let report = std::env::temp_dir().join(format!("bench-{}.json", uuid::Uuid::new_v4()));
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_complaints"));
    command
        .arg("bench")
        .args(args.split_whitespace())
        .arg("--json")
        .arg(&report)
        .env("DATABASE_URL", &server)
        .env("TOKIO_WORKER_THREADS", "1")
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(240), command.output())
        .await
        .expect("the bench finishes")
        .expect("the bench starts");
    let json = std::fs::read(&report)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let _ = std::fs::remove_file(&report);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let database = stdout
        .lines()
        .find_map(|l| l.strip_prefix("started 5 service process(es) on database "))
        .map(|name| name.trim().to_owned());
    Finished {
        server,
        _turn: turn,
        success: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout,
        json,
        database,
    }
}

/// Every timed SubmitComplaint is in exactly one second of the report; returns how many.
fn timed_once_each(json: &serde_json::Value) -> u64 {
    let submits: u64 = json["per_second"]
        .as_array()
        .expect("per-second figures")
        .iter()
        .map(|s| s["rpc"]["SubmitComplaint"]["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        Some(submits),
        json["rpc"]["SubmitComplaint"]["count"].as_u64()
    );
    submits
}

#[tokio::test]
async fn a_short_bench_run_reports_every_complaint_propagated_and_the_pgbench_ratio() {
    let run = bench("--clients 4 --duration 3s --pgbench-seconds 1", &[]).await;
    let server = run.server.clone();
    let stdout = &run.stdout;
    assert!(run.success, "bench failed: {stdout}\n{}", run.stderr);
    let json = run.json.expect("the JSON report");

    let accepted = json["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{stdout}");
    assert_eq!(json["propagated"].as_u64(), Some(accepted), "{stdout}");
    assert_eq!(json["problems"].as_array().map(Vec::len), Some(0));
    assert_eq!(json["errors"].as_object().map(|e| e.len()), Some(0));
    assert!(json["rpc"]["SubmitComplaint"]["count"].as_u64().unwrap() >= accepted);
    // SubmitComplaint's tail against the target, as intake timed it and as the bench did: the
    // same calls on both sides (but those around the scrapes at the load's ends).
    let tail = &json["submit_above_target"];
    let (intake_side, bench_side) = (
        tail["server_calls"].as_f64().unwrap(),
        tail["bench_calls"].as_f64().unwrap(),
    );
    assert!(
        intake_side > 0.0 && (intake_side - bench_side).abs() <= bench_side * 0.1,
        "{tail}"
    );
    assert!(
        tail["server_percent"]
            .as_f64()
            .is_some_and(|p| (0.0..=100.0).contains(&p))
    );
    assert!(stdout.contains("as intake timed them"), "{stdout}");

    // pgbench ran twice, and the ratio is to the mean of both.
    let runs: Vec<f64> = json["pgbench_tps_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_f64().unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "{stdout}");
    assert!(runs.iter().all(|tps| *tps > 0.0));
    let mean = (runs[0] + runs[1]) / 2.0;
    assert!((json["pgbench_tps"].as_f64().unwrap() - mean).abs() < 1e-6);
    let ratio = json["ratio_to_pgbench"].as_f64().unwrap();
    let expected = json["propagated_per_s"].as_f64().unwrap() / mean;
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");

    // Second by second: every call of the run in exactly one second, each second sampled
    // (machine CPU, WAL syncs), and the host's speed measured throughout.
    let seconds = json["per_second"].as_array().expect("per-second figures");
    assert_eq!(
        seconds.len() as f64,
        json["duration_s"].as_f64().unwrap().floor(),
        "{stdout}"
    );
    timed_once_each(&json);
    let errors: u64 = seconds.iter().map(|s| s["errors"].as_u64().unwrap()).sum();
    assert_eq!(errors, 0);
    // Each complaint is accepted in one second and propagated in one second.
    let sum = |key: &str| -> u64 { seconds.iter().map(|s| s[key].as_u64().unwrap()).sum() };
    assert_eq!(sum("accepted"), accepted, "{stdout}");
    let after_load = json["propagated_after_load"].as_u64().unwrap();
    assert_eq!(sum("propagated") + after_load, accepted, "{stdout}");
    for second in seconds {
        assert_eq!(
            second["errors_by_code"].as_object().map(|e| e.len()),
            Some(0)
        );
        // Every service's CPU and memory in every second, read from its process, and
        // PostgreSQL's CPU (the server runs on this machine).
        for service in SERVICES {
            let reading = &second["services"][service];
            assert!(
                reading["cpu_percent"].as_f64().is_some_and(|v| v >= 0.0)
                    && reading["rss_mib"].as_f64().is_some_and(|v| v > 1.0),
                "{service}: {second}"
            );
        }
        assert!(
            second["postgres_cpu_percent"]
                .as_f64()
                .is_some_and(|v| v >= 0.0),
            "{second}"
        );
        assert!(
            second["machine_busy_percent"].as_f64().is_some(),
            "{second}"
        );
        assert!(
            second["wal_syncs"].as_f64().is_some_and(|n| n >= 0.0),
            "{second}"
        );
        // Automatic vacuums and analyzes of the suite's tables finished in it (mostly none).
        assert!(
            second["autovacuum_passes"]
                .as_f64()
                .is_some_and(|n| n >= 0.0),
            "{second}"
        );
        assert!(
            second["host_speed_percent"]
                .as_f64()
                .is_some_and(|v| v > 0.0 && v <= 100.0)
        );
    }
    // SubmitComplaint's p99 without the seconds autovacuum ran in: all of its calls when it
    // did not run, fewer when it did.
    let autovacuum = &json["autovacuum"];
    let passes = autovacuum["passes"].as_f64().expect("autovacuum passes");
    let elsewhere = autovacuum["submit_elsewhere"]["latency"]["count"]
        .as_u64()
        .unwrap();
    let submitted = json["rpc"]["SubmitComplaint"]["count"].as_u64().unwrap();
    if passes == 0.0 {
        assert_eq!(elsewhere, submitted, "{autovacuum}");
    } else {
        assert!(elsewhere <= submitted, "{autovacuum}");
    }
    assert!(stdout.contains("autovacuum: "), "{stdout}");
    let host = &json["host_speed"];
    assert_eq!(
        host["seconds_measured"].as_u64(),
        Some(seconds.len() as u64)
    );
    assert!(
        host["median_percent"]
            .as_f64()
            .is_some_and(|v| v > 0.0 && v <= 100.0)
    );

    // Every service's CPU and peak memory were read from its process (the load kept intake
    // busy), and the scratch database is gone.
    for service in SERVICES {
        let figures = &json["services"][service];
        assert!(
            figures["cpu_seconds"].as_f64().is_some_and(|v| v >= 0.0)
                && figures["peak_rss_mib"].as_f64().is_some_and(|v| v > 1.0),
            "{service}: {}",
            json["services"]
        );
    }
    assert!(json["services"]["intake"]["cpu_seconds"].as_f64().unwrap() > 0.0);
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'bench\\_%' OR datname LIKE 'pgbench\\_%'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let name_of_this_run = run.database.expect("the bench names its database");
    assert!(!left.contains(&name_of_this_run), "{left:?}");
}

#[tokio::test]
async fn a_warmup_is_left_out_of_the_figures_but_its_complaints_are_checked_and_the_probe_can_go() {
    let run = bench(
        "--clients 4 --warmup 2s --duration 2s --pgbench-seconds 0 --no-host-probe",
        &[("BENCH_KEEP_DATABASE", "1")],
    )
    .await;
    let server = run.server.clone();
    let stdout = &run.stdout;
    let database = run.database.clone().expect("the bench names its database");
    // What the suite stored, read before the kept database goes.
    let stored: i64 = {
        let url = complaints_kit::db::database_url(&server, &database);
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM cases.cases")
            .fetch_one(&mut db)
            .await
            .unwrap()
    };
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!("DROP DATABASE \"{database}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    assert!(run.success, "bench failed: {stdout}\n{}", run.stderr);
    let json = run.json.expect("the JSON report");
    assert_eq!(json["warmup_s"].as_f64(), Some(2.0));
    assert!(stdout.contains("after 2.0 s of warm-up"), "{stdout}");
    // The figures hold the measured two seconds only: the warm-up's complaints opened cases
    // too (every one was checked: no problems), yet are not counted as accepted.
    let accepted = json["accepted"].as_u64().unwrap();
    assert!(accepted > 0);
    assert_eq!(
        json["problems"].as_array().map(Vec::len),
        Some(0),
        "{stdout}"
    );
    assert!(
        stored as u64 > accepted + accepted / 4,
        "{stored} cases for {accepted} measured complaints: {stdout}"
    );
    assert_eq!(json["per_second"].as_array().map(Vec::len), Some(2));
    let submits = timed_once_each(&json);
    // Without the probe: no host speed, anywhere.
    assert!(json["host_speed"].is_null(), "{}", json["host_speed"]);
    assert!(
        json["per_second"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["host_speed_percent"].is_null())
    );
    assert!(!stdout.contains("host speed ("), "{stdout}");
    assert!(
        (accepted as f64) <= submits as f64,
        "{accepted} accepted from {submits} timed submissions"
    );
}

#[tokio::test]
async fn a_service_that_cannot_start_stops_the_bench_instead_of_measuring_someone_elses() {
    // Another program holds intake's port: the bench must not drive whatever answers there.
    let run = bench_holding(
        "--clients 2 --duration 2s --pgbench-seconds 0",
        &[],
        &[24051],
    )
    .await;
    assert!(!run.success, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("intake (exit status: 1) exited at start")
            && run.stderr.contains("24051"),
        "{}",
        run.stderr
    );
    assert!(run.json.is_none());
    // Its scratch database went with it.
    let mut admin = sqlx::PgConnection::connect(&run.server).await.unwrap();
    let name = run.database.expect("the bench names its database");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "{name} left behind");
}

/// A bench (2 clients, no pgbench, no probe, ARGS) started on the test server and read until
/// its load runs; its stderr goes nowhere, so services it leaves behind cannot hold the test's
/// output open. Returns it and the name of its database.
async fn bench_under_load(server: &str, args: &[&str]) -> (RunningBench, Option<String>) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_complaints"))
        .args([
            "bench",
            "--clients",
            "2",
            "--pgbench-seconds",
            "0",
            "--no-host-probe",
        ])
        .args(args)
        .env("DATABASE_URL", server)
        .env("TOKIO_WORKER_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the bench starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut database = None;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the bench gets going")
            .unwrap()
            .expect("the bench is still running");
        if let Some(name) = line.strip_prefix("started 5 service process(es) on database ") {
            database = Some(name.trim().to_owned());
        }
        if line.starts_with("  t=") {
            return (RunningBench { child, lines }, database);
        }
    }
}

struct RunningBench {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

#[tokio::test]
async fn a_bench_killed_outright_leaves_no_service_holding_its_ports() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = testing::server_url().await;
    let (mut bench, database) = bench_under_load(&server, &["--duration", "60s"]).await;
    // SIGKILL: the bench gets no chance to stop its children.
    bench.child.start_kill().unwrap();
    bench.child.wait().await.unwrap();
    for port in 24051..=24055u16 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "port {port} still held 15 s after the bench died"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The bench could not drop its database; this test does.
    let name = database.expect("the bench names its database");
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// The process ids of the children of `parent` whose command line holds `word`.
fn children_running(parent: u32, word: &str) -> Vec<u32> {
    use complaints_kit::process::{Stat, pids};
    pids()
        .filter(|pid| Stat::of(*pid).is_some_and(|s| s.parent_pid == parent))
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(word)
        })
        .collect()
}

#[tokio::test]
async fn a_service_that_dies_during_the_load_fails_the_run_by_name() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = testing::server_url().await;
    let report = std::env::temp_dir().join(format!("bench-{}.json", uuid::Uuid::new_v4()));
    let report_arg = report.display().to_string();
    let (mut bench, _) =
        bench_under_load(&server, &["--duration", "4s", "--json", &report_arg]).await;
    let survey = children_running(bench.child.id().unwrap(), "feedback-survey");
    assert_eq!(survey.len(), 1, "{survey:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &survey[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    while let Ok(Some(_)) = bench.lines.next_line().await {}
    let status = tokio::time::timeout(Duration::from_secs(120), bench.child.wait())
        .await
        .expect("the bench finishes")
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(&report);
    assert!(!status.success(), "a run with a dead service must fail");
    let problems = json["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p
            .as_str()
            .is_some_and(|p| p.starts_with("exited during the load: feedback-survey"))),
        "{problems:?}"
    );
}

#[tokio::test]
async fn serve_refuses_a_parent_that_is_not_a_process_id_by_the_settings_name() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_complaints"))
        .args(["serve", "intake"])
        .env(complaints_cli::suite::EXIT_WITH_PARENT, "yes")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SERVE_EXIT_WITH_PARENT must be the PID of the parent process"),
        "{stderr}"
    );
}
