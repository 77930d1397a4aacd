//! A pod's status from what its containers are doing: phase, conditions and container
//! statuses, by Kubernetes' rules. Pure.

use api::k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// One container's state, as the agent tracks it.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        signal: i32,
        reason: String,
        message: String,
        started_at: String,
        finished_at: String,
    },
}

impl State {
    pub fn waiting(reason: &str, message: impl Into<String>) -> State {
        State::Waiting {
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, State::Running { .. })
    }

    pub fn succeeded(&self) -> bool {
        matches!(self, State::Terminated { exit_code: 0, .. })
    }
}

/// What the agent knows about one container of the pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub init: bool,
    /// An init container with `restartPolicy: Always` (a sidecar): it keeps running.
    pub sidecar: bool,
    pub image: String,
    pub image_id: String,
    /// The runtime's ID of the current (or last) attempt.
    pub container_id: String,
    pub state: State,
    pub last_state: Option<State>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
    /// An ephemeral container (`kubectl debug`): run once, never restarted, and no part of
    /// the pod's phase or readiness.
    pub ephemeral: bool,
}

impl Slot {
    pub fn new(name: &str, image: &str, init: bool, sidecar: bool) -> Slot {
        Slot {
            name: name.to_string(),
            init,
            sidecar,
            ephemeral: false,
            image: image.to_string(),
            image_id: String::new(),
            container_id: String::new(),
            state: State::waiting("ContainerCreating", ""),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    pub fn ephemeral(name: &str, image: &str) -> Slot {
        Slot {
            ephemeral: true,
            ..Slot::new(name, image, false, false)
        }
    }

    /// One of the pod's (regular) containers.
    pub fn is_main(&self) -> bool {
        !self.init && !self.ephemeral
    }

    /// An init container that has done its job.
    pub fn init_done(&self) -> bool {
        if self.sidecar {
            self.started && self.state.is_running()
        } else {
            self.state.succeeded()
        }
    }
}

fn time(s: &str) -> Option<Time> {
    s.parse().ok().map(Time)
}

fn k8s_state(s: &State) -> K8sState {
    match s {
        State::Waiting { reason, message } => K8sState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
            }),
            ..Default::default()
        },
        State::Running { started_at } => K8sState {
            running: Some(ContainerStateRunning {
                started_at: time(started_at),
            }),
            ..Default::default()
        },
        State::Terminated {
            exit_code,
            signal,
            reason,
            message,
            started_at,
            finished_at,
        } => K8sState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                signal: Some(*signal).filter(|s| *s != 0),
                reason: Some(reason.clone()),
                message: Some(message.clone()).filter(|m| !m.is_empty()),
                started_at: time(started_at),
                finished_at: time(finished_at),
                container_id: None,
            }),
            ..Default::default()
        },
    }
}

fn container_status(s: &Slot) -> ContainerStatus {
    ContainerStatus {
        name: s.name.clone(),
        image: s.image.clone(),
        image_id: s.image_id.clone(),
        container_id: Some(format!("berth://{}", s.container_id))
            .filter(|_| !s.container_id.is_empty()),
        ready: s.ready,
        started: Some(s.started),
        restart_count: s.restart_count,
        state: Some(k8s_state(&s.state)),
        last_state: Some(s.last_state.as_ref().map(k8s_state).unwrap_or_default()),
        ..Default::default()
    }
}

/// The pod's phase by Kubernetes' rules.
pub fn phase(pod: &Pod, slots: &[Slot]) -> &'static str {
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let inits: Vec<&Slot> = slots.iter().filter(|s| s.init).collect();
    for i in &inits {
        if i.init_done() {
            continue;
        }
        let failed = matches!(i.state, State::Terminated { exit_code, .. } if exit_code != 0);
        if failed && policy == "Never" {
            return "Failed";
        }
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in slots.iter().filter(|s| s.is_main()) {
        match &s.state {
            State::Running { .. } => running += 1,
            State::Terminated { exit_code, .. } => {
                stopped += 1;
                if *exit_code == 0 {
                    succeeded += 1;
                }
            }
            // A container waiting to restart has run before: it counts as stopped.
            State::Waiting { .. } if s.last_state.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

fn condition(
    previous: Option<&PodStatus>,
    ty: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let before = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == ty));
    let since = match before {
        Some(b) if b.status == status => b.last_transition_time.clone(),
        _ => Some(Time(jiff::Timestamp::now())),
    };
    PodCondition {
        type_: ty.to_string(),
        status: status.to_string(),
        reason: if ok { None } else { reason.map(str::to_string) },
        message: if ok { None } else { message },
        last_transition_time: since,
        last_probe_time: None,
        observed_generation: None,
    }
}

/// Everything the agent reports about the pod.
pub struct Report<'a> {
    pub pod: &'a Pod,
    pub slots: &'a [Slot],
    pub sandbox_ready: bool,
    pub host_ip: &'a str,
    /// The pod's addresses, the primary family's first.
    pub pod_ips: &'a [String],
    pub start_time: &'a str,
}

pub fn pod_status(r: &Report<'_>) -> PodStatus {
    let previous = r.pod.status.as_ref();
    let inits_done = r.slots.iter().filter(|s| s.init).all(Slot::init_done);
    let pending_inits: Vec<&str> = r
        .slots
        .iter()
        .filter(|s| s.init && !s.init_done())
        .map(|s| s.name.as_str())
        .collect();
    let unready: Vec<&str> = r
        .slots
        .iter()
        .filter(|s| s.is_main() && !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let all_ready = unready.is_empty() && inits_done;
    let phase = phase(r.pod, r.slots);
    let terminal = phase == "Succeeded" || phase == "Failed";
    // Ready and ContainersReady fail for the same reason.
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let not_ready_message = format!("containers with unready status: [{}]", unready.join(" "));
    let mut conditions = vec![
        condition(
            previous,
            "PodReadyToStartContainers",
            r.sandbox_ready && !terminal,
            None,
            None,
        ),
        condition(
            previous,
            "Initialized",
            inits_done,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                pending_inits.join(" ")
            )),
        ),
        condition(
            previous,
            "Ready",
            all_ready,
            Some(not_ready_reason),
            Some(not_ready_message.clone()),
        ),
        condition(
            previous,
            "ContainersReady",
            all_ready,
            Some(not_ready_reason),
            Some(not_ready_message),
        ),
    ];
    if let Some(scheduled) = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
    {
        conditions.push(scheduled.clone());
    }
    let ip = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: ip(r.host_ip),
        host_ips: ip(r.host_ip).map(|i| vec![HostIP { ip: i }]),
        pod_ip: r.pod_ips.first().cloned(),
        pod_ips: (!r.pod_ips.is_empty())
            .then(|| r.pod_ips.iter().map(|i| PodIP { ip: i.clone() }).collect()),
        start_time: time(r.start_time),
        qos_class: previous.and_then(|p| p.qos_class.clone()),
        init_container_statuses: Some(
            r.slots
                .iter()
                .filter(|s| s.init)
                .map(container_status)
                .collect(),
        )
        .filter(|v: &Vec<_>| !v.is_empty()),
        container_statuses: Some(
            r.slots
                .iter()
                .filter(|s| s.is_main())
                .map(container_status)
                .collect(),
        ),
        ephemeral_container_statuses: Some(
            r.slots
                .iter()
                .filter(|s| s.ephemeral)
                .map(container_status)
                .collect(),
        )
        .filter(|v: &Vec<_>| !v.is_empty()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": policy, "containers": [{"name": "a"}]}})).unwrap()
    }

    fn terminated(code: i32) -> State {
        State::Terminated {
            exit_code: code,
            signal: 0,
            reason: if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            message: String::new(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
        }
    }

    #[test]
    fn phases() {
        let mut a = Slot::new("a", "img", false, false);
        assert_eq!(phase(&pod("Always"), std::slice::from_ref(&a)), "Pending");
        a.state = State::Running {
            started_at: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(phase(&pod("Always"), std::slice::from_ref(&a)), "Running");
        a.state = terminated(0);
        assert_eq!(phase(&pod("Never"), std::slice::from_ref(&a)), "Succeeded");
        assert_eq!(
            phase(&pod("OnFailure"), std::slice::from_ref(&a)),
            "Succeeded"
        );
        assert_eq!(phase(&pod("Always"), std::slice::from_ref(&a)), "Running");
        a.state = terminated(1);
        assert_eq!(phase(&pod("Never"), std::slice::from_ref(&a)), "Failed");
        assert_eq!(
            phase(&pod("OnFailure"), std::slice::from_ref(&a)),
            "Running"
        );
        // Crash-looping: waiting with a last state counts as stopped, so the pod is Running.
        a.last_state = Some(terminated(1));
        a.state = State::waiting("CrashLoopBackOff", "back-off");
        assert_eq!(phase(&pod("Always"), std::slice::from_ref(&a)), "Running");
        let mut init = Slot::new("i", "img", true, false);
        init.state = terminated(1);
        assert_eq!(phase(&pod("Never"), &[init.clone(), a.clone()]), "Failed");
        assert_eq!(phase(&pod("Always"), &[init, a]), "Pending");
    }

    #[test]
    fn status_document() {
        let p = pod("Always");
        let mut a = Slot::new("a", "busybox", false, false);
        a.state = State::Running {
            started_at: "2026-01-01T00:00:00Z".into(),
        };
        a.ready = true;
        a.started = true;
        a.container_id = "u_a_0".into();
        let s = pod_status(&Report {
            pod: &p,
            slots: &[a],
            sandbox_ready: true,
            host_ip: "10.0.0.1",
            pod_ips: &[],
            start_time: "2026-01-01T00:00:00Z",
        });
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let ready = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.container_id.as_deref(), Some("berth://u_a_0"));
        assert!(cs.state.as_ref().unwrap().running.is_some());
        assert!(s.pod_ip.is_none());
        assert_eq!(s.host_ip.as_deref(), Some("10.0.0.1"));
    }
}
