use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(sla_timer::SERVICE_NAME);
    let config = sla_timer::Config::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    sla_timer::run(config, listener, Shutdown::on_signals()).await
}
