//! Starting and stopping the five services together.

use std::time::Duration;

use complaints_kit::auth::AuthConfig;
use complaints_kit::config::{CommonConfig, MetricsEndpoint};

/// The five services, in port order.
/// Set (to the parent's process id) on a `complaints serve` child, it stops once that process
/// is gone: the bench and tests set it, so a parent killed outright leaves no service behind.
pub const EXIT_WITH_PARENT: &str = "SERVE_EXIT_WITH_PARENT";

pub const SERVICE_NAMES: [&str; 5] = [
    "intake",
    "case-management",
    "sla-timer",
    "feedback-survey",
    "performance-scoring",
];
use complaints_kit::shutdown::{Shutdown, ShutdownTrigger};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Addresses of the running services.
#[derive(Clone, Debug)]
pub struct SuiteUrls {
    /// `http://host:port/metrics` of each service, by service name.
    pub metrics: Vec<(&'static str, String)>,
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
    let listener = TcpListener::from_std(bind_std(host, port, "").await?)?;
    let addr = listener.local_addr()?;
    Ok((listener, format!("http://{addr}")))
}

/// Binds a listener, waiting up to 3 s while the port is in use: the default ports lie in
/// Linux's ephemeral range, so a connection just opened or closing elsewhere on the machine
/// can hold one for a moment (`up` once failed that way on the metrics port 51054).
async fn bind_std(host: &str, port: u16, what: &str) -> anyhow::Result<std::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match std::net::TcpListener::bind((host, port)) {
            Ok(listener) => {
                listener.set_nonblocking(true)?;
                return Ok(listener);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && port != 0
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("cannot listen on {host}:{port}{what}: {e}"),
        }
    }
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
        let mut metrics_listeners = Vec::new();
        let mut metrics = Vec::new();
        for (i, name) in SERVICE_NAMES.iter().enumerate() {
            let port = options.base_port.map(|p| p + 1000 + i as u16).unwrap_or(0);
            let listener = bind_std(host, port, " for metrics").await?;
            metrics.push((*name, format!("http://{}/metrics", listener.local_addr()?)));
            metrics_listeners.push(MetricsEndpoint::bound(listener));
        }
        let urls = SuiteUrls {
            metrics,
            intake,
            cases,
            sla,
            survey,
            scoring,
        };
        let metrics_for = |i: usize, common: &CommonConfig| CommonConfig {
            metrics: metrics_listeners[i].clone(),
            ..common.clone()
        };

        let common = CommonConfig {
            metrics: MetricsEndpoint::Disabled,
            database_url: options.database_url.clone(),
            listen_addr: intake_l.local_addr()?,
            db_pool_max: options.pool_size,
            shutdown_grace: Duration::from_secs(10),
            event_retention: Duration::from_secs(30 * 86_400),
            event_tuning: complaints_kit::config::event_tuning_from_env()?,
            auth: options.auth.clone(),
        };
        let (trigger, shutdown) = Shutdown::new();
        let mut tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = Vec::new();

        let mut config = intake::Config::new(metrics_for(0, &common));
        // Intake follows case-management's events (whether a complaint's case is still open);
        // without this it dialled the default port 50052, right only for `up` on default ports.
        config.cases_url = urls.cases.clone();
        tasks.push((
            "intake",
            tokio::spawn(intake::run(config, intake_l, shutdown.clone())),
        ));

        let config = case_management::Config {
            common: metrics_for(1, &common),
            intake_url: urls.intake.clone(),
            survey_url: urls.survey.clone(),
            policy: case_management::CasePolicy::from_env()?,
        };
        tasks.push((
            "case-management",
            tokio::spawn(case_management::run(config, cases_l, shutdown.clone())),
        ));

        let config = sla_timer::Config {
            common: metrics_for(2, &common),
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
            common: metrics_for(3, &common),
            cases_url: urls.cases.clone(),
            token_secret: options.survey_token_secret.clone(),
            delay: options.survey_delay,
            token_ttl: Duration::from_secs(7 * 86_400),
            policy: feedback_survey::Policy::default(),
        };
        tasks.push((
            "feedback-survey",
            tokio::spawn(feedback_survey::run(config, survey_l, shutdown.clone())),
        ));

        let config = performance_scoring::Config::new(
            metrics_for(4, &common),
            urls.cases.clone(),
            urls.sla.clone(),
            urls.survey.clone(),
        );
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

#[cfg(test)]
mod tests {
    use super::bind_std;

    #[tokio::test]
    async fn a_port_held_for_a_moment_is_bound_once_free_and_one_held_for_good_is_refused() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let release = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            drop(held);
        });
        let listener = bind_std("127.0.0.1", port, "").await.unwrap();
        assert_eq!(listener.local_addr().unwrap().port(), port);
        release.await.unwrap();
        // Held for good: refused after the wait, naming the address.
        let err = bind_std("127.0.0.1", port, " for metrics")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on 127.0.0.1:{port} for metrics")),
            "{err}"
        );
    }
}
