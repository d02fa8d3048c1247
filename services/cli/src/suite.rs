//! Starting and stopping the five services together.

use std::time::Duration;

use complaints_kit::auth::AuthConfig;
use complaints_kit::config::CommonConfig;
use complaints_kit::shutdown::{Shutdown, ShutdownTrigger};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Addresses of the running services.
#[derive(Clone, Debug)]
pub struct SuiteUrls {
    pub intake: String,
    pub cases: String,
    pub sla: String,
    pub survey: String,
    pub scoring: String,
}

pub struct SuiteOptions {
    pub database_url: String,
    pub auth: AuthConfig,
    /// First of five consecutive ports (intake, cases, sla, survey, scoring); `None` for
    /// ephemeral ports.
    pub base_port: Option<u16>,
    pub bind_host: String,
    pub survey_delay: Duration,
    pub survey_token_secret: String,
    pub pool_size: u32,
    pub scheduler_poll: Duration,
}

pub struct Suite {
    pub urls: SuiteUrls,
    trigger: ShutdownTrigger,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

async fn bind(host: &str, port: u16) -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind((host, port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, format!("http://{addr}")))
}

impl Suite {
    pub async fn start(options: SuiteOptions) -> anyhow::Result<Self> {
        let port = |i: u16| options.base_port.map(|p| p + i).unwrap_or(0);
        let host = options.bind_host.as_str();
        let (intake_l, intake) = bind(host, port(0)).await?;
        let (cases_l, cases) = bind(host, port(1)).await?;
        let (sla_l, sla) = bind(host, port(2)).await?;
        let (survey_l, survey) = bind(host, port(3)).await?;
        let (scoring_l, scoring) = bind(host, port(4)).await?;
        let urls = SuiteUrls {
            intake,
            cases,
            sla,
            survey,
            scoring,
        };

        let common = CommonConfig {
            database_url: options.database_url.clone(),
            listen_addr: intake_l.local_addr()?,
            db_pool_max: options.pool_size,
            shutdown_grace: Duration::from_secs(10),
            auth: options.auth.clone(),
        };
        let (trigger, shutdown) = Shutdown::new();
        let mut tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = Vec::new();

        let config = intake::Config::new(common.clone());
        tasks.push((
            "intake",
            tokio::spawn(intake::run(config, intake_l, shutdown.clone())),
        ));

        let config = case_management::Config {
            common: common.clone(),
            intake_url: urls.intake.clone(),
            survey_url: urls.survey.clone(),
        };
        tasks.push((
            "case-management",
            tokio::spawn(case_management::run(config, cases_l, shutdown.clone())),
        ));

        let config = sla_timer::Config {
            common: common.clone(),
            cases_url: urls.cases.clone(),
            survey_url: urls.survey.clone(),
            org_timezone: chrono_tz::Asia::Shanghai,
            scheduler_poll: options.scheduler_poll,
        };
        tasks.push((
            "sla-timer",
            tokio::spawn(sla_timer::run(config, sla_l, shutdown.clone())),
        ));

        let config = feedback_survey::Config {
            common: common.clone(),
            cases_url: urls.cases.clone(),
            token_secret: options.survey_token_secret.clone(),
            delay: options.survey_delay,
            token_ttl: Duration::from_secs(7 * 86_400),
        };
        tasks.push((
            "feedback-survey",
            tokio::spawn(feedback_survey::run(config, survey_l, shutdown.clone())),
        ));

        let config = performance_scoring::Config {
            common,
            cases_url: urls.cases.clone(),
            sla_url: urls.sla.clone(),
            survey_url: urls.survey.clone(),
        };
        tasks.push((
            "performance-scoring",
            tokio::spawn(performance_scoring::run(config, scoring_l, shutdown)),
        ));

        Ok(Self {
            urls,
            trigger,
            tasks,
        })
    }

    /// Resolves when any service stops on its own (an error), naming it.
    pub async fn any_stopped(&mut self) -> anyhow::Result<()> {
        let futures = self.tasks.iter_mut().map(|(name, handle)| {
            let name = *name;
            Box::pin(async move {
                match handle.await {
                    Ok(Ok(())) => anyhow::bail!("{name} stopped"),
                    Ok(Err(e)) => anyhow::bail!("{name} failed: {e:#}"),
                    Err(e) => anyhow::bail!("{name} panicked: {e}"),
                }
            })
        });
        let (result, _, _) = futures_util::future::select_all(futures).await;
        result
    }

    /// Graceful shutdown of all five; waits for them to drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger.trigger();
        for (name, handle) in self.tasks {
            match handle.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => anyhow::bail!("{name} failed: {e:#}"),
                Err(e) => anyhow::bail!("{name} panicked: {e}"),
            }
        }
        Ok(())
    }
}
