//! Real containers through the shim, with each engine (the built-in libcontainer and the runc
//! binary), from an image built out of the `busybox-static` package; and the
//! `ContainerRuntime` conformance suite on both. Needs root, runc and busybox; the test script
//! provides all three.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use runtime::containers::conformance::{self, Harness};
use runtime::containers::sandbox::{self, Isolation};
use runtime::containers::{
    Attachment, ContainerRuntime, ContainerSpec, Engine, ExecSpec, Frame, OciConfig, OciRuntime,
    Resources, Security, SharedNamespaces, ShimStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn require_root_tools() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root (run them through scripts/test.sh)"
    );
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("runc is required (apt-get install runc)");
    assert!(
        Path::new("/bin/busybox").exists(),
        "busybox-static is required"
    );
    runc
}

/// A one-layer busybox root filesystem, unpacked.
fn header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn busybox_layer(dir: &Path) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    let dir_entry = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32| {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        b.append_data(&mut h, p, &[][..]).unwrap();
    };
    for (d, m) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ] {
        dir_entry(&mut b, d, m);
    }
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut h = header();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..]).unwrap();
    for applet in [
        "sh", "echo", "sleep", "ip", "dd", "cat", "hostname", "id", "mount", "mkdir",
    ] {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_link_name("busybox").unwrap();
        b.append_data(&mut h, format!("bin/{applet}"), &[][..])
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let layer = dir.join("layer");
    runtime::images::unpack_layer(&tar[..], &layer).unwrap();
    layer
}

struct Env {
    /// Names this test's cgroups (machine-wide, and the engines' tests run at the same time).
    tag: String,
    _tmp: tempfile::TempDir,
    rt: OciRuntime,
    layer: PathBuf,
    logs: PathBuf,
}

fn runc() -> Engine {
    Engine::Binary(require_root_tools())
}

fn builtin() -> Engine {
    require_root_tools();
    Engine::Builtin
}

fn env(engine: Engine) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let layer = busybox_layer(tmp.path());
    let rt = OciRuntime::new(OciConfig {
        run_dir: tmp.path().join("run"),
        rw_dir: tmp.path().join("rw"),
        shim: PathBuf::from(env!("CARGO_BIN_EXE_berth")),
        engine,
        log_max_bytes: 1 << 20,
    })
    .unwrap();
    Env {
        tag: format!("{:08x}", fastrand::u32(..)),
        logs: tmp.path().join("logs"),
        layer,
        rt,
        _tmp: tmp,
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // The runtimes remove a container's own cgroup, not its parents.
        for c in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(c.path().join("berth-test").join(&self.tag));
        }
    }
}

fn spec(e: &Env, id: &str, script: &str, ns: SharedNamespaces) -> ContainerSpec {
    ContainerSpec {
        id: id.to_string(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        extra_gids: vec![],
        tty: false,
        stdin: false,
        stdin_once: false,
        mounts: vec![],
        devices: vec![],
        resources: Resources::default(),
        security: Security::default(),
        namespaces: ns,
        // Unique: the engines' tests run at the same time, and cgroups are machine-wide.
        cgroup: format!("/berth-test/{}/{id}", e.tag),
        max_open_files: 1024,
    }
}

async fn run_to_end(e: &Env, s: &ContainerSpec) -> (ShimStatus, String) {
    let log = e.logs.join(format!("{}.log", s.id));
    e.rt.start(s, std::slice::from_ref(&e.layer), &log)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), e.rt.wait(&s.id))
        .await
        .unwrap()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    e.rt.remove(&s.id).await.unwrap();
    (status, text)
}

fn exit_code(s: &ShimStatus) -> (i32, bool) {
    match s {
        ShimStatus::Exited {
            exit_code,
            oom_killed,
            ..
        } => (*exit_code, *oom_killed),
        other => panic!("not exited: {other:?}"),
    }
}

async fn output_exit_codes_and_cleanup(e: Env) {
    let s = spec(
        &e,
        "out",
        "echo hello; echo oops >&2; printf 'no newline'; exit 3",
        SharedNamespaces::default(),
    );
    let (status, log) = run_to_end(&e, &s).await;
    assert_eq!(exit_code(&status), (3, false));
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F hello")),
        "{log}"
    );
    assert!(lines.iter().any(|l| l.ends_with(" stderr F oops")), "{log}");
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout P no newline")),
        "{log}"
    );
    // Nothing is left behind: bundle, mount, writable layer, cgroup.
    assert!(e.rt.list().is_empty());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*e.rt.config().run_dir.to_string_lossy()));
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory{}", s.cgroup)).exists());
}

/// Processes in containers start as on any Linux box: no signal ignored or blocked (berth is a
/// Rust program, which ignores SIGPIPE itself), so `yes | head -1` ends `yes` with SIGPIPE.
async fn signals_start_at_their_defaults(e: Env) {
    let script = "grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -1; \
                  exec sleep 1000";
    let s = spec(&e, "signals", script, SharedNamespaces::default());
    let log = e.logs.join("signals.log");
    e.rt.start(&s, std::slice::from_ref(&e.layer), &log)
        .await
        .unwrap();
    let argv = [
        "sh",
        "-c",
        "grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -1",
    ];
    let p =
        e.rt.exec(
            "signals",
            &ExecSpec {
                argv: argv.map(String::from).to_vec(),
                tty: false,
                stdin: false,
            },
        )
        .await
        .unwrap();
    let mut out = String::new();
    p.stdout.unwrap().read_to_string(&mut out).await.unwrap();
    let mut err = String::new();
    p.stderr.unwrap().read_to_string(&mut err).await.unwrap();
    assert_eq!(p.exit.await.unwrap(), 0);
    let logged = std::fs::read_to_string(&log).unwrap();
    let container: String = logged
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_string() + "\n")
        .collect();
    // The standard signals (1-31) are what programs rely on; runc itself leaves its first
    // real-time signal ignored in the container's init, which only glibc uses, for itself.
    for (who, text) in [("container", container.as_str()), ("exec", out.as_str())] {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap_or_else(|| panic!("{who}: no {name} in {text:?}"))
        };
        assert_eq!(field("SigBlk:"), 0, "{who} starts with signals blocked");
        assert_eq!(
            field("SigIgn:") & 0x7fff_ffff,
            0,
            "{who} starts with signals ignored"
        );
        assert!(
            text.ends_with("y\n"),
            "{who}: {text:?}; exec stderr {err:?}"
        );
    }
    assert!(!err.contains("Broken pipe"), "{err}");
    e.rt.kill("signals", 9).await.unwrap();
    e.rt.wait("signals").await.unwrap();
    e.rt.remove("signals").await.unwrap();
}

async fn pod_namespaces_are_shared_and_isolated(e: Env) {
    let ns_root = e.rt.namespaces_root();
    let paths = sandbox::create(
        &ns_root,
        "pod-a",
        "pod-a",
        Isolation {
            net: true,
            ipc: true,
            uts: true,
        },
    )
    .unwrap();
    let shared = SharedNamespaces {
        net: paths.net.clone(),
        ipc: paths.ipc.clone(),
        uts: paths.uts.clone(),
        ..Default::default()
    };
    let (status, log) =
        run_to_end(&e, &spec(&e, "ns1", "hostname; ip -o link", shared.clone())).await;
    assert_eq!(exit_code(&status), (0, false));
    assert!(log.contains(" stdout F pod-a"), "the pod's hostname: {log}");
    let links: Vec<&str> = log.lines().filter(|l| l.contains(": <")).collect();
    assert_eq!(links.len(), 1, "only loopback: {log}");
    assert!(links[0].contains("lo:") && links[0].contains("UP"), "{log}");
    sandbox::remove(&ns_root, "pod-a").unwrap();
    assert!(!ns_root.join("pod-a").exists());
}

async fn memory_hog_is_oom_killed(e: Env) {
    let mut s = spec(
        &e,
        "hog",
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
        SharedNamespaces::default(),
    );
    s.resources.memory_limit = Some(16 << 20);
    let (status, _) = run_to_end(&e, &s).await;
    assert_eq!(exit_code(&status), (137, true));
}

async fn kill_ends_a_running_container(e: Env) {
    let s = spec(
        &e,
        "sleeper",
        "exec sleep 1000",
        SharedNamespaces::default(),
    );
    let log = e.logs.join("sleeper.log");
    let started =
        e.rt.start(&s, std::slice::from_ref(&e.layer), &log)
            .await
            .unwrap();
    assert!(started.pid > 0);
    assert_eq!(e.rt.init_pid("sleeper"), Some(started.pid));
    e.rt.kill("sleeper", 9).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), e.rt.wait("sleeper"))
        .await
        .unwrap()
        .unwrap();
    match status {
        ShimStatus::Exited {
            exit_code, signal, ..
        } => assert_eq!((exit_code, signal), (137, 9)),
        other => panic!("{other:?}"),
    }
    e.rt.remove("sleeper").await.unwrap();
}

async fn a_missing_command_is_reported(e: Env) {
    let mut s = spec(&e, "nocmd", "", SharedNamespaces::default());
    s.args = vec!["/bin/does-not-exist".into()];
    let log = e.logs.join("nocmd.log");
    let err =
        e.rt.start(&s, std::slice::from_ref(&e.layer), &log)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    assert!(e.rt.list().is_empty(), "a failed start leaves nothing");
    // Nor a zombie: the shim that gave up was reaped. (Other tests' shims may be ending at
    // the same moment, so allow a moment for those.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !zombie_shims().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "zombie shims left: {:?}",
            zombie_shims()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Children of this process that ended and were never waited for.
fn zombie_shims() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str()) {
            out.push(head.split_whitespace().next().unwrap().parse().unwrap());
        }
    }
    out
}

async fn privileged_gets_the_hosts_capabilities_and_devices(e: Env) {
    let script = "cat /proc/self/status; echo; cat /proc/mounts; \
                  [ -c /dev/loop-control ] && echo has-loop-control; \
                  mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted";
    let mut s = spec(&e, "priv", script, SharedNamespaces::default());
    s.security = Security {
        privileged: true,
        capabilities: runtime::containers::host::capabilities(),
        ..Security::default()
    };
    s.devices = runtime::containers::host::devices();
    let (status, log) = run_to_end(&e, &s).await;
    assert_eq!(exit_code(&status), (0, false), "{log}");
    // The log's lines carry a timestamp, the stream and a tag before the text.
    let out: String = log
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(|l| format!("{l}\n"))
        .collect();
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("CapBnd:"))
            .map(str::to_string)
    };
    let eff = out
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .expect("CapEff in the output");
    // Everything the host holds, effective.
    assert_eq!(
        eff.trim_start_matches("CapEff:").trim(),
        bnd(&host).unwrap().trim_start_matches("CapBnd:").trim(),
        "{out}"
    );
    assert!(out.contains("has-loop-control"), "{out}");
    assert!(out.contains("mounted"), "{out}");
    let sys = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/sys"))
        .expect("/sys in the mounts");
    assert!(sys.contains(" rw,"), "{sys}");
}

async fn exec_with_pipes_and_a_terminal(e: Env) {
    let s = spec(&e, "execs", "exec sleep 1000", SharedNamespaces::default());
    let log = e.logs.join("execs.log");
    e.rt.start(&s, std::slice::from_ref(&e.layer), &log)
        .await
        .unwrap();
    // Pipes: stdin in, stdout and stderr apart, the exit code back.
    let p =
        e.rt.exec(
            "execs",
            &ExecSpec {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "read x; echo got-$x; echo e >&2; exit 5".into(),
                ],
                tty: false,
                stdin: true,
            },
        )
        .await
        .unwrap();
    let mut stdin = p.stdin.unwrap();
    stdin.write_all(b"hi\n").await.unwrap();
    drop(stdin);
    let (mut out, mut err) = (String::new(), String::new());
    p.stdout.unwrap().read_to_string(&mut out).await.unwrap();
    p.stderr.unwrap().read_to_string(&mut err).await.unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("got-hi\n", "e\n"));
    assert_eq!(p.exit.await.unwrap(), 5);
    // A terminal inside the container, resizable from here.
    let p =
        e.rt.exec(
            "execs",
            &ExecSpec {
                argv: vec!["sh".into(), "-c".into(), "sleep 0.3; tty; stty size".into()],
                tty: true,
                stdin: true,
            },
        )
        .await
        .unwrap();
    (p.resize.as_ref().unwrap())(90, 30);
    let mut out = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        p.stdout.unwrap().read_to_string(&mut out),
    )
    .await;
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("30 90"), "{out:?}");
    assert_eq!(p.exit.await.unwrap(), 0);
    e.rt.kill("execs", 9).await.unwrap();
    e.rt.wait("execs").await.unwrap();
    e.rt.remove("execs").await.unwrap();
}

/// A container with a terminal: attached input reaches its shell, a resize reaches the
/// terminal, and what it shows is both attached and logged.
async fn attach_with_a_terminal(e: Env) {
    let s = ContainerSpec {
        args: vec!["sh".into()],
        tty: true,
        stdin: true,
        ..spec(&e, "ttyattach", "", SharedNamespaces::default())
    };
    let log = e.logs.join("ttyattach.log");
    e.rt.start(&s, std::slice::from_ref(&e.layer), &log)
        .await
        .unwrap();
    let Attachment {
        mut input,
        mut output,
    } = e.rt.attach("ttyattach").await.unwrap();
    input.send(&Frame::OpenStdin).await.unwrap();
    input
        .send(&Frame::Resize {
            width: 100,
            height: 30,
        })
        .await
        .unwrap();
    input
        .send(&Frame::Stdin(b"stty size; exit 3\n".to_vec()))
        .await
        .unwrap();
    let mut shown = Vec::new();
    let read_all = async {
        while let Some(f) = output.next().await.unwrap() {
            match f {
                Frame::Stdout(b) => shown.extend(b),
                other => panic!("a terminal has only stdout: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the attachment ends when the container does");
    let shown = String::from_utf8_lossy(&shown);
    assert!(shown.contains("30 100"), "{shown:?}");
    let status = e.rt.wait("ttyattach").await.unwrap();
    assert_eq!(exit_code(&status), (3, false));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains(" stdout F 30 100"), "{logged}");
    e.rt.remove("ttyattach").await.unwrap();
}

impl Harness for Env {
    fn runtime(&self) -> &dyn ContainerRuntime {
        &self.rt
    }
    fn forever(&self, id: &str) -> ContainerSpec {
        spec(self, id, "exec sleep 1000", SharedNamespaces::default())
    }
    fn exits(&self, id: &str, code: i32) -> ContainerSpec {
        spec(
            self,
            id,
            &format!("exit {code}"),
            SharedNamespaces::default(),
        )
    }
    fn exec_result(&self, _: &str, _: &[String], _: &[u8], _: i32) {}
    fn echo(&self, id: &str) -> ContainerSpec {
        ContainerSpec {
            args: vec!["cat".into()],
            stdin: true,
            stdin_once: true,
            ..spec(self, id, "", SharedNamespaces::default())
        }
    }
    fn layers(&self) -> Vec<PathBuf> {
        vec![self.layer.clone()]
    }
    fn log(&self, id: &str) -> PathBuf {
        self.logs.join(format!("{id}.log"))
    }
}

async fn conforms(e: Env) {
    conformance::all(&e).await;
}

/// Each check, once per engine.
macro_rules! for_each_engine {
    ($($check:ident),* $(,)?) => {
        mod builtin_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::env(super::builtin())).await;
                }
            )*
        }
        mod runc_engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::env(super::runc())).await;
                }
            )*
        }
    };
}

for_each_engine!(
    output_exit_codes_and_cleanup,
    pod_namespaces_are_shared_and_isolated,
    memory_hog_is_oom_killed,
    kill_ends_a_running_container,
    a_missing_command_is_reported,
    privileged_gets_the_hosts_capabilities_and_devices,
    exec_with_pipes_and_a_terminal,
    attach_with_a_terminal,
    signals_start_at_their_defaults,
    conforms,
);
