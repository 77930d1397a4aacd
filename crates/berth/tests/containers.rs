//! Real containers through the shim and runc, from an image built out of the
//! `busybox-static` package. Needs root, runc and busybox; the test script provides all three.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use runtime::containers::sandbox::{self, Isolation};
use runtime::containers::{
    ContainerSpec, OciConfig, OciRuntime, Resources, Security, SharedNamespaces, ShimStatus,
};

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
    for applet in ["sh", "echo", "sleep", "ip", "dd", "cat", "hostname", "id"] {
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
    _tmp: tempfile::TempDir,
    rt: OciRuntime,
    layer: PathBuf,
    logs: PathBuf,
}

fn env() -> Env {
    let runc = require_root_tools();
    let tmp = tempfile::tempdir().unwrap();
    let layer = busybox_layer(tmp.path());
    let rt = OciRuntime::new(OciConfig {
        run_dir: tmp.path().join("run"),
        rw_dir: tmp.path().join("rw"),
        shim: PathBuf::from(env!("CARGO_BIN_EXE_berth")),
        runc,
        log_max_bytes: 1 << 20,
    })
    .unwrap();
    Env {
        logs: tmp.path().join("logs"),
        layer,
        rt,
        _tmp: tmp,
    }
}

fn spec(id: &str, script: &str, ns: SharedNamespaces) -> ContainerSpec {
    ContainerSpec {
        id: id.to_string(),
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        extra_gids: vec![],
        tty: false,
        mounts: vec![],
        resources: Resources::default(),
        security: Security::default(),
        namespaces: ns,
        cgroup: format!("/berth-test/{id}"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_exit_codes_and_cleanup() {
    let e = env();
    let s = spec(
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
    assert!(!Path::new("/sys/fs/cgroup/memory/berth-test/out").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_namespaces_are_shared_and_isolated() {
    let e = env();
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
    let (status, log) = run_to_end(&e, &spec("ns1", "hostname; ip -o link", shared.clone())).await;
    assert_eq!(exit_code(&status), (0, false));
    assert!(log.contains(" stdout F pod-a"), "the pod's hostname: {log}");
    let links: Vec<&str> = log.lines().filter(|l| l.contains(": <")).collect();
    assert_eq!(links.len(), 1, "only loopback: {log}");
    assert!(links[0].contains("lo:") && links[0].contains("UP"), "{log}");
    sandbox::remove(&ns_root, "pod-a").unwrap();
    assert!(!ns_root.join("pod-a").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_oom_killed() {
    let e = env();
    let mut s = spec(
        "hog",
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
        SharedNamespaces::default(),
    );
    s.resources.memory_limit = Some(16 << 20);
    let (status, _) = run_to_end(&e, &s).await;
    assert_eq!(exit_code(&status), (137, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_a_running_container() {
    let e = env();
    let s = spec("sleeper", "exec sleep 1000", SharedNamespaces::default());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_is_reported() {
    let e = env();
    let mut s = spec("nocmd", "", SharedNamespaces::default());
    s.args = vec!["/bin/does-not-exist".into()];
    let log = e.logs.join("nocmd.log");
    let err =
        e.rt.start(&s, std::slice::from_ref(&e.layer), &log)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("does-not-exist"), "{err}");
    assert!(e.rt.list().is_empty(), "a failed start leaves nothing");
}
