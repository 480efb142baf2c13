//! Running queues together until a signal: go-zero's `ServiceGroup`.

use std::future::Future;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::queue::Queue;
pub use crate::shutdown::Shutdown;

/// Queues that start together and stop together, as go-zero's `service.ServiceGroup`.
///
/// ```no_run
/// # async fn run(queue: kq::Queue) -> Result<(), kq::Error> {
/// let mut group = kq::ServiceGroup::new();
/// group.add(queue);
/// group.run().await // until SIGINT or SIGTERM, then a graceful stop
/// # }
/// ```
#[derive(Default)]
pub struct ServiceGroup {
    queues: Vec<Queue>,
}

impl std::fmt::Debug for ServiceGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceGroup")
            .field("queues", &self.queues.len())
            .finish()
    }
}

impl ServiceGroup {
    /// An empty group.
    pub fn new() -> Self {
        ServiceGroup::default()
    }

    /// Adds a queue.
    pub fn add(&mut self, queue: Queue) -> &mut Self {
        self.queues.push(queue);
        self
    }

    /// How many queues it holds.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Runs every queue until SIGINT or SIGTERM, then stops them gracefully: fetching stops,
    /// running handlers finish (within each queue's `ShutdownTimeout`), offsets are
    /// committed and the consumers leave their groups. A second signal exits at once.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until_signalled(TerminationSignals::listen()).await
    }

    /// `run`, on signals listened for since before the group was built: a signal that came
    /// while the service was starting stops it as soon as it has started.
    pub(crate) async fn run_until_signalled(
        self,
        mut signals: TerminationSignals,
    ) -> Result<(), Error> {
        self.run_until(async move {
            signals.recv().await;
            tracing::info!("signal received, stopping; a second signal exits at once");
            tokio::spawn(async move {
                signals.recv().await;
                tracing::warn!("second signal, exiting now");
                std::process::exit(130);
            });
        })
        .await
    }

    /// Runs every queue until `stop` completes or a queue fails, then stops them all
    /// gracefully. Returns the first failure.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> Result<(), Error> {
        if self.queues.is_empty() {
            // Nothing to consume, but tasks spawned by the service state keep running.
            stop.await;
            return Ok(());
        }
        let shutdown = Shutdown::new();
        let mut running = JoinSet::new();
        for queue in self.queues {
            let shutdown = shutdown.clone();
            running.spawn(async move { queue.run(shutdown).await });
        }
        let mut first_error = None;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop, if !shutdown.is_triggered() => shutdown.trigger(),
                finished = running.join_next() => match finished {
                    None => break,
                    Some(result) => {
                        let result = result.unwrap_or_else(|e| Err(Error::Stopped {
                            consumer: "queue task".into(),
                            reason: e.to_string(),
                        }));
                        if let Err(e) = result {
                            tracing::error!(error = %e, "queue failed, stopping the service");
                            first_error.get_or_insert(e);
                        }
                        // One queue ending ends the service: go-zero's group stops together.
                        shutdown.trigger();
                    }
                },
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Completes on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn termination_signal() {
    TerminationSignals::listen().recv().await
}

/// SIGINT and SIGTERM, caught from the moment this is made rather than from the first wait,
/// so that one sent while a service starts does not kill the process (the default action)
/// but stops it once it has started. Elsewhere than on Unix, Ctrl-C from the first wait.
pub(crate) struct TerminationSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl TerminationSignals {
    /// Starts catching the signals. Needs a Tokio runtime with signals enabled.
    pub(crate) fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let streams = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(interrupt), Ok(terminate)) => Some((interrupt, terminate)),
                _ => None,
            };
            TerminationSignals { streams }
        }
        #[cfg(not(unix))]
        TerminationSignals {}
    }

    /// Waits for the next signal; one that came since `listen` counts.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((interrupt, terminate)) = &mut self.streams {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
