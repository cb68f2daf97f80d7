//! Interactive containers (`dockerbuild shell`): stdin in, the terminal's output out.

use std::io::{IsTerminal, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bollard::container::AttachContainerResults;
use bollard::query_parameters::{AttachContainerOptions, ResizeContainerTTYOptions};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tracing::{debug, instrument};

use super::engine::api;
use super::{ContainerSpec, DockerError, Engine, Result};

/// How long a container may keep running after its output ended before it counts as
/// detached (the detach keys, ctrl-p ctrl-q, close the stream without ending it).
const EXIT_GRACE: Duration = Duration::from_secs(10);

impl Engine {
    /// Runs `spec` attached to this process's stdin and stdout and returns its exit code.
    /// When stdin is a terminal the container gets a TTY of the same size and the host
    /// terminal is put in raw mode (with `stty`) until the container exits; otherwise the
    /// container gets a TTY only if `spec.tty`. The container is removed afterwards.
    pub fn run_interactive(&self, spec: &ContainerSpec) -> Result<i64> {
        let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        let mut spec = spec.clone();
        spec.tty |= terminal;
        let size = if terminal { terminal_size() } else { None };
        let _raw = if terminal { RawTerminal::enter() } else { None };
        self.attached(&spec, std::io::stdin(), &mut std::io::stdout(), size)
    }

    /// Runs `spec` with `input` fed to its stdin and its output written to `output` as it
    /// arrives; returns its exit code. At the end of `input` the container's stdin is
    /// closed (with a TTY, a ctrl-D is sent instead, as a terminal would). The container
    /// is removed afterwards.
    pub fn run_with_input(
        &self,
        spec: &ContainerSpec,
        input: impl Read + Send + 'static,
        output: &mut dyn Write,
    ) -> Result<i64> {
        self.attached(spec, input, output, None)
    }

    #[instrument(skip_all, fields(image = %spec.image, kind = %spec.kind, tty = spec.tty))]
    fn attached(
        &self,
        spec: &ContainerSpec,
        input: impl Read + Send + 'static,
        output: &mut dyn Write,
        size: Option<(u16, u16)>,
    ) -> Result<i64> {
        let body = self.create_body(spec, true)?;
        self.runtime()
            .block_on(self.contained(&spec.image, body, async |id: &str| {
                self.pump(id, spec.tty, input, output, size).await
            }))
    }

    async fn pump(
        &self,
        id: &str,
        tty: bool,
        input: impl Read + Send + 'static,
        output: &mut dyn Write,
        size: Option<(u16, u16)>,
    ) -> Result<i64> {
        let AttachContainerResults {
            output: mut out,
            input: mut to_container,
        } = self
            .docker()
            .attach_container(
                id,
                Some(AttachContainerOptions {
                    stream: true,
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .await
            .map_err(api("attach to container", id))?;
        self.start_container(id).await?;
        if let Some((rows, cols)) = size {
            let resized = self
                .docker()
                .resize_container_tty(
                    id,
                    ResizeContainerTTYOptions {
                        h: rows.into(),
                        w: cols.into(),
                    },
                )
                .await;
            if let Err(e) = resized {
                debug!(error = %e, "could not size the container's terminal");
            }
        }

        let mut from_host = spawn_reader(input);
        let mut input_open = true;
        let write_err = |source| DockerError::Runtime {
            action: "write the container's output",
            source,
        };
        loop {
            tokio::select! {
                chunk = out.next() => match chunk {
                    Some(chunk) => {
                        let bytes = chunk
                            .map_err(api("read the output of container", id))?
                            .into_bytes();
                        output.write_all(&bytes).map_err(write_err)?;
                        output.flush().map_err(write_err)?;
                    }
                    None => break,
                },
                data = from_host.recv(), if input_open => match data {
                    Some(Ok(data)) => {
                        // The container may have exited already; its end shows on `out`.
                        if let Err(e) = to_container.write_all(&data).await {
                            debug!(error = %e, "stdin of the container closed");
                            input_open = false;
                        }
                    }
                    Some(Err(e)) => {
                        return Err(DockerError::Runtime { action: "read stdin", source: e });
                    }
                    None => {
                        input_open = false;
                        if tty {
                            // With a TTY the daemon ends the output stream when stdin
                            // closes; end the input the way a terminal does instead.
                            let _ = to_container.write_all(b"\x04").await;
                        } else {
                            let _ = to_container.shutdown().await;
                        }
                    }
                },
            }
        }
        match tokio::time::timeout(EXIT_GRACE, self.wait_container(id)).await {
            Ok(code) => code,
            Err(_) => Err(DockerError::Detached {
                container: id.to_owned(),
            }),
        }
    }
}

/// Reads `input` on a thread of its own (a blocking read cannot be cancelled; the thread
/// ends at the next read after the container is gone).
fn spawn_reader(mut input: impl Read + Send + 'static) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        loop {
            let item = match input.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The host terminal in raw mode, restored when dropped.
struct RawTerminal {
    saved: String,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        let saved = stty(&["-g"])?;
        stty(&["raw", "-echo"])?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if stty(&[self.saved.as_str()]).is_none() {
            debug!("could not restore the terminal (run `stty sane`)");
        }
    }
}

/// (rows, columns) of the terminal on stdin.
fn terminal_size() -> Option<(u16, u16)> {
    let size = stty(&["size"])?;
    let (rows, cols) = size.split_once(' ')?;
    Some((rows.parse().ok()?, cols.parse().ok()?))
}

fn stty(args: &[&str]) -> Option<String> {
    let out = Command::new("stty")
        .args(args)
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
