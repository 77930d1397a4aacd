//! What every `ContainerRuntime` must do, as checks any implementation can be run through:
//! `FakeRuntime` in this crate's unit tests, `OciRuntime` (with each engine) in the root tests
//! of the `berth` crate. A check panics with a message when the runtime misbehaves.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::attach::{AttachOutput, Attachment, Frame};
use super::exec::ExecSpec;
use super::oci::RuntimeError;
use super::sandbox::Isolation;
use super::shim::ShimStatus;
use super::spec::ContainerSpec;
use super::traits::ContainerRuntime;

/// What a suite needs from the implementation under test.
pub trait Harness: Sync {
    fn runtime(&self) -> &dyn ContainerRuntime;
    /// A container (ID `id`) whose process runs until it is killed.
    fn forever(&self, id: &str) -> ContainerSpec;
    /// A container whose process exits with `code` at once.
    fn exits(&self, id: &str, code: i32) -> ContainerSpec;
    /// In the container `id`, an exec of `argv` prints `stdout` and exits with `code`; the
    /// harness may have to arrange that (a fake), or it simply holds (a real runtime).
    fn exec_result(&self, id: &str, argv: &[String], stdout: &[u8], code: i32);
    /// A container that copies its stdin to its stdout until the end of its input, then exits
    /// with 0 (`cat`, with `stdin` and `stdinOnce`).
    fn echo(&self, id: &str) -> ContainerSpec;
    fn layers(&self) -> Vec<PathBuf>;
    fn log(&self, id: &str) -> PathBuf;
}

const WAIT: Duration = Duration::from_secs(30);

async fn wait(h: &dyn Harness, id: &str) -> ShimStatus {
    tokio::time::timeout(WAIT, h.runtime().wait(id))
        .await
        .unwrap_or_else(|_| panic!("{id} did not end in time"))
        .unwrap_or_else(|e| panic!("waiting for {id}: {e}"))
}

fn ended(s: &ShimStatus) -> (i32, i32) {
    match s {
        ShimStatus::Exited {
            exit_code, signal, ..
        } => (*exit_code, *signal),
        other => panic!("expected an exited container, got {other:?}"),
    }
}

/// Start, observe running, kill, observe the signal, remove.
pub async fn lifecycle(h: &dyn Harness) {
    let rt = h.runtime();
    let s = h.forever("conf-life");
    let started = rt
        .start(&s, &h.layers(), &h.log(&s.id))
        .await
        .expect("start");
    assert!(started.pid > 0, "a started container has a pid");
    assert!(
        matches!(rt.status(&s.id), Some(ShimStatus::Running { .. })),
        "running after start"
    );
    assert!(rt.list().contains(&s.id), "listed while running");
    rt.kill(&s.id, 9).await.expect("kill");
    assert_eq!(ended(&wait(h, &s.id).await), (137, 9));
    // Waiting again returns at once with the same end.
    assert_eq!(ended(&wait(h, &s.id).await), (137, 9));
    rt.remove(&s.id).await.expect("remove");
    assert!(!rt.list().contains(&s.id), "gone after remove");
    assert!(rt.status(&s.id).is_none());
    assert!(matches!(
        rt.wait(&s.id).await,
        Err(RuntimeError::NotFound(_))
    ));
}

/// Exit codes come back as they were.
pub async fn exit_codes(h: &dyn Harness) {
    let rt = h.runtime();
    for (id, code) in [("conf-zero", 0), ("conf-three", 3)] {
        let s = h.exits(id, code);
        rt.start(&s, &h.layers(), &h.log(id)).await.expect("start");
        assert_eq!(ended(&wait(h, id).await), (code, 0), "{id}");
        rt.remove(id).await.expect("remove");
    }
}

/// One ID, one container.
pub async fn duplicate_ids(h: &dyn Harness) {
    let rt = h.runtime();
    let s = h.forever("conf-dup");
    rt.start(&s, &h.layers(), &h.log(&s.id))
        .await
        .expect("start");
    let again = rt.start(&s, &h.layers(), &h.log(&s.id)).await;
    assert!(matches!(again, Err(RuntimeError::Exists(_))), "{again:?}");
    rt.kill(&s.id, 9).await.expect("kill");
    wait(h, &s.id).await;
    rt.remove(&s.id).await.expect("remove");
}

/// Execs run in running containers only, and report their exit codes.
pub async fn exec(h: &dyn Harness) {
    let rt = h.runtime();
    let s = h.forever("conf-exec");
    rt.start(&s, &h.layers(), &h.log(&s.id))
        .await
        .expect("start");
    let argv: Vec<String> = ["sh", "-c", "echo exec-output; exit 4"]
        .map(String::from)
        .to_vec();
    h.exec_result(&s.id, &argv, b"exec-output\n", 4);
    let spec = ExecSpec {
        argv,
        tty: false,
        stdin: false,
    };
    let p = rt.exec(&s.id, &spec).await.expect("exec");
    let mut out = Vec::new();
    if let Some(mut r) = p.stdout {
        r.read_to_end(&mut out).await.expect("exec output");
    }
    assert_eq!(out, b"exec-output\n");
    assert_eq!(p.exit.await.expect("exec exit"), 4);
    let empty = rt
        .exec(
            &s.id,
            &ExecSpec {
                argv: vec![],
                tty: false,
                stdin: false,
            },
        )
        .await;
    assert!(empty.is_err(), "an exec needs a command");
    rt.kill(&s.id, 9).await.expect("kill");
    wait(h, &s.id).await;
    let late = rt.exec(&s.id, &spec).await;
    assert!(late.is_err(), "no exec into an ended container");
    rt.remove(&s.id).await.expect("remove");
    assert!(rt.exec(&s.id, &spec).await.is_err());
}

/// The next output frame's bytes, within the suite's patience.
async fn next_output(a: &mut AttachOutput) -> Option<Frame> {
    tokio::time::timeout(WAIT, a.next())
        .await
        .expect("attach output in time")
        .expect("reading attach output")
}

/// Attaching to a container with stdin open: input reaches it, its output comes back, and
/// with `stdinOnce` the end of the first session's input is the end of its stdin. A
/// container that has ended cannot be attached to.
pub async fn attach(h: &dyn Harness) {
    let rt = h.runtime();
    let s = h.echo("conf-attach");
    rt.start(&s, &h.layers(), &h.log(&s.id))
        .await
        .expect("start");
    let Attachment {
        mut input,
        mut output,
    } = rt.attach(&s.id).await.expect("attach");
    // A second client sees the same output.
    let mut watcher = rt.attach(&s.id).await.expect("second attach").output;
    input.send(&Frame::OpenStdin).await.expect("open stdin");
    input
        .send(&Frame::Stdin(b"ping\n".to_vec()))
        .await
        .expect("stdin");
    let mut echoed = Vec::new();
    while echoed.len() < 5 {
        match next_output(&mut output).await {
            Some(Frame::Stdout(b)) => echoed.extend(b),
            other => panic!("expected the echo on stdout, got {other:?}"),
        }
    }
    assert_eq!(echoed, b"ping\n");
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match next_output(&mut watcher).await {
            Some(Frame::Stdout(b)) => seen.extend(b),
            other => panic!("the second client expected the echo, got {other:?}"),
        }
    }
    assert_eq!(seen, b"ping\n");
    input.send(&Frame::CloseStdin).await.expect("close stdin");
    assert_eq!(
        ended(&wait(h, &s.id).await),
        (0, 0),
        "EOF on stdin ended it"
    );
    // Both clients are hung up on once the container has ended.
    while let Some(f) = next_output(&mut output).await {
        assert!(matches!(f, Frame::Stdout(_)), "{f:?}");
    }
    while next_output(&mut watcher).await.is_some() {}
    assert!(
        rt.attach(&s.id).await.is_err(),
        "no attaching to an ended container"
    );
    rt.remove(&s.id).await.expect("remove");
    assert!(rt.attach(&s.id).await.is_err());
}

/// Sandboxes are created once, found, and removed.
pub async fn sandboxes(h: &dyn Harness) {
    let rt = h.runtime();
    let iso = Isolation {
        net: true,
        ipc: true,
        uts: true,
    };
    let first = rt
        .create_sandbox("conf-pod", "conf-pod", iso)
        .await
        .expect("sandbox");
    let second = rt
        .create_sandbox("conf-pod", "conf-pod", iso)
        .await
        .expect("sandbox again");
    assert_eq!(first, second, "creating twice finds the first");
    assert!(rt.sandboxes().contains(&"conf-pod".to_string()));
    assert!(rt.sandbox("conf-pod").is_some());
    rt.remove_sandbox("conf-pod").await.expect("remove");
    assert!(!rt.sandboxes().contains(&"conf-pod".to_string()));
    assert!(rt.sandbox("conf-pod").is_none());
    rt.remove_sandbox("conf-pod")
        .await
        .expect("removing twice is fine");
}

/// Every check, in order.
pub async fn all(h: &dyn Harness) {
    lifecycle(h).await;
    exit_codes(h).await;
    duplicate_ids(h).await;
    exec(h).await;
    attach(h).await;
    sandboxes(h).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::{FakeBehavior, FakeExec, FakeRuntime};

    struct Fake(FakeRuntime);

    impl Harness for Fake {
        fn runtime(&self) -> &dyn ContainerRuntime {
            &self.0
        }
        fn forever(&self, id: &str) -> ContainerSpec {
            ContainerSpec {
                id: id.into(),
                ..Default::default()
            }
        }
        fn exits(&self, id: &str, code: i32) -> ContainerSpec {
            self.0.behave(id, FakeBehavior::Exit(code));
            ContainerSpec {
                id: id.into(),
                ..Default::default()
            }
        }
        fn exec_result(&self, id: &str, _: &[String], stdout: &[u8], code: i32) {
            self.0.on_exec(
                id,
                FakeExec {
                    exit_code: code,
                    stdout: stdout.to_vec(),
                },
            );
        }
        fn echo(&self, id: &str) -> ContainerSpec {
            ContainerSpec {
                id: id.into(),
                stdin: true,
                stdin_once: true,
                ..Default::default()
            }
        }
        fn layers(&self) -> Vec<PathBuf> {
            Vec::new()
        }
        fn log(&self, _: &str) -> PathBuf {
            PathBuf::from("/dev/null")
        }
    }

    #[tokio::test]
    async fn the_fake_conforms() {
        all(&Fake(FakeRuntime::new())).await;
    }
}
