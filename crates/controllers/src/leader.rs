//! Leader election on a coordination.k8s.io Lease, with Kubernetes' semantics (client-go's
//! `leaderelection`): a candidate takes the Lease when it is free or its holder has not renewed
//! it for `lease_duration` (as timed on this candidate's clock, from when it saw the record
//! change, so clocks need not agree); the leader renews it every `retry_period` and steps down
//! when it could not renew for `renew_deadline`. Taking it from another holder counts a
//! transition. Writes carry the Lease's resourceVersion, so two candidates never both win.
//!
//! Components that must run once per cluster (controllers, the scheduler) run while their
//! [`Leadership`] says so. A single server is always the leader: it wins its own Lease at once,
//! and a restart under the same identity takes it back at once.

use std::sync::Mutex;
use std::time::Duration;

use api::k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use client::{Client, ClientError};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// Who this candidate is (stable across restarts of one server).
    pub identity: String,
    /// How long a holder's Lease stands without renewal (Kubernetes: 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down (Kubernetes: 10 s).
    pub renew_deadline: Duration,
    /// How often candidates try, and the leader renews (Kubernetes: 2 s).
    pub retry_period: Duration,
}

impl Config {
    /// Kubernetes' defaults, for the Lease `kube-system/{name}`.
    pub fn new(name: &str, identity: &str) -> Config {
        Config {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether a component may run now.
#[derive(Clone, Debug)]
pub enum Leadership {
    /// No election: always.
    Always,
    /// While this elector's candidate leads.
    Elected(watch::Receiver<bool>),
}

impl Leadership {
    /// Wait until this candidate leads.
    pub async fn acquired(&mut self) {
        if let Leadership::Elected(rx) = self
            && rx.wait_for(|l| *l).await.is_err()
        {
            // The elector is gone: nobody leads here any more.
            std::future::pending::<()>().await;
        }
    }

    /// Wait until this candidate stops leading (never, for `Always`).
    pub async fn lost(&mut self) {
        match self {
            Leadership::Always => std::future::pending().await,
            Leadership::Elected(rx) => {
                let _ = rx.wait_for(|l| !*l).await;
            }
        }
    }

    pub fn is_leading(&self) -> bool {
        match self {
            Leadership::Always => true,
            Leadership::Elected(rx) => *rx.borrow(),
        }
    }
}

/// Run `make()`'s future while `leadership` holds, again each time it is regained; a run cut
/// short by lost leadership is dropped (its work is picked up by the next leader).
pub async fn while_leading<F, Fut>(name: &'static str, leadership: Leadership, make: F)
where
    F: Fn() -> Fut + Send + Sync,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // One copy of the loop for every component: only this boxing is per caller.
    lead(name, leadership, &move || Box::pin(make())).await
}

type Run = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn lead(
    name: &'static str,
    mut leadership: Leadership,
    make: &(dyn Fn() -> Run + Send + Sync),
) {
    loop {
        leadership.acquired().await;
        tokio::select! {
            () = make() => return,
            () = leadership.lost() => info!(component = name, "lost leadership; stopping"),
        }
    }
}

/// One candidate for one Lease.
pub struct Elector {
    client: Client,
    cfg: Config,
    leading: watch::Sender<bool>,
    observed: Mutex<Option<Observed>>,
}

/// The holder and renew time last seen, and when this candidate saw them change.
struct Observed {
    holder: Option<String>,
    renew: Option<String>,
    at: Instant,
}

/// What one attempt found.
#[derive(Debug, PartialEq)]
enum Attempt {
    Held,
    /// Someone else holds it, validly.
    Taken,
}

impl Elector {
    pub fn new(client: Client, cfg: Config) -> Elector {
        Elector {
            client,
            cfg,
            leading: watch::Sender::new(false),
            observed: Mutex::default(),
        }
    }

    pub fn leadership(&self) -> Leadership {
        Leadership::Elected(self.leading.subscribe())
    }

    /// Campaign, lead, step down when renewal fails, campaign again: forever.
    pub async fn run(&self) {
        // A restarted elector leads only once it holds the Lease again.
        self.leading.send_replace(false);
        loop {
            // Campaign.
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(Attempt::Held) => break,
                    Ok(Attempt::Taken) => {}
                    Err(e) => {
                        debug!(lease = %self.cfg.name, error = %e, "could not take the lease")
                    }
                }
                tokio::time::sleep(jittered(self.cfg.retry_period)).await;
            }
            info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became the leader");
            self.leading.send_replace(true);
            // Lead.
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(self.cfg.retry_period).await;
                match self.try_acquire_or_renew().await {
                    Ok(Attempt::Held) => renewed = Instant::now(),
                    Ok(Attempt::Taken) => {
                        warn!(lease = %self.cfg.name, "another candidate holds the lease");
                        break;
                    }
                    Err(e) => {
                        debug!(lease = %self.cfg.name, error = %e, "could not renew the lease")
                    }
                }
                if renewed.elapsed() >= self.cfg.renew_deadline {
                    warn!(lease = %self.cfg.name, "could not renew the lease in time; stepping down");
                    break;
                }
            }
            self.leading.send_replace(false);
        }
    }

    /// Give the Lease up (on a clean shutdown, once [`Elector::run`] has stopped), so that
    /// another candidate need not wait for it to expire.
    pub async fn release(&self) -> Result<(), ClientError> {
        if !*self.leading.borrow() {
            return Ok(());
        }
        self.leading.send_replace(false);
        let Some(mut lease) = self
            .client
            .get::<Lease>(Some(&self.cfg.namespace), &self.cfg.name)
            .await?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.cfg.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        self.client
            .replace(Some(&self.cfg.namespace), &self.cfg.name, &lease)
            .await?;
        Ok(())
    }

    async fn try_acquire_or_renew(&self) -> Result<Attempt, ClientError> {
        let now = MicroTime(jiff::Timestamp::now());
        let existing = self
            .client
            .get::<Lease>(Some(&self.cfg.namespace), &self.cfg.name)
            .await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(self.cfg.lease_duration.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.client.create(Some(&self.cfg.namespace), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                // Someone else created it first.
                Err(e) if e.is_conflict() => Ok(Attempt::Taken),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.cfg.identity.as_str());
        if !ours && holder.is_some() {
            let duration = spec
                .lease_duration_seconds
                .map_or(self.cfg.lease_duration, |s| {
                    Duration::from_secs(s.max(0) as u64)
                });
            if !self.expired(holder.clone(), spec, duration) {
                return Ok(Attempt::Taken);
            }
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(holder.is_some()));
        }
        spec.holder_identity = Some(self.cfg.identity.clone());
        spec.lease_duration_seconds = Some(self.cfg.lease_duration.as_secs() as i32);
        spec.renew_time = Some(now);
        match self
            .client
            .replace(Some(&self.cfg.namespace), &self.cfg.name, &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            // Someone else wrote it meanwhile: they may hold it now.
            Err(e) if e.is_conflict() => Ok(Attempt::Taken),
            Err(e) => Err(e),
        }
    }

    /// Has the holder let the Lease lapse, timed from when this candidate saw it renewed?
    fn expired(&self, holder: Option<String>, spec: &LeaseSpec, duration: Duration) -> bool {
        let renew = spec.renew_time.as_ref().map(|t| t.0.to_string());
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match &*observed {
            Some(o) if o.holder == holder && o.renew == renew => {}
            _ => {
                *observed = Some(Observed {
                    holder,
                    renew,
                    at: Instant::now(),
                })
            }
        }
        observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= duration)
    }
}

/// Between one and 2.2 times `d` (client-go's jitter factor of 1.2), so that candidates do
/// not try in step.
fn jittered(d: Duration) -> Duration {
    d + d.mul_f64(fastrand::f64() * 1.2)
}
