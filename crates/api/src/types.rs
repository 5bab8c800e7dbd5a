//! The `Wukong` custom resource (`vm.novasphere.dev/v1alpha1`): spec, status and their parts.
//!
//! Every spec field is optional so that a partial document can be applied as a JSON merge patch
//! onto the stored desired spec (see [`crate::merge`]); what a field means when it is absent at
//! creation is [`crate::defaults`]' business. The CEL rules attached with `schemars(extend)` are
//! the API server's copy of the rules in [`crate::validate`], which stays the one place that
//! gives the detailed errors.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::Quantity;

/// API group of the resource.
pub const GROUP: &str = "vm.novasphere.dev";
/// API version of the resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in documents.
pub const API_VERSION: &str = "vm.novasphere.dev/v1alpha1";
/// Kind of the resource.
pub const KIND: &str = "Wukong";

/// Pattern of disk and network names: a DNS label.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Disk names become the virtio serial, which the guest cuts at 20 bytes.
pub const MAX_DISK_NAME: usize = 20;
/// Network names are DNS labels.
pub const MAX_NETWORK_NAME: usize = 63;
/// At most this many disks per VM (bounds the CRD's list rules, and the PCIe ports).
pub const MAX_DISKS: usize = 16;
/// At most this many network interfaces per VM.
pub const MAX_NETWORKS: usize = 8;
/// The smallest disk an xfs filesystem is made on (mkfs.xfs refuses under 300 MB).
pub const MIN_XFS_DISK: u64 = 300 << 20;

/// Desired state of one VM: what it should have, not what it has.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "vm.novasphere.dev",
    version = "v1alpha1",
    kind = "Wukong",
    namespaced,
    shortname = "wk",
    status = "WukongStatus",
    printcolumn = r#"{"name":"CPU","type":"integer","jsonPath":".spec.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".spec.memory"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Restart-Pending","type":"boolean","jsonPath":".status.restartPending"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.cpu) || !has(self.maxCpu) || self.cpu <= self.maxCpu",
     "message": "cpu must not exceed maxCpu", "fieldPath": ".cpu"},
    {"rule": "!has(self.memory) || !has(self.maxMemory) || quantity(self.memory).compareTo(quantity(self.maxMemory)) <= 0",
     "message": "memory must not exceed maxMemory", "fieldPath": ".memory"},
    {"rule": "!has(self.restartPolicy) || self.restartPolicy != 'Window' || has(self.maintenanceWindow)",
     "message": "restartPolicy Window needs maintenanceWindow", "fieldPath": ".maintenanceWindow"}
]))]
pub struct WukongSpec {
    /// Number of vCPUs the guest should have online (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub cpu: Option<u32>,

    /// Guest memory, a multiple of 2Mi (e.g. `512Mi`, `8Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "quantity(self).isInteger() && quantity(self).asInteger() % 2097152 == 0 && quantity(self).asInteger() > 0",
         "message": "must be a positive multiple of 2Mi"}
    ]))]
    pub memory: Option<Quantity>,

    /// Live headroom for vCPUs: the most the VM can have without a restart. Unset: chosen at
    /// creation (4x cpu, capped by the host) and pinned in `status.maxCpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_cpu: Option<u32>,

    /// Live headroom for memory. Unset: chosen at creation (4x memory, capped by the host) and
    /// pinned in `status.maxMemory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "quantity(self).isInteger() && quantity(self).asInteger() % 2097152 == 0 && quantity(self).asInteger() > 0",
         "message": "must be a positive multiple of 2Mi"}
    ]))]
    pub max_memory: Option<Quantity>,

    /// Disks, keyed by name (at most 16). A given list is the whole list: a disk left out is
    /// detached (its image is kept). The boot disk can never be detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"],
        "x-kubernetes-validations" = [
            {"rule": "self.filter(d, has(d.boot) && d.boot).size() <= 1",
             "message": "at most one disk can be the boot disk"},
            {"rule": "oldSelf.all(o, self.all(d, d.name != o.name || quantity(d.size).compareTo(quantity(o.size)) >= 0))",
             "message": "a disk's size can never decrease"}
        ]
    ))]
    pub disks: Option<Vec<DiskSpec>>,

    /// Network interfaces, keyed by name (at most 8). `networks: []` removes every NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 8),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub networks: Option<Vec<NetworkSpec>>,

    /// Whether the VM should run (as KubeVirt's runStrategy). Default `Always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,

    /// What to do with changes that cannot be made live. Default `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,

    /// When restarts may happen under `restartPolicy: Window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,

    /// How the VM boots (pinned at creation; a change takes a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootSpec>,

    /// cloud-init NoCloud data (a change takes effect at the next restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInitSpec>,

    /// Automatic scaling from metrics. The autoscaler owns only the fields named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<crate::autoscaling::AutoscalingSpec>,
}

/// One disk of the VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskSpec {
    /// DNS label of at most 20 characters; also the disk's serial in the guest.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 20)
    )]
    pub name: String,

    /// Size of the disk (a multiple of 512 bytes). It can grow, never shrink.
    pub size: Quantity,

    /// Whether this is the boot disk. Without any flag the first disk at creation is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<bool>,

    /// Whether the disk can be attached and detached while the VM runs. Default true for every
    /// disk but the boot disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpluggable: Option<bool>,

    /// Bus of the disk. Default `virtio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,

    /// A filesystem to create on the disk while it is blank, and where to mount it in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemSpec>,

    /// Where the disk's content comes from when it is created (blank when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DiskSource>,

    /// Take a snapshot of the disk before each grow (local: an internal qcow2 snapshot named
    /// `wukong-pre-grow-<time>`; clusters: a VolumeSnapshot). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_before_grow: Option<bool>,

    /// Clusters only: the StorageClass of the disk's PVC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,

    /// Clusters only: the PVC's volume mode. `Block` is recommended: a `Filesystem` PVC shows the
    /// guest a little less than its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<VolumeMode>,
}

/// The content a disk starts from (exactly one source). It is imported into the disk when the
/// disk is created, and the disk can grow from there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.image), has(self.http), has(self.registry), has(self.pvc)].filter(x, x).size() == 1",
     "message": "exactly one disk source (image, http, registry, pvc) must be set"}
]))]
pub struct DiskSource {
    /// Local backend: an absolute path to a qcow2 or raw image on the host, under one of the
    /// daemon's trusted image roots. It is copied when the disk is created and never modified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/.*$"), length(min = 2, max = 4096))]
    pub image: Option<String>,

    /// KubeVirt backend: an image imported by CDI from an http(s) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<UrlSource>,

    /// KubeVirt backend: a container image imported by CDI (`docker://registry/repo:tag`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<UrlSource>,

    /// KubeVirt backend: a clone of a PVC in the Wukong's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<LocalRef>,
}

impl DiskSource {
    /// A host image.
    pub fn image(path: &str) -> Self {
        DiskSource {
            image: Some(path.to_string()),
            ..DiskSource::default()
        }
    }

    /// What the source is, in words (`image /x`, `http https://…`, …), or `None` when not
    /// exactly one source is set.
    pub fn describe(&self) -> Option<String> {
        let all = [
            self.image.as_ref().map(|p| format!("image {p}")),
            self.http.as_ref().map(|u| format!("http {}", u.url)),
            self.registry
                .as_ref()
                .map(|u| format!("registry {}", u.url)),
            self.pvc.as_ref().map(|p| format!("pvc {}", p.name)),
        ];
        let mut set = all.into_iter().flatten();
        match (set.next(), set.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }
}

/// A URL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlSource {
    /// The URL.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
}

/// An object of the Wukong's own namespace, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalRef {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// How the VM boots. Pinned at creation: changing it is a restart-only change. Unset: the
/// backend's default (the local daemon's `serve` flags; BIOS on KubeVirt).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.firmware) && has(self.kernel))",
     "message": "firmware and kernel exclude each other"}
]))]
pub struct BootSpec {
    /// Boot the boot disk through the firmware: `bios` (SeaBIOS) or `uefi` (OVMF, secure boot
    /// off; the image's loader must sit at `/EFI/BOOT/BOOTX64.EFI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,

    /// Local backend: boot this kernel directly (files under the daemon's trusted roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelBoot>,
}

impl BootSpec {
    /// In words: `uefi`, `bios`, `kernel /path`, or `the default`.
    pub fn describe(&self) -> String {
        match (&self.firmware, &self.kernel) {
            (Some(f), _) => format!("{f} firmware"),
            (None, Some(k)) => format!("kernel {}", k.path),
            (None, None) => "the default".into(),
        }
    }
}

/// Firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS.
    Bios,
    /// UEFI, secure boot off.
    Uefi,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        })
    }
}

/// A kernel booted directly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBoot {
    /// Absolute path of the kernel (vmlinux or bzImage) on the host.
    #[schemars(regex(pattern = r"^/.*$"), length(min = 2, max = 4096))]
    pub path: String,

    /// Absolute path of its initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/.*$"), length(min = 2, max = 4096))]
    pub initrd: Option<String>,

    /// Its command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub cmdline: Option<String>,
}

/// cloud-init's NoCloud data for the guest: inline, or (KubeVirt) from Secrets of the Wukong's
/// namespace. The instance-id is the VM's uid for its whole life; a change is written for the
/// next boot and takes effect at the next restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.userData) && has(self.secretRef))",
     "message": "userData and secretRef exclude each other"},
    {"rule": "!(has(self.networkData) && has(self.networkDataSecretRef))",
     "message": "networkData and networkDataSecretRef exclude each other"}
]))]
pub struct CloudInitSpec {
    /// The user-data (`#cloud-config …`, a script, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub user_data: Option<String>,

    /// The network configuration (cloud-init's `network-config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub network_data: Option<String>,

    /// KubeVirt: a Secret whose `userdata` (or `userData`) key holds the user-data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,

    /// KubeVirt: a Secret whose `networkdata` (or `networkData`) key holds the network data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalRef>,
}

/// Disk bus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk: one PCIe port each, hot-pluggable.
    #[default]
    Virtio,
    /// virtio-scsi.
    Scsi,
    /// SATA: never hot-pluggable.
    Sata,
}

/// A filesystem Wukong creates on a blank disk and mounts in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.mountPath.matches('(^|/)[.][.]?(/|$)')",
     "message": "mountPath must not have a '.' or '..' component", "fieldPath": ".mountPath"},
    {"rule": "!self.mountPath.matches('^/+(proc|sys|dev)(/|$)')",
     "message": "mountPath must not be at or under /proc, /sys or /dev, which the guest's kernel owns",
     "fieldPath": ".mountPath"}
]))]
pub struct FilesystemSpec {
    /// Filesystem type.
    #[serde(rename = "type")]
    pub fs_type: FsType,
    /// Absolute mount point in the guest.
    #[schemars(regex(pattern = r"^/[^\x00]*$"), length(max = 255))]
    pub mount_path: String,
}

/// Filesystem types Wukong can create and grow online.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// ext4: grown online with resize2fs.
    Ext4,
    /// xfs: grown online with xfs_growfs where the guest has it.
    Xfs,
}

/// Kubernetes PVC volume mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VolumeMode {
    /// A raw block device: the guest sees the full size.
    Block,
    /// A file on a filesystem volume: the guest sees the size less the filesystem overhead.
    Filesystem,
}

/// One network interface. Exactly one source is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.user), has(self.tap), has(self.bridge), has(self.pod), has(self.multus)].filter(x, x).size() == 1",
     "message": "exactly one network source (user, tap, bridge, pod, multus) must be set"},
    {"rule": "!has(self.mac) || self.mac.matches('^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')",
     "message": "mac must be six lowercase hex pairs separated by colons", "fieldPath": ".mac"}
]))]
pub struct NetworkSpec {
    /// DNS label, unique among the VM's networks.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,

    /// Local: QEMU user-mode networking (NAT, no root needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserNetwork>,
    /// Local: an existing tap device on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<TapNetwork>,
    /// Local: a tap device attached to an existing host bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeNetwork>,
    /// Cluster: the pod network (masquerade binding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodNetwork>,
    /// Cluster: a Multus secondary network (bridge binding, so it can be unplugged live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multus: Option<MultusNetwork>,

    /// MAC address, six lowercase hex pairs. Unset: a stable one derived from VM and NIC name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 17))]
    pub mac: Option<String>,

    /// NIC model. Default `virtio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<NicModel>,
}

/// QEMU user-mode networking.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserNetwork {}

/// An existing tap device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TapNetwork {
    /// Host tap device name.
    #[schemars(length(min = 1, max = 15))]
    pub name: String,
}

/// A host bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BridgeNetwork {
    /// Host bridge name.
    #[schemars(length(min = 1, max = 15))]
    pub name: String,
}

/// The Kubernetes pod network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodNetwork {}

/// A Multus network attachment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MultusNetwork {
    /// `NetworkAttachmentDefinition` name, optionally `namespace/name`.
    #[schemars(length(min = 1))]
    pub network_name: String,
}

/// NIC models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    /// virtio-net.
    #[default]
    Virtio,
    /// Intel e1000e.
    E1000e,
}

/// Where a network comes from, as one value (the spec spells it as one of five optional fields).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NetworkSource {
    /// QEMU user-mode networking.
    User,
    /// A host tap device.
    Tap(String),
    /// A host bridge.
    Bridge(String),
    /// The pod network.
    Pod,
    /// A Multus network.
    Multus(String),
}

impl NetworkSource {
    /// Backends that can use this source.
    pub fn backend(&self) -> BackendKind {
        match self {
            NetworkSource::User | NetworkSource::Tap(_) | NetworkSource::Bridge(_) => {
                BackendKind::Local
            }
            NetworkSource::Pod | NetworkSource::Multus(_) => BackendKind::Kubevirt,
        }
    }
}

impl std::fmt::Display for NetworkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkSource::User => f.write_str("user"),
            NetworkSource::Tap(n) => write!(f, "tap {n}"),
            NetworkSource::Bridge(n) => write!(f, "bridge {n}"),
            NetworkSource::Pod => f.write_str("pod"),
            NetworkSource::Multus(n) => write!(f, "multus {n}"),
        }
    }
}

impl NetworkSpec {
    /// The one source that is set, or `None` when zero or several are.
    pub fn source(&self) -> Option<NetworkSource> {
        let all = [
            self.user.as_ref().map(|_| NetworkSource::User),
            self.tap
                .as_ref()
                .map(|t| NetworkSource::Tap(t.name.clone())),
            self.bridge
                .as_ref()
                .map(|b| NetworkSource::Bridge(b.name.clone())),
            self.pod.as_ref().map(|_| NetworkSource::Pod),
            self.multus
                .as_ref()
                .map(|m| NetworkSource::Multus(m.network_name.clone())),
        ];
        let mut set = all.into_iter().flatten();
        let first = set.next()?;
        set.next().is_none().then_some(first)
    }

    /// A spec for `name` on `source`.
    pub fn with_source(name: &str, source: &NetworkSource) -> Self {
        let mut spec = NetworkSpec {
            name: name.to_string(),
            ..Default::default()
        };
        match source {
            NetworkSource::User => spec.user = Some(UserNetwork {}),
            NetworkSource::Tap(n) => spec.tap = Some(TapNetwork { name: n.clone() }),
            NetworkSource::Bridge(n) => spec.bridge = Some(BridgeNetwork { name: n.clone() }),
            NetworkSource::Pod => spec.pod = Some(PodNetwork {}),
            NetworkSource::Multus(n) => {
                spec.multus = Some(MultusNetwork {
                    network_name: n.clone(),
                })
            }
        }
        spec
    }
}

/// The two backends behind the engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// QEMU on this host.
    #[default]
    Local,
    /// KubeVirt on a Kubernetes cluster.
    Kubevirt,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Local => "local",
            BackendKind::Kubevirt => "kubevirt",
        })
    }
}

/// Whether the VM should run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RunStrategy {
    /// Always running: started again if it stops or dies.
    #[default]
    Always,
    /// Started again only if it fails (not after a clean guest shutdown).
    RerunOnFailure,
    /// Started and stopped only by explicit `start` / `stop`.
    Manual,
    /// Stopped.
    Halted,
    /// Runs once; not started again.
    Once,
}

/// What happens to changes that cannot be applied live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RestartPolicy {
    /// They wait, listed in `RestartRequired`, until `wukong restart` (or a stop/start).
    #[default]
    Never,
    /// One restart right after the live steps.
    Automatic,
    /// One restart inside the next `maintenanceWindow`.
    Window,
}

/// A weekly window in UTC: on each listed day, from `start` for `duration`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Days the window opens on (UTC). Empty: every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM` in UTC.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// How long the window stays open: `90m`, `3h`, `1h30m` (at most 24h).
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?$"), length(min = 2))]
    pub duration: String,
}

/// Days of the week.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Observed state of one VM, written by the controller only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WukongStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The vCPU ceiling pinned at creation (or the last restart that raised it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu: Option<u32>,
    /// The memory ceiling pinned at creation (or the last restart that raised it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<Quantity>,
    /// Memory the VM booted with: the floor of a live shrink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_memory: Option<Quantity>,
    /// vCPUs the VM booted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_cpu: Option<u32>,
    /// The boot disk, fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_disk: Option<String>,
    /// What the guest itself reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestStatus>,
    /// True while changes wait for a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_pending: Option<bool>,
    /// Every change waiting for a restart, with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_changes: Vec<PendingChange>,
    /// `Ready`, `Resizing`, `RestartRequired`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The operation in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationStatus>,
    /// The last finished operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_operation: Option<OperationStatus>,
    /// What the autoscaler measured, recommends and set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<crate::autoscaling::AutoscalingStatus>,
}

/// Lifecycle phase of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted, not yet created.
    Pending,
    /// Booting, the guest agent not answering yet.
    Starting,
    /// Running and reachable.
    Running,
    /// Not running.
    Stopped,
    /// Could not be created or started.
    Failed,
}

/// The VM as its guest sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestStatus {
    /// vCPUs online in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_online: Option<u32>,
    /// Memory the guest has (MemTotal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// The guest's boot id: unchanged across live changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Disks as the guest sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<GuestDisk>,
    /// NICs as the guest sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<GuestNic>,
}

/// A disk as the guest sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestDisk {
    /// Disk name (= serial).
    pub name: String,
    /// Block device size.
    pub size: Quantity,
    /// Guest device, e.g. `/dev/vdb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The filesystem on it, if mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<GuestFilesystem>,
    /// Why what is on the disk is not grown with it (a partition that is not last, two
    /// logical volumes to choose from, a filesystem Wukong cannot grow): the disk grows, that
    /// is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_grown: Option<String>,
}

/// A mounted filesystem as the guest sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestFilesystem {
    /// Filesystem type.
    #[serde(rename = "type")]
    pub fs_type: String,
    /// Mount point.
    pub mount_path: String,
    /// Total size.
    pub size: Quantity,
    /// Used bytes, when the guest reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<Quantity>,
}

/// A NIC as the guest sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestNic {
    /// Network name from the spec.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Interface name in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
}

/// A change waiting for a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingChange {
    /// Resource, e.g. `cpu`, `memory`, `disk/data`, `network/lan`.
    pub resource: String,
    /// The change, e.g. `2 -> 8`.
    pub change: String,
    /// Why it cannot be live.
    pub reason: String,
}

/// An operation: the steps of one plan, carried out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// Operation id.
    pub id: String,
    /// `Running`, `Succeeded`, `Failed`, or `Interrupted` (the daemon or operator that ran it
    /// stopped first; its successor observed the VM and planned again).
    pub phase: String,
    /// RFC 3339 start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339 end time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
}

/// One step of an operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// What the step does, in words.
    pub description: String,
    /// `live`, `restart` or `offline`.
    pub mode: String,
    /// `Pending`, `Running`, `Done`, `Failed`, `Skipped`.
    pub state: String,
    /// Progress in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// Time from start of the step to its verification in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Failure or detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
