//! `kubectl exec` and `attach` on the node: a process in the container (or the container's
//! own output) joined to the client's channels, ending with the exit status on the error
//! channel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runtime::containers::{Attachment, ExecProcess, ExecSpec, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::Shared;
use crate::streams::{Channels, Input, Output, Want, exit_status, failure};

/// After the process exits, output still in the pipes gets this long to drain (a background
/// child may hold them open for ever).
const DRAIN: Duration = Duration::from_secs(2);

async fn pump(
    mut r: std::pin::Pin<Box<dyn AsyncRead + Send>>,
    out: mpsc::Sender<Output>,
    wrap: fn(Bytes) -> Output,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out
                    .send(wrap(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Run `spec` in container `id` for the client on `ch`.
pub(crate) async fn exec(shared: Arc<Shared>, id: String, spec: ExecSpec, ch: Channels) {
    let Channels { mut input, output } = ch;
    let p = match shared.runtime.exec(&id, &spec).await {
        Ok(p) => p,
        Err(e) => {
            let _ = output.send(Output::Status(failure(&e.to_string()))).await;
            return;
        }
    };
    let ExecProcess {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = p;
    let mut pumps = Vec::new();
    if let Some(r) = stdout {
        pumps.push(tokio::spawn(pump(r, output.clone(), Output::Stdout)));
    }
    if let Some(r) = stderr {
        pumps.push(tokio::spawn(pump(r, output.clone(), Output::Stderr)));
    }
    let feeder = tokio::spawn(async move {
        let mut stdin = stdin;
        while let Some(i) = input.recv().await {
            match i {
                Input::Stdin(b) => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(&b).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Input::StdinEnd => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Input::Resize { width, height } => {
                    if let Some(f) = &resize {
                        f(width, height);
                    }
                }
                // The process runs on to its end, as it does on Kubernetes.
                Input::Hangup => {}
            }
        }
    });
    let code = exit.await;
    let _ = tokio::time::timeout(DRAIN, futures_util::future::join_all(pumps)).await;
    feeder.abort();
    let status = match code {
        Ok(c) => exit_status(c),
        Err(e) => failure(&e.to_string()),
    };
    debug!(container = %id, "exec finished");
    let _ = output.send(Output::Status(status)).await;
}

/// Attach to a container's own stdio: what it writes from now on, until it exits, and the
/// client's input to its stdin if it keeps one open.
pub(crate) async fn attach(
    shared: Arc<Shared>,
    id: String,
    log: std::path::PathBuf,
    want: Want,
    ch: Channels,
) {
    let Channels { mut input, output } = ch;
    let Attachment {
        input: mut to,
        output: mut from,
    } = match shared.runtime.attach(&id).await {
        Ok(a) => a,
        Err(e) => {
            // A container started by an agent without attach support: follow its log.
            debug!(container = %id, error = %e, "attaching through the log instead");
            drop(input);
            crate::logs::follow_raw(shared.clone(), id.clone(), log, output.clone()).await;
            let _ = output.send(Output::Status(exit_status(0))).await;
            return;
        }
    };
    // Ends when the client hangs up.
    let mut feeder = tokio::spawn(async move {
        if want.stdin && to.send(&Frame::OpenStdin).await.is_err() {
            return;
        }
        while let Some(i) = input.recv().await {
            let f = match i {
                Input::Stdin(b) => Frame::Stdin(b.to_vec()),
                Input::StdinEnd => Frame::CloseStdin,
                Input::Resize { width, height } => Frame::Resize { width, height },
                Input::Hangup => return,
            };
            if to.send(&f).await.is_err() {
                // The container has ended: the output side finds out too.
                std::future::pending::<()>().await;
            }
        }
    });
    loop {
        let f = tokio::select! {
            f = from.next() => f,
            // Dropping the connection tells the shim this client is gone.
            _ = &mut feeder => break,
        };
        let msg = match f {
            Ok(Some(Frame::Stdout(b))) => Output::Stdout(Bytes::from(b)),
            Ok(Some(Frame::Stderr(b))) => Output::Stderr(Bytes::from(b)),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        };
        if output.send(msg).await.is_err() {
            break;
        }
    }
    feeder.abort();
    debug!(container = %id, "attach finished");
    let _ = output.send(Output::Status(exit_status(0))).await;
}
