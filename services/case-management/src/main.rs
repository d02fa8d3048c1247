use complaints_kit::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(case_management::SERVICE_NAME);
    let config = case_management::Config::from_env()?;
    let listener = tokio::net::TcpListener::bind(config.common.listen_addr).await?;
    case_management::run(config, listener, Shutdown::on_signals()).await
}
