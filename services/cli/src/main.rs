//! `complaints`: run the whole suite locally, mint development tokens, feed demo complaints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use complaints_cli::args::Flags;
use complaints_cli::suite::{Suite, SuiteOptions};
use complaints_kit::auth::{AuthConfig, Role};
use complaints_kit::pg_private::PrivatePostgres;
use complaints_kit::{config, telemetry};

const USAGE: &str = "\
complaints — the complaint-handling suite, locally

USAGE:
  complaints up [--demo [N]] [--base-port PORT] [--host HOST] [--survey-delay 2h]
      Starts the five services on PORT..PORT+4 (default 50051..50055). Without DATABASE_URL it
      starts a private PostgreSQL under .data/postgres (port 54329) from the installed server
      binaries. Prints the addresses and an admin development token. --demo feeds N (default 4)
      sample complaints through the whole lifecycle (and sets the survey delay to 0).
  complaints token --role ROLE [--department DEPT] [--subject NAME] [--ttl 12h]
      Prints a development JWT (HS256) the running suite accepts.
      ROLE: agent, supervisor, quality, admin or service.
  complaints serve SERVICE
      Runs one service (intake, case-management, sla-timer, feedback-survey or
      performance-scoring) configured from the environment, like its own binary.
  complaints bench [--clients 16] [--duration 30s] [--warmup 0s] [--rate N] [--mix 80,10,5,5]
                   [--vip-share 0.1] [--repeat-share 0.05] [--pgbench-seconds 10]
                   [--intake-only] [--no-host-probe] [--target HOST] [--json FILE]
      End-to-end load benchmark over gRPC. Starts the five services as separate processes on
      a fresh database (ports 24051..24055) unless --target names a running suite; runs
      pgbench -N with the same client count before and after the load (--pgbench-seconds
      each, 0 to skip) for the ratio; checks no complaint, case or clock was lost or
      duplicated. --mix: percent submit, acknowledge, transition, query.
      --rate: operations per second across all clients (of every kind); without it, a
      closed loop. --warmup: load run before the measured --duration (its complaints are
      still checked, its calls not timed). --no-host-probe: no host-speed column. Services
      run with one runtime thread each unless TOKIO_WORKER_THREADS is set.
  complaints pg-stop
      Stops the private PostgreSQL started by `up`.

ENVIRONMENT:
  DATABASE_URL       use this database instead of a private one
  JWT_HS256_SECRET   development signing secret (default: generated once into .data/dev-jwt-secret)
";

fn project_dir() -> PathBuf {
    // The workspace root when run through cargo; the current directory otherwise.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if manifest.join("Cargo.toml").is_file() {
        manifest
    } else {
        PathBuf::from(".")
    }
}

fn data_dir() -> PathBuf {
    project_dir().join(".data")
}

fn private_pg() -> PrivatePostgres {
    PrivatePostgres {
        data_dir: data_dir().join("postgres"),
        port: 54329,
        unsafe_fast: false,
    }
}

/// The development secret shared by `up` and `token`.
fn dev_secret() -> anyhow::Result<String> {
    if let Some(secret) = config::optional("JWT_HS256_SECRET") {
        return Ok(secret);
    }
    let path = data_dir().join("dev-jwt-secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        return Ok(secret.trim().to_owned());
    }
    std::fs::create_dir_all(data_dir())?;
    let secret: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..48)
            .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
            .collect()
    };
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret)
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if complaints_cli::args::wants_help(&args) {
        print!("{USAGE}");
        return Ok(());
    }
    let flags = match args.first().map(String::as_str) {
        Some("up") => Some(Flags {
            valued: &["--base-port", "--host", "--survey-delay"],
            switches: &[],
            optional_number: &["--demo"],
        }),
        Some("token") => Some(Flags {
            valued: &["--role", "--department", "--subject", "--ttl"],
            switches: &[],
            optional_number: &[],
        }),
        Some("bench") => Some(Flags {
            valued: &[
                "--clients",
                "--duration",
                "--warmup",
                "--rate",
                "--mix",
                "--vip-share",
                "--repeat-share",
                "--pgbench-seconds",
                "--target",
                "--json",
            ],
            switches: &["--intake-only", "--no-host-probe"],
            optional_number: &[],
        }),
        _ => None,
    };
    if let Some(flags) = flags
        && let Err(problem) = complaints_cli::args::check(&args[1..], &flags)
    {
        eprint!("{problem}\n\n{USAGE}");
        std::process::exit(2);
    }
    match args.first().map(String::as_str) {
        Some("up") => up(&args[1..]).await,
        Some("token") => token(&args[1..]),
        Some("serve") => serve(args.get(1).map(String::as_str).unwrap_or("")).await,
        Some("bench") => bench(&args[1..]).await,
        Some("pg-stop") => {
            private_pg().stop()?;
            println!("private PostgreSQL stopped");
            Ok(())
        }
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => {
            eprint!("unknown command {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}

/// One service in this process, configured from the environment like its own binary.
async fn serve(service: &str) -> anyhow::Result<()> {
    use complaints_kit::Shutdown;
    use tokio::net::TcpListener;
    let _telemetry = telemetry::init(service);
    // Started by the bench or a test (which names itself): go when it goes, even if it was
    // killed outright.
    let exit_with_parent = complaints_cli::suite::EXIT_WITH_PARENT;
    let shutdown = match config::optional(exit_with_parent) {
        Some(pid) => Shutdown::on_signals_or_parent_exit(pid.parse().with_context(|| {
            format!("{exit_with_parent} must be the PID of the parent process, not {pid:?}")
        })?),
        None => Shutdown::on_signals(),
    };
    match service {
        "intake" => {
            let config = intake::Config::from_env()?;
            let listener = TcpListener::bind(config.common.listen_addr).await?;
            intake::run(config, listener, shutdown).await
        }
        "case-management" => {
            let config = case_management::Config::from_env()?;
            let listener = TcpListener::bind(config.common.listen_addr).await?;
            case_management::run(config, listener, shutdown).await
        }
        "sla-timer" => {
            let config = sla_timer::Config::from_env()?;
            let listener = TcpListener::bind(config.common.listen_addr).await?;
            sla_timer::run(config, listener, shutdown).await
        }
        "feedback-survey" => {
            let config = feedback_survey::Config::from_env()?;
            let listener = TcpListener::bind(config.common.listen_addr).await?;
            feedback_survey::run(config, listener, shutdown).await
        }
        "performance-scoring" => {
            let config = performance_scoring::Config::from_env()?;
            let listener = TcpListener::bind(config.common.listen_addr).await?;
            performance_scoring::run(config, listener, shutdown).await
        }
        other => anyhow::bail!(
            "unknown service {other:?}; expected intake, case-management, sla-timer, feedback-survey or performance-scoring"
        ),
    }
}

async fn bench(args: &[String]) -> anyhow::Result<()> {
    let parse_f = |name: &str, default: f64| -> anyhow::Result<f64> {
        flag(args, name)
            .map(|v| {
                v.parse()
                    .with_context(|| format!("{name} must be a number"))
            })
            .unwrap_or(Ok(default))
    };
    let mix_text = flag(args, "--mix").unwrap_or_else(|| "80,10,5,5".into());
    let parts: Vec<u32> = mix_text
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .context("--mix: four percentages")?;
    let mix: [u32; 4] = parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("--mix needs four numbers"))?;
    if mix.iter().sum::<u32>() != 100 {
        anyhow::bail!("--mix percentages must add up to 100");
    }
    let database_url = match config::optional("DATABASE_URL") {
        Some(url) => url,
        None => {
            let pg = private_pg();
            tokio::task::spawn_blocking(move || pg.ensure_running()).await??
        }
    };
    let options = complaints_cli::bench::BenchOptions {
        clients: parse_f("--clients", 16.0)? as usize,
        rate: flag(args, "--rate")
            .map(|r| r.parse())
            .transpose()
            .context("--rate must be a number")?,
        duration: config::parse_duration(&flag(args, "--duration").unwrap_or_else(|| "30s".into()))
            .map_err(|e| anyhow::anyhow!("--duration: {e}"))?,
        warmup: config::parse_duration(&flag(args, "--warmup").unwrap_or_else(|| "0s".into()))
            .map_err(|e| anyhow::anyhow!("--warmup: {e}"))?,
        mix,
        vip_share: parse_f("--vip-share", 0.1)?,
        repeat_share: parse_f("--repeat-share", 0.05)?,
        intake_only: args.iter().any(|a| a == "--intake-only"),
        host_probe: !args.iter().any(|a| a == "--no-host-probe"),
        pgbench_seconds: parse_f("--pgbench-seconds", 10.0)? as u64,
        json: flag(args, "--json"),
        target: flag(args, "--target"),
        database_url,
        secret: dev_secret()?,
    };
    complaints_cli::bench::run(options).await
}

fn token(args: &[String]) -> anyhow::Result<()> {
    let role: Role = flag(args, "--role")
        .ok_or_else(|| {
            anyhow::anyhow!("--role is required (agent, supervisor, quality, admin, service)")
        })?
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let department = flag(args, "--department");
    let subject = flag(args, "--subject").unwrap_or_else(|| format!("dev-{}", role.as_str()));
    let ttl = match flag(args, "--ttl") {
        Some(ttl) => config::parse_duration(&ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?,
        None => Duration::from_secs(12 * 3600),
    };
    let auth = AuthConfig::development(&dev_secret()?);
    println!(
        "{}",
        auth.mint(&subject, &[role], department.as_deref(), ttl)?
    );
    Ok(())
}

async fn up(args: &[String]) -> anyhow::Result<()> {
    let _telemetry = telemetry::init("complaints");
    let demo = args.iter().position(|a| a == "--demo").map(|i| {
        args.get(i + 1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(4)
    });
    let base_port: u16 = match flag(args, "--base-port") {
        Some(p) => p.parse().context("--base-port must be a port number")?,
        None => 50051,
    };
    let host = flag(args, "--host").unwrap_or_else(|| "127.0.0.1".into());
    let survey_delay = match (flag(args, "--survey-delay"), demo) {
        (Some(d), _) => {
            config::parse_duration(&d).map_err(|e| anyhow::anyhow!("--survey-delay: {e}"))?
        }
        (None, Some(_)) => Duration::ZERO,
        (None, None) => Duration::from_secs(2 * 3600),
    };
    let database_url = match config::optional("DATABASE_URL") {
        Some(url) => url,
        None => {
            let pg = private_pg();
            println!(
                "starting a private PostgreSQL in {} (port {})",
                pg.data_dir.display(),
                pg.port
            );
            tokio::task::spawn_blocking(move || pg.ensure_running()).await??
        }
    };
    let secret = dev_secret()?;
    let auth = AuthConfig::development(&secret);
    let mut suite = Suite::start(SuiteOptions {
        database_url,
        auth: auth.clone(),
        base_port: Some(base_port),
        bind_host: host,
        survey_delay,
        survey_token_secret: format!("survey-{secret}"),
        pool_size: 8,
        scheduler_poll: Duration::from_millis(200),
    })
    .await?;
    let admin = auth.mint(
        "dev-admin",
        &[Role::Admin],
        None,
        Duration::from_secs(12 * 3600),
    )?;
    println!("\nThe complaint suite is running:");
    for (name, url) in [
        ("intake", &suite.urls.intake),
        ("case-management", &suite.urls.cases),
        ("sla-timer", &suite.urls.sla),
        ("feedback-survey", &suite.urls.survey),
        ("performance-scoring", &suite.urls.scoring),
    ] {
        println!("  {name:<20} {url}");
    }
    println!("\nPrometheus metrics:");
    for (name, url) in &suite.urls.metrics {
        println!("  {name:<20} {url}");
    }
    println!(
        "\nAdmin development token (12h; more with `complaints token --role ...`):\n{admin}\n"
    );
    println!("Press Ctrl-C to stop.");

    if let Some(count) = demo {
        let urls = suite.urls.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            // Give the services a moment to migrate before the first call.
            tokio::time::sleep(Duration::from_millis(500)).await;
            match complaints_cli::demo::run(&urls, &auth, count).await {
                Ok(()) => println!("demo: {count} complaints went through the whole lifecycle"),
                Err(e) => eprintln!("demo failed: {e:#}"),
            }
        });
    }

    let shutdown = complaints_kit::Shutdown::on_signals();
    tokio::select! {
        _ = shutdown.wait() => {
            suite.stop().await?;
            println!("stopped");
            Ok(())
        }
        result = suite.any_stopped() => result,
    }
}
