//! What this host can hand a privileged container: the capabilities berth itself holds (a
//! runtime cannot grant more than its own bounding set: without CAP_SYS_RESOURCE here, asking
//! for "every capability" fails), and the host's device nodes.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::spec::{ALL_CAPABILITIES, DeviceSpec};

/// The capabilities in this process's bounding set, by name.
pub fn capabilities() -> Vec<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = bounding_set(&status).unwrap_or(u64::MAX);
    granted(mask)
}

/// The `CapBnd` mask from `/proc/<pid>/status` text.
fn bounding_set(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The names of the capabilities in `mask` (`ALL_CAPABILITIES` is in capability-number order).
fn granted(mask: u64) -> Vec<String> {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, name)| name.to_string())
        .collect()
}

/// Every character and block device under the host's `/dev`, as containerd gives a
/// privileged container (the pseudo-terminal and shared-memory trees excepted: the container
/// has its own).
pub fn devices() -> Vec<DeviceSpec> {
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn walk(dir: &Path, out: &mut Vec<DeviceSpec>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            let skip = [
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/dev/.lxc",
                "/dev/.udev",
            ];
            if !skip.iter().any(|s| path == Path::new(s)) {
                walk(&path, out);
            }
            continue;
        }
        let kind = if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else {
            continue;
        };
        // /dev/console belongs to the container's terminal, if any.
        if path == Path::new("/dev/console") {
            continue;
        }
        let rdev = meta.rdev();
        out.push(DeviceSpec {
            path: path.to_string_lossy().into_owned(),
            kind,
            major: nix::sys::stat::major(rdev) as i64,
            minor: nix::sys::stat::minor(rdev) as i64,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounding_set_names_what_the_host_holds() {
        let status = "Name:\tberth\nCapInh:\t0000000000000000\nCapBnd:\t000001fffeffffff\n";
        let mask = bounding_set(status).expect("a mask");
        let names = granted(mask);
        assert!(names.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!names.contains(&"CAP_SYS_RESOURCE".to_string()));
        assert_eq!(names.len(), ALL_CAPABILITIES.len() - 1);
        assert_eq!(granted(0), Vec::<String>::new());
    }

    #[test]
    fn host_devices_include_the_null_device() {
        let devs = devices();
        let null = devs
            .iter()
            .find(|d| d.path == "/dev/null")
            .expect("/dev/null");
        assert_eq!((null.kind, null.major, null.minor), ('c', 1, 3));
    }
}
