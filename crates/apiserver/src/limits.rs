//! Bounds on what clients can make the server hold: connections in total and per client
//! address (past either, a new connection is closed at once), and requests in flight, read-only
//! and mutating apart, as kube-apiserver's `--max-requests-inflight` and
//! `--max-mutating-requests-inflight` (past them, 429 with Retry-After). Long-running requests
//! (watches, streams into containers, proxies, followed logs) and `system:masters` are not
//! counted, as in Kubernetes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Uri};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::errors::ApiError;
use crate::request::{self, Params, Route};

#[derive(Clone, Copy, Debug)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_requests_inflight: usize,
    pub max_mutating_requests_inflight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_connections_per_client: 512,
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
        }
    }
}

pub struct Limits {
    config: LimitsConfig,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    readonly: Arc<Semaphore>,
    mutating: Arc<Semaphore>,
}

/// A connection counted against the limits until it is dropped.
pub struct ConnectionSlot {
    limits: Arc<Limits>,
    client: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        let mut map = self
            .limits
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// Requests that stay open as long as the client wants (watches, streams into containers,
/// proxies, followed logs): not counted as in flight. Read from the route, not the path's
/// text, so that an object named `proxy` or `exec` is counted like any other.
pub fn long_running(method: &Method, uri: &Uri, registry: &api::Registry) -> bool {
    let params = Params::parse(uri.query());
    let Ok(Route::Resource(t)) = request::route(uri.path(), registry) else {
        return false;
    };
    match t.subresource.as_deref() {
        Some("exec" | "attach" | "portforward" | "proxy") if t.name.is_some() => true,
        Some("log") if t.name.is_some() => params.flag("follow"),
        Some(_) => false,
        None => matches!(*method, Method::GET | Method::HEAD) && params.flag("watch"),
    }
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Arc<Limits> {
        Arc::new(Limits {
            config,
            total: AtomicUsize::new(0),
            per_client: Mutex::default(),
            readonly: Arc::new(Semaphore::new(config.max_requests_inflight.max(1))),
            mutating: Arc::new(Semaphore::new(config.max_mutating_requests_inflight.max(1))),
        })
    }

    /// Count a new connection from `client`, or `None` if that would pass a limit.
    pub fn connect(self: &Arc<Self>, client: IpAddr) -> Option<ConnectionSlot> {
        let mut map = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let mine = map.get(&client).copied().unwrap_or(0);
        if mine >= self.config.max_connections_per_client
            || self.total.load(Ordering::Relaxed) >= self.config.max_connections
        {
            return None;
        }
        map.insert(client, mine + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionSlot {
            limits: self.clone(),
            client,
        })
    }

    /// A place for one request in flight, or 429. `None` when the request is not counted.
    pub fn admit(
        &self,
        method: &Method,
        uri: &Uri,
        privileged: bool,
        registry: &api::Registry,
    ) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        if privileged || long_running(method, uri, registry) {
            return Ok(None);
        }
        let pool = match *method {
            Method::GET | Method::HEAD | Method::OPTIONS => &self.readonly,
            _ => &self.mutating,
        };
        match pool.clone().try_acquire_owned() {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(ApiError::too_many_requests()),
        }
    }

    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_per_client_and_in_total() {
        let limits = Limits::new(LimitsConfig {
            max_connections: 3,
            max_connections_per_client: 2,
            ..LimitsConfig::default()
        });
        let a: IpAddr = "10.0.0.1".parse().expect("an address");
        let b: IpAddr = "10.0.0.2".parse().expect("an address");
        let a1 = limits.connect(a).expect("first");
        let _a2 = limits.connect(a).expect("second");
        assert!(limits.connect(a).is_none(), "a third from one client");
        let _b1 = limits.connect(b).expect("another client");
        assert!(limits.connect(b).is_none(), "past the total");
        drop(a1);
        assert!(limits.connect(b).is_some(), "a slot freed");
    }

    #[test]
    fn requests_in_flight_are_bounded_except_long_running_and_masters() {
        let limits = Limits::new(LimitsConfig {
            max_requests_inflight: 1,
            max_mutating_requests_inflight: 1,
            ..LimitsConfig::default()
        });
        let list: Uri = "/api/v1/pods".parse().expect("a uri");
        let held = limits
            .admit(&Method::GET, &list, false, &api::Registry::default())
            .expect("first");
        assert!(held.is_some());
        let e = limits
            .admit(&Method::GET, &list, false, &api::Registry::default())
            .unwrap_err();
        assert_eq!((e.code, e.reason), (429, "TooManyRequests"));
        // Writes have their own pool; watches and masters are not counted.
        assert!(
            limits
                .admit(&Method::POST, &list, false, &api::Registry::default())
                .is_ok()
        );
        let watch: Uri = "/api/v1/pods?watch=1".parse().expect("a uri");
        assert!(
            limits
                .admit(&Method::GET, &watch, false, &api::Registry::default())
                .expect("watch")
                .is_none()
        );
        assert!(
            limits
                .admit(&Method::GET, &list, true, &api::Registry::default())
                .expect("masters")
                .is_none()
        );
        let follow: Uri = "/api/v1/namespaces/a/pods/p/log?follow=true"
            .parse()
            .expect("a uri");
        assert!(long_running(
            &Method::GET,
            &follow,
            &api::Registry::default()
        ));
        let exec: Uri = "/api/v1/namespaces/a/pods/p/exec?command=ls"
            .parse()
            .expect("a uri");
        assert!(long_running(
            &Method::POST,
            &exec,
            &api::Registry::default()
        ));
        // Objects named like streams are counted like any other.
        for path in [
            "/api/v1/namespaces/proxy-x/configmaps",
            "/api/v1/namespaces/a/configmaps/exec",
            "/api/v1/namespaces/a/pods/watch",
        ] {
            let uri: Uri = path.parse().expect("a uri");
            assert!(
                !long_running(&Method::POST, &uri, &api::Registry::default()),
                "{path}"
            );
        }
        drop(held);
        assert!(
            limits
                .admit(&Method::GET, &list, false, &api::Registry::default())
                .is_ok()
        );
    }
}
