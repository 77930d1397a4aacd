//! Storage kinds with Kubernetes' defaults and checks: PersistentVolumes and claims (bound by
//! the volume controller), and storage.k8s.io StorageClasses, CSIDrivers, CSINodes,
//! VolumeAttachments and CSIStorageCapacities (served for tools that look for them).

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeStatus,
};
use k8s_openapi::api::storage::v1::{
    CSIDriver, CSINode, CSIStorageCapacity, StorageClass, VolumeAttachment,
};

use super::{Kind, default_if_none, default_str};
use crate::errors::{FieldErrors, Path};
use crate::names;
use crate::quantity::Quantity;

const ACCESS_MODES: &[&str] = &[
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];
const VOLUME_MODES: &[&str] = &["Block", "Filesystem"];
const RECLAIM_POLICIES: &[&str] = &["Delete", "Recycle", "Retain"];
const BINDING_MODES: &[&str] = &["Immediate", "WaitForFirstConsumer"];
const HOST_PATH_TYPES: &[&str] = &[
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];

/// The volume sources a PersistentVolume may name, by their JSON field.
const PV_SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "csi",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "hostPath",
    "iscsi",
    "local",
    "nfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
];

/// berth's built-in provisioner: a directory on the node that first uses the claim.
pub const LOCAL_PATH_PROVISIONER: &str = "berth.dev/local-path";
/// On a node: where its agent keeps the volumes the built-in provisioner makes there.
pub const NODE_DIR_ANNOTATION: &str = "storage.berth.dev/local-path-dir";
/// On a provisioned volume: its node's hostname label, so that node's agent finds it.
pub const VOLUME_NODE_LABEL: &str = "storage.berth.dev/node";
/// In a node's capacity: how many claim-backed volumes its pods may use at once (set by the
/// agent's `--max-volumes`; a node without it has no limit). Kubernetes' old attachable-volume
/// resources had this shape; it is counted like any resource, one per claim a pod mounts.
pub const VOLUMES_RESOURCE: &str = "attachable-volumes-berth-local-path";
/// The class of a claim or volume as older clients name it, ahead of `storageClassName`.
pub const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";
/// On a volume: the provisioner that made it.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The annotations that make a StorageClass the default one (GA and beta).
pub const DEFAULT_CLASS_ANNOTATIONS: [&str; 2] = [
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
];

/// Whether a StorageClass is marked the default.
pub fn is_default_class(class: &StorageClass) -> bool {
    let annotations = class.metadata.annotations.as_ref();
    DEFAULT_CLASS_ANNOTATIONS
        .iter()
        .any(|a| annotations.and_then(|m| m.get(*a)).map(String::as_str) == Some("true"))
}

fn check_access_modes(
    modes: Option<&Vec<String>>,
    path: &Path,
    required: &str,
    errs: &mut FieldErrors,
) {
    let Some(modes) = modes.filter(|m| !m.is_empty()) else {
        errs.required(path, required);
        return;
    };
    for mode in modes {
        errs.one_of(path, mode, ACCESS_MODES);
    }
    if modes.len() > 1 && modes.iter().any(|m| m == "ReadWriteOncePod") {
        errs.forbidden(path, "may not use ReadWriteOncePod with other access modes");
    }
}

fn check_storage(
    q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    path: &Path,
    errs: &mut FieldErrors,
) {
    match q.map(|q| (q, Quantity::parse(&q.0))) {
        None => errs.required(path, ""),
        Some((raw, Err(e))) => errs.invalid(path, &raw.0, e.to_string()),
        Some((raw, Ok(q))) if q.milli() <= 0 => {
            errs.invalid(path, &raw.0, "must be greater than zero")
        }
        Some(_) => {}
    }
}

/// A path a volume names: required, and no `..` element.
fn check_volume_path(path_value: &str, path: &Path, absolute: bool, errs: &mut FieldErrors) {
    if path_value.is_empty() {
        errs.required(path, "");
    } else if path_value.split('/').any(|e| e == "..") {
        errs.invalid(path, path_value, "must not contain '..'");
    } else if absolute && !path_value.starts_with('/') {
        errs.invalid(path, path_value, "must be an absolute path");
    }
}

impl Kind for PersistentVolume {
    fn prepare_create(&mut self) {
        self.status = Some(PersistentVolumeStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
    }

    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_str(&mut spec.persistent_volume_reclaim_policy, "Retain");
        default_str(&mut spec.volume_mode, "Filesystem");
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        check_access_modes(
            spec.access_modes.as_ref(),
            &path.child("accessModes"),
            "",
            errs,
        );
        match &spec.capacity {
            Some(c) if !c.is_empty() => {
                for key in c.keys().filter(|k| *k != "storage") {
                    errs.not_supported(&path.child("capacity").key(key), key, &["storage"]);
                }
                check_storage(
                    c.get("storage"),
                    &path.child("capacity").key("storage"),
                    errs,
                );
            }
            _ => errs.required(&path.child("capacity"), ""),
        }
        if let Some(p) = &spec.persistent_volume_reclaim_policy {
            errs.one_of(
                &path.child("persistentVolumeReclaimPolicy"),
                p,
                RECLAIM_POLICIES,
            );
        }
        if let Some(m) = &spec.volume_mode {
            errs.one_of(&path.child("volumeMode"), m, VOLUME_MODES);
        }
        if let Some(class) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
            for e in names::dns1123_subdomain(class) {
                errs.invalid(&path.child("storageClassName"), class, e);
            }
        }
        let json = serde_json::to_value(spec).unwrap_or_default();
        let named: Vec<&str> = PV_SOURCES
            .iter()
            .copied()
            .filter(|s| json.get(*s).is_some_and(|v| !v.is_null()))
            .collect();
        match named.as_slice() {
            [] => errs.required(&path, "must specify a volume type"),
            [_, more @ ..] => {
                for m in more {
                    errs.forbidden(&path.child(m), "may not specify more than 1 volume type");
                }
            }
        }
        if let Some(h) = &spec.host_path {
            check_volume_path(&h.path, &path.child("hostPath").child("path"), false, errs);
            if let Some(t) = &h.type_ {
                errs.one_of(&path.child("hostPath").child("type"), t, HOST_PATH_TYPES);
            }
        }
        if let Some(l) = &spec.local {
            check_volume_path(&l.path, &path.child("local").child("path"), true, errs);
            if spec.node_affinity.is_none() {
                errs.required(
                    &path.child("nodeAffinity"),
                    "Local volume requires node affinity",
                );
            }
        }
        let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) else {
            return;
        };
        let source = |s: &serde_json::Value| {
            PV_SOURCES
                .iter()
                .map(|k| s.get(*k).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        };
        if source(&json) != source(&serde_json::to_value(old_spec).unwrap_or_default()) {
            errs.forbidden(
                &path.child("persistentvolumesource"),
                "spec.persistentvolumesource is immutable after creation",
            );
        }
        errs.immutable(
            &path.child("volumeMode"),
            &spec.volume_mode,
            &old_spec.volume_mode,
        );
        if old_spec.node_affinity.is_some() && spec.node_affinity != old_spec.node_affinity {
            errs.invalid(
                &path.child("nodeAffinity"),
                "",
                "field is immutable once set",
            );
        }
    }
}

impl Kind for PersistentVolumeClaim {
    fn prepare_create(&mut self) {
        self.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
    }

    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_str(&mut spec.volume_mode, "Filesystem");
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        check_claim_spec(spec, &path, errs);
        let Some(old) = old else { return };
        let Some(old_spec) = old.spec.as_ref() else {
            return;
        };
        // What may change: the volume name once (to bind), the class from unset (a default
        // class assigned later), and the requested size of a bound claim (to grow it).
        let bound = old.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let mut a = spec.clone();
        let mut b = old_spec.clone();
        if b.volume_name.as_deref().is_none_or(str::is_empty) {
            a.volume_name = None;
            b.volume_name = None;
        }
        if b.storage_class_name.is_none() {
            a.storage_class_name = None;
        }
        let storage = |s: &k8s_openapi::api::core::v1::PersistentVolumeClaimSpec| {
            s.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(|q| Quantity::parse(&q.0).ok())
        };
        if bound {
            if let (Some(new), Some(was)) = (storage(spec), storage(old_spec))
                && new.milli() < was.milli()
            {
                errs.forbidden(
                    &path.child("resources").child("requests").child("storage"),
                    "field can not be less than previous value",
                );
            }
            for r in [&mut a.resources, &mut b.resources].into_iter().flatten() {
                if let Some(req) = r.requests.as_mut() {
                    req.remove("storage");
                }
            }
        }
        if a.volume_mode != b.volume_mode {
            errs.immutable(&path.child("volumeMode"), &a.volume_mode, &b.volume_mode);
            a.volume_mode = b.volume_mode.clone();
        }
        if a != b {
            errs.forbidden(
                &path,
                "spec is immutable after creation except resources.requests and \
                 volumeAttributesClassName for bound claims",
            );
        }
    }
}

/// The checks a claim's spec gets, alone or as a template (a StatefulSet's, an ephemeral
/// volume's).
pub(crate) fn check_claim_spec(
    spec: &k8s_openapi::api::core::v1::PersistentVolumeClaimSpec,
    path: &Path,
    errs: &mut FieldErrors,
) {
    check_access_modes(
        spec.access_modes.as_ref(),
        &path.child("accessModes"),
        "at least 1 access mode is required",
        errs,
    );
    check_storage(
        spec.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
        &path.child("resources").key("storage"),
        errs,
    );
    if let Some(m) = &spec.volume_mode {
        errs.one_of(&path.child("volumeMode"), m, VOLUME_MODES);
    }
    if let Some(class) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
        for e in names::dns1123_subdomain(class) {
            errs.invalid(&path.child("storageClassName"), class, e);
        }
    }
}

impl Kind for StorageClass {
    fn default(&mut self) {
        default_str(&mut self.reclaim_policy, "Delete");
        default_str(&mut self.volume_binding_mode, "Immediate");
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("");
        if self.provisioner.is_empty() {
            errs.required(&path.child("provisioner"), "");
        } else {
            for e in names::qualified_name(&self.provisioner) {
                errs.invalid(&path.child("provisioner"), &self.provisioner, e);
            }
        }
        if let Some(p) = &self.reclaim_policy {
            errs.one_of(&path.child("reclaimPolicy"), p, &["Delete", "Retain"]);
        }
        if let Some(m) = &self.volume_binding_mode {
            errs.one_of(&path.child("volumeBindingMode"), m, BINDING_MODES);
        }
        let Some(old) = old else { return };
        if self.provisioner != old.provisioner {
            errs.forbidden(
                &path.child("provisioner"),
                "updates to provisioner are forbidden.",
            );
        }
        if self.parameters != old.parameters {
            errs.forbidden(
                &path.child("parameters"),
                "updates to parameters are forbidden.",
            );
        }
        if self.reclaim_policy != old.reclaim_policy {
            errs.forbidden(
                &path.child("reclaimPolicy"),
                "updates to reclaimPolicy are forbidden.",
            );
        }
        errs.immutable(
            &path.child("volumeBindingMode"),
            &self.volume_binding_mode,
            &old.volume_binding_mode,
        );
    }
}

impl Kind for CSIDriver {
    fn default(&mut self) {
        let spec = &mut self.spec;
        default_if_none(&mut spec.attach_required, true);
        default_if_none(&mut spec.pod_info_on_mount, false);
        default_if_none(&mut spec.storage_capacity, false);
        default_if_none(&mut spec.requires_republish, false);
        default_if_none(&mut spec.se_linux_mount, false);
        default_str(&mut spec.fs_group_policy, "ReadWriteOnceWithFSType");
        if spec.volume_lifecycle_modes.is_none() {
            spec.volume_lifecycle_modes = Some(vec!["Persistent".into()]);
        }
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        if let Some(p) = &self.spec.fs_group_policy {
            errs.one_of(
                &path.child("fsGroupPolicy"),
                p,
                &["File", "None", "ReadWriteOnceWithFSType"],
            );
        }
        for (i, m) in self
            .spec
            .volume_lifecycle_modes
            .iter()
            .flatten()
            .enumerate()
        {
            errs.one_of(
                &path.child("volumeLifecycleModes").index(i),
                m,
                &["Ephemeral", "Persistent"],
            );
        }
        if let Some(old) = old {
            errs.immutable(
                &path.child("attachRequired"),
                &self.spec.attach_required,
                &old.spec.attach_required,
            );
        }
    }
}

impl Kind for CSINode {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec").child("drivers");
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in self.spec.drivers.iter().enumerate() {
            let at = path.index(i);
            if d.name.is_empty() {
                errs.required(&at.child("name"), "");
            } else if !seen.insert(d.name.as_str()) {
                errs.duplicate(&at.child("name"), &d.name);
            }
            if d.node_id.is_empty() {
                errs.required(&at.child("nodeID"), "");
            }
            if let Some(n) = d.allocatable.as_ref().and_then(|a| a.count) {
                errs.non_negative(&at.child("allocatable").child("count"), Some(i64::from(n)));
            }
        }
    }
}

impl Kind for VolumeAttachment {
    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        if self.spec.attacher.is_empty() {
            errs.required(&path.child("attacher"), "");
        }
        if self.spec.node_name.is_empty() {
            errs.required(&path.child("nodeName"), "");
        }
        let source = &self.spec.source;
        match (&source.persistent_volume_name, &source.inline_volume_spec) {
            (None, None) => errs.required(
                &path.child("source"),
                "must specify exactly one of inlineVolumeSpec and persistentVolumeName",
            ),
            (Some(_), Some(_)) => errs.forbidden(
                &path.child("source"),
                "must specify exactly one of inlineVolumeSpec and persistentVolumeName",
            ),
            _ => {}
        }
        if let Some(old) = old
            && self.spec != old.spec
        {
            errs.invalid(&path, "", "field is immutable");
        }
    }
}

impl Kind for CSIStorageCapacity {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("storageClassName");
        if self.storage_class_name.is_empty() {
            errs.required(&path, "");
        } else {
            for e in names::dns1123_subdomain(&self.storage_class_name) {
                errs.invalid(&path, &self.storage_class_name, e);
            }
        }
        for (field, q) in [
            ("capacity", &self.capacity),
            ("maximumVolumeSize", &self.maximum_volume_size),
        ] {
            if let Some(q) = q
                && Quantity::parse(&q.0).is_ok_and(|q| q.milli() < 0)
            {
                errs.invalid(
                    &Path::root(field),
                    &q.0,
                    "must be greater than or equal to 0",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors<K: Kind>(v: serde_json::Value, old: Option<serde_json::Value>) -> Vec<String> {
        let mut obj: K = serde_json::from_value(v).unwrap();
        obj.default();
        let old: Option<K> = old.map(|o| {
            let mut o: K = serde_json::from_value(o).unwrap();
            o.default();
            o
        });
        let mut errs = FieldErrors::default();
        obj.validate(old.as_ref(), &mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    fn claim(size: &str, modes: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": "c"}, "spec": {"accessModes": modes,
            "resources": {"requests": {"storage": size}}}})
    }

    #[test]
    fn claims_are_checked_as_kubernetes_checks_them() {
        let ok = errors::<PersistentVolumeClaim>(claim("1Gi", json!(["ReadWriteOnce"])), None);
        assert!(ok.is_empty(), "{ok:?}");
        for (c, want) in [
            (
                claim("-1Gi", json!(["ReadWriteOnce"])),
                r#"spec.resources[storage]: Invalid value: "-1Gi": must be greater than zero"#,
            ),
            (
                claim("1Gi", json!([])),
                "spec.accessModes: Required value: at least 1 access mode is required",
            ),
            (
                claim("1Gi", json!(["ReadWriteSometimes"])),
                r#"spec.accessModes: Unsupported value: "ReadWriteSometimes""#,
            ),
            (
                claim("1Gi", json!(["ReadWriteOncePod", "ReadOnlyMany"])),
                "spec.accessModes: Forbidden: may not use ReadWriteOncePod with other access modes",
            ),
        ] {
            let got = errors::<PersistentVolumeClaim>(c, None);
            assert!(
                got.iter().any(|e| e.starts_with(want)),
                "{got:?} lacks {want}"
            );
        }
    }

    #[test]
    fn a_bound_claim_grows_but_never_shrinks() {
        let mut old = claim("2Gi", json!(["ReadWriteOnce"]));
        old["spec"]["volumeName"] = json!("pv1");
        old["status"] = json!({"phase": "Bound"});
        let mut bigger = old.clone();
        bigger["spec"]["resources"]["requests"]["storage"] = json!("3Gi");
        assert!(errors::<PersistentVolumeClaim>(bigger, Some(old.clone())).is_empty());
        let mut smaller = old.clone();
        smaller["spec"]["resources"]["requests"]["storage"] = json!("1Gi");
        assert_eq!(
            errors::<PersistentVolumeClaim>(smaller, Some(old.clone())),
            [
                "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
            ]
        );
        // Other fields stay as they were.
        let mut modes = old.clone();
        modes["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        let got = errors::<PersistentVolumeClaim>(modes, Some(old));
        assert!(
            got[0].starts_with("spec: Forbidden: spec is immutable"),
            "{got:?}"
        );
        // An unbound claim's size does not change; a class may be set if it had none.
        let pending = claim("2Gi", json!(["ReadWriteOnce"]));
        let mut classed = pending.clone();
        classed["spec"]["storageClassName"] = json!("local-path");
        assert!(errors::<PersistentVolumeClaim>(classed.clone(), Some(pending.clone())).is_empty());
        let mut reclassed = classed.clone();
        reclassed["spec"]["storageClassName"] = json!("other");
        assert!(!errors::<PersistentVolumeClaim>(reclassed, Some(classed)).is_empty());
        let mut grown = pending.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("3Gi");
        assert!(!errors::<PersistentVolumeClaim>(grown, Some(pending)).is_empty());
    }

    #[test]
    fn volumes_name_one_source_and_local_ones_a_node() {
        let pv = |extra: serde_json::Value| {
            let mut v = json!({"metadata": {"name": "v"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "1Gi"}}});
            for (k, x) in extra.as_object().unwrap() {
                v["spec"][k] = x.clone();
            }
            v
        };
        assert!(
            errors::<PersistentVolume>(pv(json!({"hostPath": {"path": "/srv/a"}})), None)
                .is_empty()
        );
        assert_eq!(
            errors::<PersistentVolume>(pv(json!({})), None),
            ["spec: Required value: must specify a volume type"]
        );
        let two = errors::<PersistentVolume>(
            pv(json!({"hostPath": {"path": "/a"}, "nfs": {"server": "s", "path": "/"}})),
            None,
        );
        assert_eq!(
            two,
            ["spec.nfs: Forbidden: may not specify more than 1 volume type"]
        );
        assert_eq!(
            errors::<PersistentVolume>(pv(json!({"local": {"path": "/srv/a"}})), None),
            ["spec.nodeAffinity: Required value: Local volume requires node affinity"]
        );
        let dots =
            errors::<PersistentVolume>(pv(json!({"hostPath": {"path": "/srv/../etc"}})), None);
        assert!(dots[0].contains("must not contain '..'"), "{dots:?}");
        // The source is fixed once made.
        let old = pv(json!({"hostPath": {"path": "/srv/a"}}));
        let moved =
            errors::<PersistentVolume>(pv(json!({"hostPath": {"path": "/srv/b"}})), Some(old));
        assert!(moved[0].contains("immutable after creation"), "{moved:?}");
    }

    #[test]
    fn storage_classes_default_and_keep_what_they_provision_with() {
        let mut sc: StorageClass = serde_json::from_value(
            json!({"metadata": {"name": "fast"}, "provisioner": "example.com/fast"}),
        )
        .unwrap();
        sc.default();
        assert_eq!(sc.reclaim_policy.as_deref(), Some("Delete"));
        assert_eq!(sc.volume_binding_mode.as_deref(), Some("Immediate"));
        let old = json!({"metadata": {"name": "fast"}, "provisioner": "example.com/fast"});
        let changed = errors::<StorageClass>(
            json!({"metadata": {"name": "fast"}, "provisioner": "example.com/slow",
                   "volumeBindingMode": "WaitForFirstConsumer"}),
            Some(old),
        );
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert!(!errors::<StorageClass>(json!({"metadata": {"name": "x"}}), None).is_empty());
    }
}
