use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(feedback_survey::SERVICE_NAME);
    let config = feedback_survey::Config::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    feedback_survey::run(config, listener, Shutdown::on_signals()).await
}
