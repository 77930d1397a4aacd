//! Image garbage collection under disk pressure, as the kubelet does it: when the disk that
//! holds the images is fuller than the high threshold, remove images no pod on this node uses,
//! least recently used first, until usage is under the low threshold; then drop the blobs and
//! unpacked layers nothing references any more. Pinned images (imported by hand) and images
//! used or added within the minimum age are spared, as the kubelet spares pinned images and
//! honours `imageMinimumGCAge`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use runtime::images::{Image, ImageStore, normalize};
use tracing::{info, warn};

/// How often disk usage is checked.
pub const EVERY: Duration = Duration::from_secs(60);

/// Percentages of the disk in use, like the kubelet's `imageGCHigh/LowThresholdPercent`, and
/// how long an image must have gone unused before it may go (`imageMinimumGCAge`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub high: u8,
    pub low: u8,
    pub min_age: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            high: 85,
            low: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

/// Total and used bytes of the filesystem holding `path`.
pub fn disk_usage(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let total = s.blocks() * s.fragment_size();
    let free = s.blocks_available() * s.fragment_size();
    Some((total, total.saturating_sub(free)))
}

/// Whether an image is what one of `refs` (pod image references) names.
fn used_by(image: &Image, refs: &HashSet<String>) -> bool {
    refs.iter().any(|r| {
        image.names.contains(r)
            || image.repo_digests.contains(r)
            || r.trim_start_matches("sha256:") == image.id.hex()
    })
}

/// Disk figures and the moment a plan is made for.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub total: u64,
    pub used: u64,
    /// Seconds since the epoch.
    pub now: u64,
}

/// The images to remove to bring `used` bytes under the low threshold: unused, unpinned ones
/// idle for at least the minimum age, least recently used first (never-used ones by when
/// they were added). Pure.
pub fn plan(
    images: &[Image],
    in_use: &HashSet<String>,
    last_used: &HashMap<String, u64>,
    u: Usage,
    t: Thresholds,
) -> Vec<Image> {
    if u.total == 0 || u.used * 100 < u.total * t.high as u64 {
        return Vec::new();
    }
    let target = u.total * t.low as u64 / 100;
    let mut need = u.used.saturating_sub(target);
    // Seconds since the epoch: when last used, else when added.
    let when = |i: &Image| {
        last_used.get(i.id.as_str()).copied().unwrap_or_else(|| {
            i.added
                .parse::<jiff::Timestamp>()
                .map(|t| t.as_second().max(0) as u64)
                .unwrap_or(0)
        })
    };
    let idle_since = u.now.saturating_sub(t.min_age.as_secs());
    let mut candidates: Vec<&Image> = images
        .iter()
        .filter(|i| !i.pinned && !used_by(i, in_use) && when(i) <= idle_since)
        .collect();
    candidates.sort_by_key(|i| when(i));
    let mut out = Vec::new();
    for i in candidates {
        if need == 0 {
            break;
        }
        need = need.saturating_sub(i.size);
        out.push(i.clone());
    }
    out
}

/// Normalized references of the images `pods` use.
pub fn references<'a>(images: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    images
        .into_iter()
        .flat_map(|r| [normalize(r).ok(), Some(r.to_string())])
        .flatten()
        .collect()
}

/// One pass: check usage, remove what the plan says, collect garbage. Returns bytes freed.
pub fn collect(
    store: &ImageStore,
    in_use: &HashSet<String>,
    last_used: &HashMap<String, u64>,
    t: Thresholds,
) -> u64 {
    let Some((total, used)) = disk_usage(store.root()) else {
        return 0;
    };
    let images = match store.list() {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "cannot list images for garbage collection");
            return 0;
        }
    };
    let now = jiff::Timestamp::now().as_second().max(0) as u64;
    let doomed = plan(&images, in_use, last_used, Usage { total, used, now }, t);
    if doomed.is_empty() {
        return 0;
    }
    let percent = used * 100 / total.max(1);
    for i in &doomed {
        match store.remove(i.id.as_str()) {
            Ok(_) => {
                info!(image = ?i.names, id = i.id.short(), disk_percent = percent, "removed an unused image under disk pressure")
            }
            Err(e) => warn!(id = i.id.short(), error = %e, "could not remove an unused image"),
        }
    }
    store.collect_garbage().unwrap_or_else(|e| {
        warn!(error = %e, "image garbage collection failed");
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::images::{Digest, RunConfig};

    fn image(name: &str, size: u64, added: &str) -> Image {
        Image {
            id: Digest::of(name.as_bytes()),
            names: vec![normalize(name).unwrap()],
            repo_digests: vec![],
            manifest: Digest::of(b"m"),
            layers: vec![],
            size,
            config: RunConfig::default(),
            added: added.into(),
            pinned: false,
        }
    }

    /// `used` of 1000 bytes, long after every image was added.
    fn usage(used: u64) -> Usage {
        Usage {
            total: 1000,
            used,
            now: 1_800_000_000,
        }
    }

    #[test]
    fn unused_images_go_oldest_first_until_under_the_low_mark() {
        let images = vec![
            image("a:1", 30, "2024-01-03T00:00:00Z"),
            image("b:1", 30, "2024-01-01T00:00:00Z"),
            image("c:1", 30, "2024-01-02T00:00:00Z"),
            image("used:1", 500, "2023-01-01T00:00:00Z"),
        ];
        let in_use = references(["used:1"]);
        let t = Thresholds::default();
        // Under the high mark: nothing.
        assert!(plan(&images, &in_use, &HashMap::new(), usage(840), t).is_empty());
        // 900/1000 used, low mark 800: 100 bytes to free -> b, c, a (oldest first); the image
        // in use stays whatever its age.
        let names = |v: Vec<Image>| {
            v.into_iter()
                .map(|i| i.names[0].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(plan(&images, &in_use, &HashMap::new(), usage(900), t)),
            [
                "docker.io/library/b:1",
                "docker.io/library/c:1",
                "docker.io/library/a:1"
            ]
        );
        assert_eq!(
            names(plan(&images, &in_use, &HashMap::new(), usage(860), t)),
            ["docker.io/library/b:1", "docker.io/library/c:1"]
        );
        // Use within the minimum age protects an old image...
        let now = usage(0).now;
        let used_lately = HashMap::from([(images[1].id.as_str().to_string(), now - 60)]);
        assert_eq!(
            names(plan(&images, &in_use, &used_lately, usage(860), t)),
            ["docker.io/library/c:1", "docker.io/library/a:1"]
        );
        // ...but not once it is older than that.
        let used_before = HashMap::from([(images[1].id.as_str().to_string(), now - 121)]);
        assert_eq!(
            names(plan(&images, &in_use, &used_before, usage(860), t)),
            ["docker.io/library/c:1", "docker.io/library/a:1"],
            "still the newest use of the three"
        );
        let used_before = HashMap::from([(images[0].id.as_str().to_string(), now - 121)]);
        assert_eq!(
            names(plan(&images, &in_use, &used_before, usage(900), t)),
            [
                "docker.io/library/b:1",
                "docker.io/library/c:1",
                "docker.io/library/a:1"
            ]
        );
        // An image added a moment ago is not yet a candidate.
        let fresh = vec![
            image("new:1", 300, "2027-01-15T07:59:50Z"),
            images[1].clone(),
        ];
        let at = Usage {
            now: "2027-01-15T08:00:00Z"
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_second() as u64,
            ..usage(900)
        };
        assert_eq!(
            names(plan(&fresh, &in_use, &HashMap::new(), at, t)),
            ["docker.io/library/b:1"]
        );
    }

    #[test]
    fn pinned_images_stay_whatever_the_pressure() {
        let mut images = vec![
            image("imported:1", 300, "2024-01-01T00:00:00Z"),
            image("pulled:1", 30, "2024-01-02T00:00:00Z"),
        ];
        images[0].pinned = true;
        let names: Vec<String> = plan(
            &images,
            &HashSet::new(),
            &HashMap::new(),
            usage(1000),
            Thresholds::default(),
        )
        .into_iter()
        .map(|i| i.names[0].clone())
        .collect();
        assert_eq!(names, ["docker.io/library/pulled:1"]);
    }

    /// A `docker save` archive of one image with one layer holding `file`.
    fn saved(name: &str, file: &str) -> Vec<u8> {
        let mut layer = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        layer.append_data(&mut h, file, &b"data"[..]).unwrap();
        let layer = layer.into_inner().unwrap();
        let diff = Digest::of(&layer);
        let config = serde_json::json!({
            "architecture": runtime::images::host_arch(), "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff.as_str()]},
        })
        .to_string();
        let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [name], "Layers": ["layer.tar"]}]).to_string();
        let mut out = tar::Builder::new(Vec::new());
        for (path, data) in [
            ("config.json", config.as_bytes()),
            ("layer.tar", &layer[..]),
            ("manifest.json", manifest.as_bytes()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            out.append_data(&mut h, path, data).unwrap();
        }
        out.into_inner().unwrap()
    }

    #[test]
    fn collection_removes_unused_images_and_their_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let quiet = runtime::images::Quiet;
        let a = runtime::images::import(&store, &saved("a:1", "a.txt")[..], &quiet).unwrap();
        let b = runtime::images::import(&store, &saved("b:1", "b.txt")[..], &quiet).unwrap();
        let c = runtime::images::import(&store, &saved("c:1", "c.txt")[..], &quiet).unwrap();
        assert!(a[0].pinned && b[0].pinned, "imported images are pinned");
        // b is unpinned and unused; c stays pinned though unused.
        assert!(!store.set_pinned("b:1", false).unwrap().pinned);
        let b_layer = store.layer_dirs(&b[0])[0].clone();
        assert!(b_layer.join("b.txt").exists());
        let in_use = references(["a:1"]);
        // Thresholds of zero: any usage is pressure, and everything unused must go.
        let pressure = Thresholds {
            high: 0,
            low: 0,
            min_age: Duration::ZERO,
        };
        store.set_pinned("a:1", false).unwrap();
        let freed = collect(&store, &in_use, &HashMap::new(), pressure);
        assert!(freed > 0);
        let left: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .flat_map(|i| i.names)
            .collect();
        assert_eq!(left, ["docker.io/library/a:1", "docker.io/library/c:1"]);
        assert!(!b_layer.exists(), "the unused layer is gone");
        assert!(
            store.layer_dirs(&c[0])[0].join("c.txt").exists(),
            "the pinned one stays"
        );
        assert!(
            store.layer_dirs(&a[0])[0].join("a.txt").exists(),
            "the used one stays"
        );
        // Without pressure nothing happens.
        assert_eq!(
            collect(
                &store,
                &HashSet::new(),
                &HashMap::new(),
                Thresholds {
                    high: 100,
                    low: 100,
                    min_age: Duration::ZERO,
                }
            ),
            0
        );
        assert_eq!(store.list().unwrap().len(), 2);
    }
}
