use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init(case_management::SERVICE_NAME);
    let config = case_management::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return complaints_kit::server::ServiceContext::migrate_only(
            case_management::SERVICE_NAME,
            &config.common,
            case_management::SCHEMA,
            case_management::MIGRATIONS,
        )
        .await;
    }
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    case_management::run(config, listener, Shutdown::on_signals()).await
}
