//! The Postgres pool and the migrator that applies a service's migrations to its own schema.
//! Migrations are embedded in the binary, applied in order under an advisory lock (so replicas
//! starting together never race), recorded in `<schema>.schema_migrations`, and never edited
//! once applied: a changed checksum stops start-up.
//!
//! # Plans
//! sqlx prepares each statement once per connection, and after five executions PostgreSQL
//! keeps a generic plan for it until the table is analyzed again. A statement first run while
//! its table was nearly empty can keep a plan that scans the whole table long after the table
//! has grown (measured: a lookup by an array of keys and a join against `unnest(…)` both kept
//! sequential scans, costing milliseconds a call after ten thousand complaints). A consumer's
//! transaction therefore plans without sequential scans and with generic plans only
//! (`events::CONSUMER_PLANS`, set at its `BEGIN`): its statements, keyed by arrays, are
//! prepared, planned once per connection and read by key at any table size (planning them for
//! each batch had cost more than running most of them). Batch statements that other
//! transactions run too (the SLA timer's sweeps and API calls) are sent unprepared
//! (`persistent(false)`): planned each time, for a few tens of microseconds. Per-request
//! statements are written so that every plan is an index scan (lookups by primary key, one
//! branch per partial index). Intake's submit transaction also forces generic plans: its lookup by
//! arrays of identifiers is a nested loop of index scans in every plan, and re-planning it per
//! batch cost more than running it. That lookup is a PL/pgSQL function (called in the round
//! trip that begins the transaction, see [`RawTransaction`]) whose plan is kept for the
//! session, and the whole transaction plans without sequential scans (`enable_seqscan = off`:
//! each of its statements reads a few rows by key), so a plan kept from a nearly empty table
//! still reads by key.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection, Executor, PgPool};

/// The arguments of a statement that writes many rows from one array per column
/// (`… FROM unnest($1::uuid[], $2::text[], …)`), added column by column.
///
/// One statement text serves every row count, so it is parsed once per connection and its
/// plan kept. A `VALUES` list is a new statement for each row count: parsed, described and
/// planned again for each (sqlx keeps 100 statements a connection, and a consumer's batches
/// come in every size up to its chunk), with a parameter, and an expression to initialise,
/// per value. A column whose values are themselves arrays goes as text in PostgreSQL's array
/// syntax ([`array_literal`]) and is cast back in the statement: `unnest` would flatten an
/// array of arrays.
#[derive(Default)]
pub struct ColumnArrays {
    arguments: sqlx::postgres::PgArguments,
    error: Option<sqlx::error::BoxDynError>,
}

impl ColumnArrays {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next column: `value` of each row, in row order.
    pub fn column<R, T>(mut self, rows: &[R], value: impl Fn(&R) -> T) -> Self
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
        Vec<T>: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        use sqlx::Arguments as _;
        if self.error.is_none() {
            let values: Vec<T> = rows.iter().map(value).collect();
            if let Err(error) = self.arguments.add(values) {
                self.error = Some(error);
            }
        }
        self
    }

    /// The arguments, for `sqlx::query_with` and its kin.
    pub fn finish(self) -> Result<sqlx::postgres::PgArguments, sqlx::Error> {
        match self.error {
            None => Ok(self.arguments),
            Some(error) => Err(sqlx::Error::Encode(error)),
        }
    }
}

/// `values` in PostgreSQL's array syntax (`{1,2,3}`), for a column of arrays bound as text
/// (see [`ColumnArrays`]).
pub fn array_literal(values: &[i64]) -> String {
    let mut text = String::with_capacity(2 + values.len() * 8);
    text.push('{');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&value.to_string());
    }
    text.push('}');
    text
}

/// One embedded migration. `{schema}` in the SQL is replaced by the service's schema name.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid postgres URL: {0}")]
    Url(sqlx::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    #[error("migration {name} of schema {schema} failed: {source}")]
    Migration {
        schema: String,
        name: String,
        source: sqlx::Error,
    },
    #[error(
        "migration {name} of schema {schema} was changed after it was applied; add a new migration instead"
    )]
    ChecksumMismatch { schema: String, name: String },
    #[error("the migrations of schema {schema} are listed wrongly: {problem}")]
    Listing { schema: String, problem: String },
    #[error("database error while migrating schema {schema}: {source}")]
    Migrator { schema: String, source: sqlx::Error },
}

/// A pooled connection idle for at least this long is pinged before it is handed out.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Connects a pool; fails fast when the database cannot be reached.
pub async fn connect(
    url: &str,
    application: &str,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    // No statement's text is logged by sqlx (it would log every statement at `debug`, and
    // one slower than a second at `warn`, in full): intake's submit transaction begins with a
    // statement whose text carries customers' identifiers (see intake's
    // `store::begin_for_customer`). Slow statements show in `pg_stat_statements` (constants
    // stripped) and in the services' own histograms.
    // No JIT compilation: the services' statements read and write a few rows by key, and a
    // plan whose cost passes JIT's thresholds (any plan with a sequential scan where one is
    // disabled, see "Plans") was compiled for 30–100 ms to read a handful of rows.
    let options = PgConnectOptions::from_str(url)
        .map_err(DbError::Url)?
        .options([("jit", "off")])
        .application_name(application)
        .log_statements(log::LevelFilter::Off)
        .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(1));
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
        .idle_timeout(Duration::from_secs(300))
        // sqlx pings every connection it hands out by default: one more round trip per
        // transaction, about a fifth of all the round trips under load. A connection that was
        // in use a moment ago is handed out as it is; one idle for longer is checked first.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(DbError::Connect)
}

/// A pooled connection that a long-running worker (an event consumer, a submission writer)
/// keeps between its transactions while it is busy.
///
/// sqlx pings a connection every time it goes back to the pool (one more round trip per
/// transaction, which no option turns off); a worker that keeps its connection pays that once
/// per busy spell instead. The worker gives it back when it runs out of work (`release`), when
/// the pool has no other connection to spare (`finish`), and after any error, so a connection
/// in an unknown state is never reused here: the pool checks and cleans it.
pub struct HeldConnection {
    pool: PgPool,
    connection: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
}

impl HeldConnection {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            connection: None,
        }
    }

    /// The held connection, taken from the pool first if none is held.
    pub async fn get(&mut self) -> Result<&mut sqlx::PgConnection, sqlx::Error> {
        if self.connection.is_none() {
            self.connection = Some(self.pool.acquire().await?);
        }
        Ok(self.connection.as_deref_mut().expect("just acquired"))
    }

    /// Gives the connection back to the pool (idle worker, or after an error).
    pub fn release(&mut self) {
        self.connection = None;
    }

    /// Ends one use: the connection is kept only while the pool has another to spare (an idle
    /// one, or room for a new one), so workers that keep theirs do not starve the others. The
    /// check is made when a use ends: if the pool runs dry later, a caller waits until a
    /// keeper's next use ends or it goes idle (a consumer: at the next heartbeat, 5 s).
    pub fn finish(&mut self) {
        let spare = self.pool.num_idle() > 0
            || self.pool.size() < self.pool.options().get_max_connections();
        if !spare {
            self.release();
        }
    }

    pub fn is_held(&self) -> bool {
        self.connection.is_some()
    }

    /// Closes the held connection instead of giving it back: its state is not known (a
    /// transaction of [`RawTransaction`] neither committed nor rolled back). PostgreSQL rolls
    /// back whatever it left open when the connection ends.
    pub fn discard(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            connection.close_on_drop();
        }
    }
}

/// A transaction begun by one multi-statement simple query whose rows the caller needs.
///
/// sqlx's `Transaction` can begin with a statement of the caller's (`begin_with`) but throws
/// its rows away, so work that must follow the `BEGIN` in the same round trip (intake's
/// repeat-contact lookup, after its customers' locks) would cost a round trip of its own.
/// Here the query's rows come back with the transaction. sqlx does not know the connection is
/// inside a transaction, so this one is ended here: [`commit`](Self::commit) or
/// [`rollback`](Self::rollback). If it is dropped before (an error, a panic, a cancelled
/// future), the connection is closed and PostgreSQL rolls the transaction back. A `begin` that
/// fails (a lock that timed out) is rolled back at once and the connection kept. Never begin a
/// sqlx transaction on it (sqlx does not know this one is open: its commit would end this one).
pub struct RawTransaction<'h> {
    held: &'h mut HeldConnection,
    open: bool,
}

impl<'h> RawTransaction<'h> {
    /// Runs `sql` (the simple query protocol: several statements, one round trip, no
    /// parameters), which must start with `BEGIN`, and returns its rows (of every statement
    /// that returns any, in order). Whatever fails after the `BEGIN` leaves a failed
    /// transaction block, which is rolled back here before the error is returned.
    pub async fn begin(
        held: &'h mut HeldConnection,
        sql: &str,
    ) -> Result<(Self, Vec<sqlx::postgres::PgRow>), sqlx::Error> {
        debug_assert!(
            sql.trim_start().starts_with("BEGIN"),
            "a raw transaction's query starts with BEGIN"
        );
        held.get().await?;
        let mut transaction = Self { held, open: true };
        match Executor::fetch_all(transaction.connection(), sqlx::raw_sql(sql)).await {
            Ok(rows) => Ok((transaction, rows)),
            Err(error) => {
                transaction.rollback().await;
                Err(error)
            }
        }
    }

    /// Rolls back; if that fails too, the connection is closed.
    pub async fn rollback(mut self) {
        if Executor::execute(self.connection(), sqlx::raw_sql("ROLLBACK"))
            .await
            .is_ok()
        {
            self.open = false;
        }
    }

    fn connection(&mut self) -> &mut sqlx::PgConnection {
        self.held
            .connection
            .as_deref_mut()
            .expect("a transaction holds its connection")
    }

    /// Commits; on failure the connection is closed (and the transaction rolled back).
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        Executor::execute(self.connection(), sqlx::raw_sql("COMMIT")).await?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for RawTransaction<'_> {
    type Target = sqlx::PgConnection;

    fn deref(&self) -> &sqlx::PgConnection {
        self.held
            .connection
            .as_deref()
            .expect("a transaction holds its connection")
    }
}

impl std::ops::DerefMut for RawTransaction<'_> {
    fn deref_mut(&mut self) -> &mut sqlx::PgConnection {
        self.connection()
    }
}

impl Drop for RawTransaction<'_> {
    fn drop(&mut self) {
        if self.open {
            self.held.discard();
        }
    }
}

fn checksum(sql: &str) -> String {
    // FNV-1a: stable across releases and platforms, enough to notice an edited migration.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Applies the migrations not yet applied to `schema`, in order.
///
/// Boxed so callers' futures stay provably `Send` (sqlx's executors trip the compiler's
/// higher-ranked lifetime inference otherwise).
pub fn migrate<'a>(
    pool: &'a PgPool,
    schema: &'a str,
    migrations: &'a [Migration],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DbError>> + Send + 'a>> {
    Box::pin(migrate_inner(pool, schema, migrations))
}

async fn migrate_inner(
    pool: &PgPool,
    schema: &str,
    migrations: &[Migration],
) -> Result<(), DbError> {
    let err = |source| DbError::Migrator {
        schema: schema.to_owned(),
        source,
    };
    crate::events::check_outbox_migrations(migrations).map_err(|problem| DbError::Listing {
        schema: schema.to_owned(),
        problem,
    })?;
    let mut conn = pool.acquire().await.map_err(err)?;
    let lock_key = format!("complaints-migrate:{schema}");
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(&lock_key)
        .execute(&mut *conn)
        .await
        .map_err(err)?;
    let result = apply_pending(&mut conn, schema, migrations).await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(&lock_key)
        .execute(&mut *conn)
        .await;
    result?;
    unlock.map_err(err)?;
    Ok(())
}

async fn apply_pending(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    migrations: &[Migration],
) -> Result<(), DbError> {
    let err = |source| DbError::Migrator {
        schema: schema.to_owned(),
        source,
    };
    // Create the schema only when missing: `CREATE SCHEMA IF NOT EXISTS` checks the CREATE right
    // on the database even when the schema exists, and a service's role in production owns its
    // schema but has no right to create others.
    let bootstrap = format!(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '{schema}') THEN
                 CREATE SCHEMA {schema};
             END IF;
         END $$;
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             name text PRIMARY KEY,
             checksum text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    );
    Executor::execute(&mut *conn, sqlx::raw_sql(&bootstrap))
        .await
        .map_err(err)?;
    let applied: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT name, checksum FROM {schema}.schema_migrations"
    ))
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    for migration in migrations {
        let sql = migration.sql.replace("{schema}", schema);
        let sum = checksum(&sql);
        if let Some((_, recorded)) = applied.iter().find(|(name, _)| name == migration.name) {
            if *recorded != sum {
                return Err(DbError::ChecksumMismatch {
                    schema: schema.to_owned(),
                    name: migration.name.to_owned(),
                });
            }
            continue;
        }
        let failed = |source| DbError::Migration {
            schema: schema.to_owned(),
            name: migration.name.to_owned(),
            source,
        };
        let mut tx = conn.begin().await.map_err(failed)?;
        Executor::execute(&mut *tx, sqlx::raw_sql(&sql))
            .await
            .map_err(failed)?;
        sqlx::query(&format!(
            "INSERT INTO {schema}.schema_migrations (name, checksum) VALUES ($1, $2)"
        ))
        .bind(migration.name)
        .bind(&sum)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(schema, migration = migration.name, "migration applied");
    }
    Ok(())
}

/// The URL of database `name` on the server `server_url` points at: the path replaced (or
/// added), user, host, port and query parameters (`sslmode`, …) kept.
pub fn database_url(server_url: &str, name: &str) -> String {
    let (main, query) = match server_url.find('?') {
        Some(q) => server_url.split_at(q),
        None => (server_url, ""),
    };
    let authority_start = main.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match main[authority_start..].find('/') {
        Some(slash) => &main[..authority_start + slash],
        None => main,
    };
    format!("{base}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::{DbError, database_url, migrate};
    use crate::events::{CURSOR_MIGRATION, OUTBOX_MIGRATION};

    #[tokio::test]
    async fn a_list_with_half_the_outbox_is_refused_before_the_database_is_touched() {
        // A lazy pool to a server that does not exist: a refusal must not need it.
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let refused = migrate(&pool, "x", &[OUTBOX_MIGRATION, CURSOR_MIGRATION])
            .await
            .unwrap_err();
        assert!(matches!(refused, DbError::Listing { .. }), "{refused}");
        assert!(refused.to_string().contains("schema x"), "{refused}");
    }

    #[test]
    fn array_literals_are_postgres_array_syntax() {
        assert_eq!(super::array_literal(&[]), "{}");
        assert_eq!(super::array_literal(&[5]), "{5}");
        assert_eq!(
            super::array_literal(&[-1, 0, 86_400_000]),
            "{-1,0,86400000}"
        );
    }

    #[test]
    fn database_url_replaces_only_the_path() {
        assert_eq!(
            database_url("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            database_url("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            database_url(
                "postgres://u@h/db?sslmode=require&sslrootcert=/etc/ca.pem",
                "x"
            ),
            "postgres://u@h/x?sslmode=require&sslrootcert=/etc/ca.pem"
        );
    }
}
