//! Long-running components (controllers, the scheduler loop, mirrors, agent loops, servers) run
//! under a supervisor: one that panics is logged with its cause and started again after a
//! back-off (1 s doubling to 30 s, back to 1 s after a minute of running), never silently gone.
//! One that returns has finished (a server told to shut down): that is the end of it.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error};

const FIRST: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(30);
/// Running this long without failing counts as healthy: the back-off starts over.
const HEALTHY: Duration = Duration::from_secs(60);

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A task that is cancelled when this handle is dropped.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run `make()` as the component `name`: whenever it panics, say so and run a fresh one,
/// until a run returns. Aborting the returned task stops the component too.
pub fn supervise<F, Fut>(name: &'static str, make: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // One copy of the loop for every component: only this boxing is per caller.
    supervise_boxed(name, Box::new(move || Box::pin(make())))
}

type Run = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn supervise_boxed(name: &'static str, make: Box<dyn Fn() -> Run + Send>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut delay = FIRST;
        loop {
            let started = Instant::now();
            let mut run = AbortOnDrop(tokio::spawn(make()));
            match (&mut run.0).await {
                Ok(()) => {
                    debug!(component = name, "finished");
                    return;
                }
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    error!(component = name, panic = %panic_message(&*payload), "panicked; starting it again");
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            }
            if started.elapsed() >= HEALTHY {
                delay = FIRST;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_component_is_started_again_with_back_off() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let t0 = Instant::now();
        let handle = supervise("test", move || {
            let r = r.clone();
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    panic!("run {n} failed");
                }
                std::future::pending::<()>().await;
            }
        });
        while runs.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Restarted after 1, 2 and 4 seconds.
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
            "{waited:?}"
        );
        handle.abort();
    }

    #[test]
    fn panic_messages_are_read_from_either_payload() {
        assert_eq!(panic_message(&"plain"), "plain");
        assert_eq!(panic_message(&String::from("formatted")), "formatted");
        assert_eq!(panic_message(&42), "(no message)");
    }
}
