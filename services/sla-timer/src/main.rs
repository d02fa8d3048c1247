use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init(sla_timer::SERVICE_NAME);
    let config = sla_timer::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return complaints_kit::server::ServiceContext::migrate_only(
            sla_timer::SERVICE_NAME,
            &config.common,
            sla_timer::SCHEMA,
            sla_timer::MIGRATIONS,
        )
        .await;
    }
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    sla_timer::run(config, listener, Shutdown::on_signals()).await
}
