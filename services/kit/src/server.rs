//! Server bootstrap shared by the five services: connect and migrate, wrap the service's APIs
//! in the auth interceptor, add `grpc.health.v1` and server reflection (v1 and v1alpha, so
//! grpcurl of any age works), and serve until shutdown, draining in-flight calls.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::ServingStatus;

use crate::auth::{AuthConfig, AuthInterceptor, BearerToken, Verifier};
use crate::config::{CommonConfig, MetricsEndpoint};
use crate::db::{self, Migration};
use crate::metrics::{GrpcMetricsLayer, Metrics};
use crate::shutdown::Shutdown;

/// What a running service holds: its pool, its auth, its shutdown.
#[derive(Clone)]
pub struct ServiceContext {
    pub name: &'static str,
    pub pool: PgPool,
    pub auth: AuthConfig,
    pub verifier: Verifier,
    pub shutdown: Shutdown,
    pub shutdown_grace: Duration,
    pub metrics: Arc<Metrics>,
    /// How long produced events are kept.
    pub event_retention: Duration,
    /// Batching of event streams and consumers.
    pub event_tuning: crate::events::EventTuning,
}

impl ServiceContext {
    /// Connects to the database and brings `schema` up to date.
    pub async fn start(
        name: &'static str,
        config: &CommonConfig,
        schema: &str,
        migrations: &[Migration],
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let pool = db::connect(&config.database_url, name, config.db_pool_max).await?;
        db::migrate(&pool, schema, migrations).await?;
        let verifier = config.auth.verifier()?;
        let metrics = Metrics::new();
        metrics
            .db_pool_max_connections
            .set(config.db_pool_max as i64);
        let gauges = metrics.db_pool_connections.clone();
        let watched = pool.clone();
        metrics.on_scrape(move || {
            let idle = watched.num_idle() as i64;
            gauges.with_label_values(&["idle"]).set(idle);
            gauges
                .with_label_values(&["in_use"])
                .set(watched.size() as i64 - idle);
        });
        let listener = match &config.metrics {
            MetricsEndpoint::Addr(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("METRICS_LISTEN_ADDR {addr}: {e}"))?,
            ),
            MetricsEndpoint::Bound(slot) => {
                let taken = slot.lock().ok().and_then(|mut s| s.take());
                match taken {
                    Some(std) => {
                        std.set_nonblocking(true)?;
                        Some(TcpListener::from_std(std)?)
                    }
                    None => None,
                }
            }
            MetricsEndpoint::Disabled => None,
        };
        if let Some(listener) = listener {
            tracing::info!(service = name, address = %listener.local_addr()?, "serving metrics");
            tokio::spawn(metrics.clone().serve(listener, shutdown.clone()));
        }
        Ok(Self {
            name,
            pool,
            auth: config.auth.clone(),
            verifier,
            shutdown,
            shutdown_grace: config.shutdown_grace,
            metrics,
            event_retention: config.event_retention,
            event_tuning: config.event_tuning,
        })
    }

    /// `<binary> migrate`: brings the schema up to date and returns, for deployment hooks.
    pub async fn migrate_only(
        name: &'static str,
        config: &CommonConfig,
        schema: &str,
        migrations: &[Migration],
    ) -> anyhow::Result<()> {
        let pool = db::connect(&config.database_url, name, 2).await?;
        db::migrate(&pool, schema, migrations).await?;
        pool.close().await;
        tracing::info!(service = name, schema, "migrations applied; exiting");
        Ok(())
    }

    /// Wraps a generated server so every call must carry a valid bearer token.
    pub fn authenticated<S>(&self, service: S) -> InterceptedService<S, AuthInterceptor> {
        InterceptedService::new(service, AuthInterceptor::new(self.verifier.clone()))
    }

    /// A lazily connecting channel to another service; reconnects on its own.
    pub fn channel(&self, url: &str) -> anyhow::Result<Channel> {
        Ok(Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy())
    }

    /// The bearer this service presents to the others.
    pub fn service_bearer(&self) -> anyhow::Result<BearerToken> {
        Ok(BearerToken::new(&self.auth.service_token(self.name)?)?)
    }

    /// Serves `routes` plus health and reflection on `listener` until shutdown.
    /// `served` names the gRPC services reported as SERVING by the health service.
    pub async fn serve(
        &self,
        listener: TcpListener,
        routes: Routes,
        served: &[&str],
    ) -> anyhow::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in served {
            reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        // Advertise only what this server serves, though the descriptors hold every contract.
        let advertised = served.iter().copied().chain([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]);
        let reflection = || {
            advertised.clone().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(complaints_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(name),
            )
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let routes = routes
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let address = listener.local_addr()?;
        tracing::info!(service = self.name, %address, "serving gRPC");
        let shutdown = self.shutdown.clone();
        let names: Vec<String> = served.iter().map(|s| s.to_string()).collect();
        let draining = async move {
            shutdown.wait().await;
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            for name in names {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        };
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .layer(GrpcMetricsLayer::new(self.metrics.clone()))
            .add_routes(routes)
            // `Server::tcp_nodelay` only applies to listeners tonic binds itself; without
            // TCP_NODELAY on accepted sockets, small responses wait for delayed ACKs (~40 ms).
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                draining,
            );
        let grace = self.shutdown_grace;
        let shutdown = self.shutdown.clone();
        tokio::select! {
            result = server => result?,
            _ = async { shutdown.wait().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(service = self.name, "calls still in flight after the grace period; stopping anyway");
            }
        }
        self.pool.close().await;
        tracing::info!(service = self.name, "stopped");
        Ok(())
    }
}
