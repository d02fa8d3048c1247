//! The shared kit: everything the five complaint services need exactly once — configuration,
//! telemetry, JWT auth, the database pool and migrator, the gRPC server bootstrap (health,
//! reflection, graceful shutdown), the event outbox with its subscription stream and consumer,
//! and the helpers that turn domain errors into rich gRPC statuses.

pub mod auth;
pub mod config;
pub mod db;
pub mod events;
pub mod grpc;
pub mod metrics;
pub mod pagination;
pub mod pg_private;
pub mod process;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod time;

#[cfg(feature = "testing")]
pub mod testing;

/// Every binary of the suite allocates with mimalloc: under load, glibc's allocator took about
/// 40 % of the services' own CPU time (profiled with `perf` during `complaints bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use auth::{Principal, Role};
pub use shutdown::Shutdown;
