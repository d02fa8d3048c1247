//! Graceful shutdown: one signal (SIGTERM, Ctrl-C, or a test's trigger) that servers, streams
//! and background loops all watch, so in-flight work drains instead of being cut.

use tokio::sync::watch;

/// Cheap to clone; every clone sees the same trigger.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Fires the shutdown.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// A shutdown fired by SIGTERM or Ctrl-C.
    pub fn on_signals() -> Shutdown {
        Self::on_signals_or(std::future::pending::<()>(), "")
    }

    /// A shutdown fired by SIGTERM or Ctrl-C, or once process `parent` (the one that started
    /// this one) has gone, even before this one looked: for services started as children of a
    /// tool (the bench, tests), which must not outlive it holding its ports when it is killed
    /// outright (no chance to stop them).
    pub fn on_signals_or_parent_exit(parent: u32) -> Shutdown {
        #[cfg(unix)]
        let orphaned = parent_gone(parent, std::os::unix::process::parent_id, PARENT_CHECK);
        #[cfg(not(unix))]
        let orphaned = std::future::pending::<()>();
        Self::on_signals_or(
            orphaned,
            "the process that started this one is gone; draining",
        )
    }

    /// A shutdown fired by a signal or when `other` resolves (saying `why`).
    fn on_signals_or(
        other: impl std::future::Future<Output = ()> + Send + 'static,
        why: &'static str,
    ) -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            tokio::select! {
                _ = wait_for_signal() => tracing::info!("shutdown signal received; draining"),
                _ = other => tracing::warn!("{why}"),
            }
            trigger.trigger();
        });
        shutdown
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the shutdown fires (immediately if it already has).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

/// How often a child service looks at who its parent is.
const PARENT_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Resolves once `parent_now()` answers something other than `parent` (at once if it already
/// does): a process whose parent dies is handed to another (init, or a subreaper).
async fn parent_gone(parent: u32, parent_now: impl Fn() -> u32, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if parent_now() != parent {
            return;
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn a_child_notices_when_its_parent_is_gone_and_not_before() {
        let parent = std::sync::Arc::new(AtomicU32::new(4242));
        let watched = parent.clone();
        let changed = tokio::spawn(parent_gone(
            4242,
            move || watched.load(Ordering::Relaxed),
            Duration::from_millis(10),
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!changed.is_finished(), "the parent is still there");
        // Re-parented to init.
        parent.store(1, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(5), changed)
            .await
            .expect("noticed at a later check")
            .unwrap();
    }

    #[tokio::test]
    async fn a_child_whose_parent_died_before_it_looked_goes_at_once() {
        // Already re-parented to init when the watch starts.
        tokio::time::timeout(
            Duration::from_secs(5),
            parent_gone(4242, || 1, Duration::from_secs(3600)),
        )
        .await
        .expect("noticed at the first look, not an hour later");
    }
}
