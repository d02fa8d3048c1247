use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(performance_scoring::SERVICE_NAME);
    let config = performance_scoring::Config::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    performance_scoring::run(config, listener, Shutdown::on_signals()).await
}
