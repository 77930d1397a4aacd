//! Probes (startup, liveness, readiness) and lifecycle hooks (postStart, preStop): an exec in
//! the container, an HTTP GET or a TCP connect to the pod, judged as the kubelet judges them.
//! A probe task reports only when its verdict flips (after successThreshold successes or
//! failureThreshold failures in a row).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use api::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use runtime::containers::{ContainerRuntime, ExecSpec};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// Probe output kept for messages, like the kubelet's limit.
const MAX_OUTPUT: usize = 10 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// What a probe or hook does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        https: bool,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Sleep(Duration),
    /// Something berth cannot run (gRPC probes); ignored with a warning.
    Unsupported(&'static str),
}

fn port_of(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("port name {s:?} is not one of the container's ports"))
        }
    }
}

fn exec_action(e: &ExecAction) -> Action {
    Action::Exec(e.command.clone().unwrap_or_default())
}

fn http_action(c: &Container, h: &HTTPGetAction) -> Result<Action, String> {
    let mut path = h.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    Ok(Action::Http {
        https: h.scheme.as_deref() == Some("HTTPS"),
        host: h.host.clone().filter(|h| !h.is_empty()),
        port: port_of(c, &h.port)?,
        path,
        headers: h
            .http_headers
            .iter()
            .flatten()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect(),
    })
}

fn tcp_action(c: &Container, t: &TCPSocketAction) -> Result<Action, String> {
    Ok(Action::Tcp {
        host: t.host.clone().filter(|h| !h.is_empty()),
        port: port_of(c, &t.port)?,
    })
}

/// The action of a probe.
pub fn probe_action(c: &Container, p: &Probe) -> Result<Action, String> {
    if let Some(e) = &p.exec {
        Ok(exec_action(e))
    } else if let Some(h) = &p.http_get {
        http_action(c, h)
    } else if let Some(t) = &p.tcp_socket {
        tcp_action(c, t)
    } else if p.grpc.is_some() {
        Ok(Action::Unsupported(
            "gRPC probes are not supported by berth; the probe is ignored",
        ))
    } else {
        Err("the probe has no handler".into())
    }
}

/// The action of a lifecycle hook.
pub fn hook_action(c: &Container, h: &LifecycleHandler) -> Result<Action, String> {
    if let Some(e) = &h.exec {
        Ok(exec_action(e))
    } else if let Some(g) = &h.http_get {
        http_action(c, g)
    } else if let Some(t) = &h.tcp_socket {
        tcp_action(c, t)
    } else if let Some(s) = &h.sleep {
        Ok(Action::Sleep(Duration::from_secs(s.seconds.max(0) as u64)))
    } else {
        Err("the hook has no handler".into())
    }
}

/// Where actions run: the container (exec) and the pod's network namespace.
#[derive(Clone)]
pub struct Target {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub container: String,
    /// `None` for pods on the host's network.
    pub netns: Option<PathBuf>,
}

/// Run an action once; `Err` carries the failure message.
pub async fn run(a: &Action, t: &Target, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, run_inner(a, t)).await {
        Ok(r) => r,
        Err(_) => Err(match a {
            Action::Exec(argv) => format!("command {:?} timed out", argv.join(" ")),
            Action::Http { port, path, .. } => {
                format!("Get \"http://localhost:{port}{path}\": context deadline exceeded")
            }
            Action::Tcp { port, .. } => format!("dial tcp :{port}: i/o timeout"),
            _ => "timed out".to_string(),
        }),
    }
}

async fn connect(
    t: &Target,
    host: &Option<String>,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    match host {
        // An explicit host is reached from the node, as the kubelet does.
        Some(h) => {
            let ip: IpAddr = match h.parse() {
                Ok(ip) => ip,
                Err(_) => tokio::net::lookup_host((h.as_str(), port))
                    .await?
                    .next()
                    .map(|a| a.ip())
                    .ok_or_else(|| std::io::Error::other(format!("cannot resolve {h}")))?,
            };
            tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await
        }
        None => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            runtime::containers::sandbox::connect(
                t.netns.as_deref(),
                addr,
                Duration::from_secs(3600),
            )
            .await
        }
    }
}

async fn run_inner(a: &Action, t: &Target) -> Result<(), String> {
    match a {
        Action::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Action::Unsupported(_) => Ok(()),
        Action::Tcp { host, port } => connect(t, host, *port)
            .await
            .map(drop)
            .map_err(|e| format!("dial tcp :{port}: {e}")),
        Action::Exec(argv) => {
            let spec = ExecSpec {
                argv: argv.clone(),
                tty: false,
                stdin: false,
            };
            let p = t
                .runtime
                .exec(&t.container, &spec)
                .await
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for r in [p.stdout, p.stderr].into_iter().flatten() {
                let mut buf = Vec::new();
                let _ = r.take(MAX_OUTPUT as u64).read_to_end(&mut buf).await;
                out.extend_from_slice(&buf);
            }
            match p.exit.await {
                Ok(0) => Ok(()),
                Ok(code) => {
                    let text = String::from_utf8_lossy(&out[..out.len().min(MAX_OUTPUT)])
                        .trim_end()
                        .to_string();
                    if text.is_empty() {
                        Err(format!("command {:?} exited with {code}", argv.join(" ")))
                    } else {
                        Err(text)
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Action::Http {
            https,
            host,
            port,
            path,
            headers,
        } => {
            let scheme = if *https { "https" } else { "http" };
            let shown = format!(
                "{scheme}://{}:{port}{path}",
                host.as_deref().unwrap_or("localhost")
            );
            let stream = connect(t, host, *port)
                .await
                .map_err(|e| format!("Get \"{shown}\": dial tcp :{port}: {e}"))?;
            let status = if *https {
                let tls = tls_connector();
                let name = rustls_pki_types::ServerName::try_from(
                    host.clone().unwrap_or_else(|| "localhost".into()),
                )
                .map_err(|e| format!("Get \"{shown}\": {e}"))?;
                let s = tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("Get \"{shown}\": {e}"))?;
                http_get(s, host.as_deref(), *port, path, headers).await
            } else {
                http_get(stream, host.as_deref(), *port, path, headers).await
            }
            .map_err(|e| format!("Get \"{shown}\": {e}"))?;
            if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            }
        }
    }
}

async fn http_get<S>(
    io: S,
    host: Option<&str>,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::Empty;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path)
        .header(
            http::header::HOST,
            format!("{}:{port}", host.unwrap_or("localhost")),
        )
        .header(http::header::USER_AGENT, "kube-probe/1.33")
        .header(http::header::ACCEPT, "*/*");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// HTTPS probes do not verify the pod's certificate (neither does the kubelet).
fn tls_connector() -> tokio_rustls::TlsConnector {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A probe's timing, with Kubernetes' defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Timing {
        let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// A verdict change of one probe of one container attempt.
#[derive(Debug)]
pub struct Verdict {
    pub container: String,
    pub kind: Kind,
    pub ok: bool,
    pub message: String,
}

/// Counts consecutive results and says when the verdict flips. A probe starts out failed
/// (readiness: not ready; startup: not started) except liveness, which starts out alive.
#[derive(Debug)]
pub struct Judge {
    timing: Timing,
    ok: bool,
    streak: u32,
}

impl Judge {
    pub fn new(kind: Kind, timing: Timing) -> Judge {
        Judge {
            timing,
            ok: kind == Kind::Liveness,
            streak: 0,
        }
    }

    /// Record one result; `Some(new verdict)` when it flips.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success == self.ok {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if success {
            self.timing.success_threshold
        } else {
            self.timing.failure_threshold
        };
        if self.streak >= needed {
            self.ok = success;
            self.streak = 0;
            return Some(success);
        }
        None
    }
}

/// Probe until the task is dropped (or, for startup, until it succeeds), sending verdicts.
pub async fn watch(
    kind: Kind,
    action: Action,
    timing: Timing,
    target: Target,
    tx: mpsc::Sender<Verdict>,
) {
    tokio::time::sleep(timing.initial_delay).await;
    let mut judge = Judge::new(kind, timing);
    let mut tick = tokio::time::interval(timing.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = run(&action, &target, timing.timeout).await;
        let message = result.as_ref().err().cloned().unwrap_or_default();
        if let Some(ok) = judge.record(result.is_ok()) {
            let v = Verdict {
                container: target.container.clone(),
                kind,
                ok,
                message,
            };
            if tx.send(v).await.is_err() || (kind == Kind::Startup && ok) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::containers::{FakeExec, FakeRuntime};

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn verdicts_flip_after_thresholds() {
        let mut j = Judge::new(Kind::Liveness, timing(1, 3));
        assert_eq!(j.record(false), None);
        assert_eq!(j.record(false), None);
        assert_eq!(j.record(true), None, "a success resets the failure streak");
        assert_eq!(j.record(false), None);
        assert_eq!(j.record(false), None);
        assert_eq!(j.record(false), Some(false));
        assert_eq!(j.record(true), Some(true));

        let mut r = Judge::new(Kind::Readiness, timing(2, 1));
        assert_eq!(r.record(true), None);
        assert_eq!(r.record(true), Some(true));
        assert_eq!(r.record(false), Some(false));
    }

    #[test]
    fn defaults_and_named_ports() {
        let t = Timing::of(&Probe::default());
        assert_eq!(
            (
                t.period,
                t.timeout,
                t.success_threshold,
                t.failure_threshold
            ),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"name": "http", "containerPort": 8080}]}))
        .unwrap();
        let p: Probe = serde_json::from_value(
            serde_json::json!({"httpGet": {"port": "http", "path": "healthz"}}),
        )
        .unwrap();
        assert_eq!(
            probe_action(&c, &p).unwrap(),
            Action::Http {
                https: false,
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![]
            }
        );
        let bad: Probe =
            serde_json::from_value(serde_json::json!({"tcpSocket": {"port": "nope"}})).unwrap();
        assert!(probe_action(&c, &bad).is_err());
    }

    #[tokio::test]
    async fn probes_run_against_the_fake_and_the_network() {
        let fake = FakeRuntime::new();
        let spec = runtime::containers::ContainerSpec {
            id: "pod_app_0".into(),
            ..Default::default()
        };
        fake.start(&spec, &[], std::path::Path::new("/dev/null"))
            .await
            .unwrap();
        let target = Target {
            runtime: Arc::new(fake.clone()),
            container: "pod_app_0".into(),
            netns: None,
        };
        let exec = Action::Exec(vec!["check".into()]);
        assert!(run(&exec, &target, Duration::from_secs(1)).await.is_ok());
        fake.on_exec(
            "app",
            FakeExec {
                exit_code: 1,
                stdout: b"not healthy\n".to_vec(),
            },
        );
        assert_eq!(
            run(&exec, &target, Duration::from_secs(1)).await,
            Err("not healthy".to_string())
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let http = |path: &str| Action::Http {
            https: false,
            host: None,
            port,
            path: path.into(),
            headers: vec![],
        };
        assert!(
            run(&http("/ok"), &target, Duration::from_secs(2))
                .await
                .is_ok()
        );
        assert_eq!(
            run(&http("/bad"), &target, Duration::from_secs(2)).await,
            Err("HTTP probe failed with statuscode: 503".to_string())
        );
        assert!(
            run(
                &Action::Tcp { host: None, port },
                &target,
                Duration::from_secs(2)
            )
            .await
            .is_ok()
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            run(
                &Action::Tcp {
                    host: None,
                    port: closed
                },
                &target,
                Duration::from_secs(2)
            )
            .await
            .is_err()
        );
    }
}
