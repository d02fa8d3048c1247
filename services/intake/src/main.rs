use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init(intake::SERVICE_NAME);
    let config = intake::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return complaints_kit::server::ServiceContext::migrate_only(
            intake::SERVICE_NAME,
            &config.common,
            intake::SCHEMA,
            intake::MIGRATIONS,
        )
        .await;
    }
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    intake::run(config, listener, Shutdown::on_signals()).await
}
