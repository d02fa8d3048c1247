//! A private PostgreSQL cluster in a folder of the project, started from the server binaries
//! installed on the machine, for running the suite or its tests without a `DATABASE_URL`.
//! Several processes may ask for the same cluster at once; a file lock makes one start it.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum PrivatePgError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and pg_ctl in $PG_BIN_DIR, \
         `pg_config --bindir`, /usr/lib/postgresql/*/bin and /usr/local/pgsql/bin). \
         Install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL to an existing database."
    )]
    NoBinaries,
    #[error("{step} failed: {detail}")]
    Step { step: String, detail: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Where the cluster lives and how to reach it.
#[derive(Clone, Debug)]
pub struct PrivatePostgres {
    pub data_dir: PathBuf,
    pub port: u16,
    /// Turn off fsync (tests only: faster, not crash safe).
    pub unsafe_fast: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrivatePgError + '_ {
    move |source| PrivatePgError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Finds the directory holding `initdb` and `pg_ctl`.
pub fn find_bin_dir() -> Result<PathBuf, PrivatePgError> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = crate::config::optional("PG_BIN_DIR").map(PathBuf::from)
        && has_tools(&dir)
    {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    candidates.sort();
    candidates.push((0, PathBuf::from("/usr/local/pgsql/bin")));
    candidates
        .into_iter()
        .rev()
        .map(|(_, dir)| dir)
        .find(|dir| has_tools(dir))
        .ok_or(PrivatePgError::NoBinaries)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root; as root we run it as the `postgres` system user.
fn pg_command(bin: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin).args(args);
        cmd
    } else {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        cmd
    }
}

fn run(step: &str, mut cmd: Command) -> Result<(), PrivatePgError> {
    let out = cmd.output().map_err(|e| PrivatePgError::Step {
        step: step.into(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PrivatePgError::Step {
            step: step.into(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

impl PrivatePostgres {
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Initialises the cluster if needed and starts it unless it already runs. Blocking.
    pub fn ensure_running(&self) -> Result<String, PrivatePgError> {
        let bin = find_bin_dir()?;
        let data = &self.data_dir;
        let parent = data.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let lock_path = parent.join(format!(
            ".{}.lock",
            data.file_name().unwrap_or_default().to_string_lossy()
        ));
        let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;

        let root = is_root();
        if !data.join("PG_VERSION").is_file() {
            std::fs::create_dir_all(data).map_err(io(data))?;
            if root {
                run("chown of the data folder", {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(data);
                    c
                })?;
            }
            let data_str = data.display().to_string();
            run(
                "initdb",
                pg_command(
                    &bin.join("initdb"),
                    &[
                        "-D",
                        &data_str,
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                    ],
                ),
            )?;
        }
        let data_str = data.display().to_string();
        let running = pg_command(&bin.join("pg_ctl"), &["status", "-D", &data_str])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !running {
            let mut options = format!(
                // WAL timing in pg_stat_wal: the bench reads each second's time spent in WAL syncs.
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=400 -c shared_buffers=256MB \
                 -c track_wal_io_timing=on",
                self.port, data_str
            );
            if self.unsafe_fast {
                options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
            }
            let log = data.join("server.log").display().to_string();
            run(
                "pg_ctl start",
                pg_command(
                    &bin.join("pg_ctl"),
                    &[
                        "start", "-w", "-t", "60", "-D", &data_str, "-l", &log, "-o", &options,
                    ],
                ),
            )?;
        }
        drop(lock);
        Ok(self.url())
    }

    /// Stops the cluster (fast shutdown). Blocking.
    pub fn stop(&self) -> Result<(), PrivatePgError> {
        let bin = find_bin_dir()?;
        let data_str = self.data_dir.display().to_string();
        run(
            "pg_ctl stop",
            pg_command(
                &bin.join("pg_ctl"),
                &["stop", "-m", "fast", "-D", &data_str],
            ),
        )
    }
}
