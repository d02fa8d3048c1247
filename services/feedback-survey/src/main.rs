use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init(feedback_survey::SERVICE_NAME);
    let config = feedback_survey::Config::from_env()?;
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return complaints_kit::server::ServiceContext::migrate_only(
            feedback_survey::SERVICE_NAME,
            &config.common,
            feedback_survey::SCHEMA,
            feedback_survey::MIGRATIONS,
        )
        .await;
    }
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    feedback_survey::run(config, listener, Shutdown::on_signals()).await
}
