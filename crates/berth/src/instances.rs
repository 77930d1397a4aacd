//! Which berth processes run on this machine, and on which data directories: a running role
//! leaves its pid in `<data-dir>/berth.pid`, so that a client verb (`berth image import`) can
//! tell a user who works on one data directory while the node runs on another.

use std::fs;
use std::path::{Path, PathBuf};

const PID_FILE: &str = "berth.pid";

/// Say that this process serves `data_dir` (until it exits).
pub fn register(data_dir: &Path) {
    let _ = fs::write(data_dir.join(PID_FILE), std::process::id().to_string());
}

/// Forget it, on a clean exit.
pub fn unregister(data_dir: &Path) {
    let path = data_dir.join(PID_FILE);
    if fs::read_to_string(&path).is_ok_and(|p| p.trim() == std::process::id().to_string()) {
        let _ = fs::remove_file(path);
    }
}

/// The arguments of a live process.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// A running node role (`berth up` or `berth agent`) and its data directory, from its
/// arguments.
fn node_data_dir(args: &[String]) -> Option<PathBuf> {
    let exe = Path::new(args.first()?).file_name()?.to_str()?;
    if exe != "berth" || !matches!(args.get(1).map(String::as_str), Some("up" | "agent")) {
        return None;
    }
    let mut it = args.iter().skip(2);
    while let Some(a) = it.next() {
        if a == "--data-dir" {
            return it.next().map(PathBuf::from);
        }
        if let Some(d) = a.strip_prefix("--data-dir=") {
            return Some(PathBuf::from(d));
        }
    }
    Some(crate::cluster::default_data_dir())
}

fn same(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A note for the user if a berth node runs on this machine, but on another data directory
/// than `data_dir` (so what is done to this one's images, its node will not see).
pub fn elsewhere(data_dir: &Path) -> Option<String> {
    let here = fs::read_to_string(data_dir.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .and_then(cmdline)
        .is_some_and(|args| args.first().is_some_and(|a| a.ends_with("berth")));
    if here {
        return None;
    }
    let me = std::process::id();
    let others: Vec<(u32, PathBuf)> = fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| Some((pid, node_data_dir(&cmdline(pid)?)?)))
        .filter(|(_, d)| !same(d, data_dir))
        .collect();
    let (pid, dir) = others.first()?;
    Some(format!(
        "note: no berth node runs on {}, but one (pid {pid}) runs on {}: its pods will not see \
         this store; pass --data-dir {} to work on that one",
        data_dir.display(),
        dir.display(),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn node_roles_and_their_data_dirs() {
        assert_eq!(
            node_data_dir(&args(&["/usr/bin/berth", "up", "--data-dir", "/tmp/d"])),
            Some(PathBuf::from("/tmp/d"))
        );
        assert_eq!(
            node_data_dir(&args(&["berth", "agent", "--data-dir=/x"])),
            Some(PathBuf::from("/x"))
        );
        assert!(node_data_dir(&args(&["berth", "up"])).is_some());
        assert_eq!(node_data_dir(&args(&["berth", "image", "ls"])), None);
        assert_eq!(node_data_dir(&args(&["sleep", "up"])), None);
    }
}
