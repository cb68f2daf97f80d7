//! Routing SIGINT and SIGTERM to the runs that are waiting on a container.
//!
//! A tokio signal handler, once installed, is never uninstalled: after it, the signal no
//! longer ends the process by itself. So one thread owns the handlers for the whole
//! process; each run subscribes while it has a container, and a signal with no subscriber
//! exits the process with status 128 + the signal's number (what a shell reports for a
//! death by that signal), keeping Ctrl-C and `kill` working outside runs.

use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;

use super::{DockerError, Result};

/// A signal that interrupts runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    Int,
    Term,
}

impl Interrupt {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Interrupt::Int => "SIGINT",
            Interrupt::Term => "SIGTERM",
        }
    }

    fn exit_status(self) -> i32 {
        match self {
            Interrupt::Int => 128 + 2,
            Interrupt::Term => 128 + 15,
        }
    }
}

static ROUTER: OnceLock<Result<broadcast::Sender<Interrupt>, String>> = OnceLock::new();

/// A receiver that gets each SIGINT and SIGTERM. The handlers are installed before this
/// returns, so neither signal can kill the process while the receiver lives.
pub(crate) fn subscribe() -> Result<broadcast::Receiver<Interrupt>> {
    match ROUTER.get_or_init(install) {
        Ok(tx) => Ok(tx.subscribe()),
        Err(e) => Err(DockerError::Runtime {
            action: "install the Ctrl-C handler",
            source: std::io::Error::other(e.clone()),
        }),
    }
}

fn install() -> Result<broadcast::Sender<Interrupt>, String> {
    let (tx, _) = broadcast::channel(4);
    let router = tx.clone();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("dockerbuild-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start a runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let handlers = signal(SignalKind::interrupt())
                    .and_then(|int| Ok((int, signal(SignalKind::terminate())?)));
                let (mut int, mut term) = match handlers {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot handle signals: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    let sig = tokio::select! {
                        Some(()) = int.recv() => Interrupt::Int,
                        Some(()) = term.recv() => Interrupt::Term,
                        else => return,
                    };
                    if router.receiver_count() == 0 {
                        std::process::exit(sig.exit_status());
                    }
                    tracing::debug!(signal = sig.name(), "interrupting the running containers");
                    let _ = router.send(sig);
                }
            });
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    ready_rx
        .recv()
        .map_err(|_| "the signal thread died".to_owned())??;
    Ok(tx)
}
