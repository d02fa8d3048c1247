use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(intake::SERVICE_NAME);
    let config = intake::Config::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    intake::run(config, listener, Shutdown::on_signals()).await
}
