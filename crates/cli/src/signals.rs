//! Graceful shutdown on the first SIGTERM or Ctrl-C (SIGINT).
//!
//! The handlers are installed by [`Shutdown::listen`], which a subcommand
//! calls before it starts anything: a signal that arrives while a plane is
//! still starting is then kept and answered with a graceful shutdown once it
//! runs, instead of killing the process with the default action.

#[cfg(unix)]
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Shutdown {
    #[cfg(unix)]
    terminate: Option<Signal>,
    #[cfg(unix)]
    interrupt: Option<Signal>,
}

impl Shutdown {
    /// Installs the handlers now; must be called inside the Tokio runtime.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            let install = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::warn!(error = %err, signal = name, "cannot listen for the signal");
                    None
                }
            };
            Self {
                terminate: install(SignalKind::terminate(), "SIGTERM"),
                interrupt: install(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the first SIGTERM or Ctrl-C since [`Shutdown::listen`].
    pub async fn received(self) {
        #[cfg(unix)]
        {
            async fn next(signal: Option<Signal>) {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(self.interrupt) => tracing::info!("Ctrl-C received"),
                () = next(self.terminate) => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(err) = tokio::signal::ctrl_c().await {
                tracing::warn!(error = %err, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!("Ctrl-C received");
        }
    }
}
