use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init(performance_scoring::SERVICE_NAME);
    let config = performance_scoring::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return complaints_kit::server::ServiceContext::migrate_only(
            performance_scoring::SERVICE_NAME,
            &config.common,
            performance_scoring::SCHEMA,
            performance_scoring::MIGRATIONS,
        )
        .await;
    }
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    performance_scoring::run(config, listener, Shutdown::on_signals()).await
}
