//! Test support: every test gets a fresh database on a real Postgres — the one at
//! `DATABASE_URL`, or else a private cluster under `.data/test-postgres` started on demand —
//! plus development tokens and a way to run a service on an ephemeral port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::Connection;
use tokio::net::TcpListener;

use crate::auth::{AuthConfig, Role};
use crate::config::CommonConfig;
use crate::pg_private::PrivatePostgres;
use crate::shutdown::{Shutdown, ShutdownTrigger};

/// The HS256 secret every test service shares.
pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0001";

pub fn auth() -> AuthConfig {
    AuthConfig::development(TEST_SECRET)
}

/// A token for the given role and department, valid for an hour.
pub fn token(subject: &str, role: Role, department: Option<&str>) -> String {
    auth()
        .mint(subject, &[role], department, Duration::from_secs(3600))
        .expect("minting with the test secret")
}

/// URL of the server that holds the test databases.
pub async fn server_url() -> String {
    if let Some(url) = crate::config::optional("DATABASE_URL") {
        return url;
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pg = PrivatePostgres {
        data_dir: workspace.join(".data/test-postgres"),
        port: 54330,
        unsafe_fast: true,
    };
    tokio::task::spawn_blocking(move || pg.ensure_running())
        .await
        .expect("private postgres task")
        .unwrap_or_else(|e| panic!("cannot start a private PostgreSQL for the tests: {e}"))
}

/// A database created for one test.
#[derive(Clone, Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

/// Creates a fresh, empty database; drops those left by runs more than two hours old.
pub async fn fresh_database() -> TestDatabase {
    let server = server_url().await;
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test Postgres at {server}: {e}"));
    let now = chrono::Utc::now().timestamp();
    let stale: Vec<(String,)> = sqlx::query_as(
        "SELECT datname FROM pg_database WHERE datname LIKE 'ctest\\_%' AND split_part(datname, '_', 2)::bigint < $1",
    )
    .bind(now - 7200)
    .fetch_all(&mut admin)
    .await
    .unwrap_or_default();
    for (name,) in stale {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    let name = format!("ctest_{now}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let url = crate::db::database_url(&server, &name);
    TestDatabase { name, url }
}

/// Common configuration of a service under test.
pub fn common_config(database_url: &str) -> CommonConfig {
    CommonConfig {
        database_url: database_url.to_owned(),
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics: crate::config::MetricsEndpoint::Disabled,
        db_pool_max: 5,
        shutdown_grace: Duration::from_secs(5),
        event_retention: Duration::from_secs(30 * 86_400),
        event_tuning: crate::events::EventTuning::default(),
        auth: auth(),
    }
}

/// A listener on an ephemeral local port, and its `http://` URL.
pub async fn ephemeral_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

/// A service running in the background of a test.
pub struct RunningService {
    pub url: String,
    trigger: ShutdownTrigger,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningService {
    /// Starts `run(listener, shutdown)` on an already bound listener.
    pub fn spawn<F, Fut>(listener: TcpListener, url: String, run: F) -> Self
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (trigger, shutdown) = Shutdown::new();
        let handle = tokio::spawn(run(listener, shutdown));
        Self {
            url,
            trigger,
            handle,
        }
    }

    /// Triggers a graceful shutdown and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger.trigger();
        self.handle.await?
    }
}

/// A lazily connecting channel to a test service.
pub fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect_lazy()
}

/// Attaches a bearer token to a request.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// Polls `check` until it yields `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A token that expired an hour ago (signed with the test secret).
pub fn expired_token(subject: &str, role: Role) -> String {
    let now = chrono::Utc::now().timestamp() as u64;
    let claims = crate::auth::Claims {
        sub: subject.to_owned(),
        roles: vec![role],
        department: None,
        iss: crate::auth::DEV_ISSUER.into(),
        aud: crate::auth::AUDIENCE.into(),
        iat: now - 7200,
        nbf: now - 7200,
        exp: now - 3600,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("encode")
}

/// A well-formed token signed with a secret no service trusts.
pub fn forged_token(subject: &str, role: Role) -> String {
    AuthConfig::development("an-attacker-secret-that-nobody-trusts-0")
        .mint(subject, &[role], None, Duration::from_secs(3600))
        .expect("mint")
}

/// Analyzes `schema.table` and returns, sorted, the columns PostgreSQL then keeps planner
/// statistics for: the ones set to `STATISTICS 0` are left out. The table needs rows.
pub async fn analyzed_columns(pool: &sqlx::PgPool, schema: &str, table: &str) -> Vec<String> {
    sqlx::query(&format!("ANALYZE {schema}.{table}"))
        .execute(pool)
        .await
        .expect("ANALYZE");
    sqlx::query_scalar(
        "SELECT attname::text FROM pg_stats WHERE schemaname = $1 AND tablename = $2
         ORDER BY attname",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("pg_stats")
}
