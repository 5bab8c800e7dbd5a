//! The one place that decides whether a spec is valid, used by the CLI, the local daemon and
//! the operator alike. Every error names the field and the reason.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::quantity::{DISK_ALIGNMENT, MEMORY_ALIGNMENT, Quantity};
use crate::types::{
    BackendKind, MAX_DISK_NAME, MAX_DISKS, MAX_NETWORK_NAME, MAX_NETWORKS, MIN_XFS_DISK,
    MaintenanceWindow, RestartPolicy, WukongSpec,
};

/// Whether an error means "this input is malformed" or "this change is not allowed".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorKind {
    /// The input is malformed or inconsistent in itself (CLI exit code 1).
    Invalid,
    /// The input is well formed but the change it asks for is refused, e.g. a disk shrink
    /// (CLI exit code 2).
    NotAllowed,
}

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.disks[1].size`.
    pub field: String,
    /// Why it is refused.
    pub reason: String,
    /// Malformed input or refused change.
    pub kind: ErrorKind,
}

impl FieldError {
    /// A malformed-input error.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
            kind: ErrorKind::Invalid,
        }
    }
    /// A refused-change error.
    pub fn not_allowed(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
            kind: ErrorKind::NotAllowed,
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// All problems found in one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// `NotAllowed` when every error is a refused change, otherwise `Invalid`.
    pub fn kind(&self) -> ErrorKind {
        if !self.0.is_empty() && self.0.iter().all(|e| e.kind == ErrorKind::NotAllowed) {
            ErrorKind::NotAllowed
        } else {
            ErrorKind::Invalid
        }
    }

    /// `Ok(())` when empty.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Whether `name` is a DNS label of at most `max` characters.
pub fn check_dns_label(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > max {
        return Err(format!(
            "'{name}' is {} characters long, at most {max} are allowed",
            name.len()
        ));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "'{name}' is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// Where the guest's kernel keeps its own filesystems: nothing is mounted over them.
const PSEUDO_FILESYSTEMS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// A mount point in the guest: absolute, without `.` or `..` components or NUL, and not
/// at or under /proc, /sys or /dev.
pub fn check_mount_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(format!("'{}' is not an absolute path", path.escape_debug()));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("'{path}' has a '.' or '..' component"));
    }
    // The first component, however many slashes come before or after it (`//proc/` is /proc).
    let first = path.split('/').find(|c| !c.is_empty()).unwrap_or_default();
    if let Some(p) = PSEUDO_FILESYSTEMS.iter().find(|p| p[1..] == *first) {
        return Err(format!(
            "'{path}' is under {p}, which the guest's kernel owns"
        ));
    }
    Ok(())
}

/// Bytes of `q`, recording an error at `field` when it is not a whole byte count aligned to
/// `alignment` (described as `unit`).
fn sized(
    errors: &mut Vec<FieldError>,
    field: &str,
    q: &Quantity,
    alignment: u64,
    unit: &str,
) -> Option<u64> {
    match q.bytes() {
        Err(e) => {
            errors.push(FieldError::invalid(field, e.to_string()));
            None
        }
        Ok(0) => {
            errors.push(FieldError::invalid(field, "must be greater than zero"));
            None
        }
        Ok(b) if b % alignment != 0 => {
            errors.push(FieldError::invalid(
                field,
                format!("'{q}' is not a multiple of {unit}"),
            ));
            None
        }
        Ok(b) => Some(b),
    }
}

/// Checks one spec on its own: syntax of every value and the rules between fields.
/// Partial specs are fine: absent fields are not checked.
pub fn validate_spec(spec: &WukongSpec) -> Result<(), FieldErrors> {
    let mut errors = Vec::new();
    if spec.cpu == Some(0) {
        errors.push(FieldError::invalid("spec.cpu", "must be at least 1"));
    }
    if spec.max_cpu == Some(0) {
        errors.push(FieldError::invalid("spec.maxCpu", "must be at least 1"));
    }
    if let (Some(cpu), Some(max)) = (spec.cpu, spec.max_cpu)
        && cpu > max
    {
        errors.push(FieldError::invalid(
            "spec.cpu",
            format!("{cpu} exceeds maxCpu {max}"),
        ));
    }
    let memory = spec
        .memory
        .as_ref()
        .and_then(|q| sized(&mut errors, "spec.memory", q, MEMORY_ALIGNMENT, "2Mi"));
    let max_memory = spec
        .max_memory
        .as_ref()
        .and_then(|q| sized(&mut errors, "spec.maxMemory", q, MEMORY_ALIGNMENT, "2Mi"));
    if let (Some(m), Some(max)) = (memory, max_memory)
        && m > max
    {
        errors.push(FieldError::invalid(
            "spec.memory",
            format!(
                "{} exceeds maxMemory {}",
                spec.memory.as_ref().map_or("", |q| q.as_str()),
                spec.max_memory.as_ref().map_or("", |q| q.as_str())
            ),
        ));
    }

    if let Some(disks) = &spec.disks {
        if disks.len() > MAX_DISKS {
            errors.push(FieldError::invalid(
                "spec.disks",
                format!("at most {MAX_DISKS} disks, found {}", disks.len()),
            ));
        }
        let mut names = BTreeSet::new();
        let mut boots = Vec::new();
        for (i, d) in disks.iter().enumerate() {
            let at = format!("spec.disks[{i}]");
            if let Err(r) = check_dns_label(&d.name, MAX_DISK_NAME) {
                errors.push(FieldError::invalid(format!("{at}.name"), r));
            }
            if !names.insert(d.name.as_str()) {
                errors.push(FieldError::invalid(
                    format!("{at}.name"),
                    format!("duplicate disk name '{}'", d.name),
                ));
            }
            sized(
                &mut errors,
                &format!("{at}.size"),
                &d.size,
                DISK_ALIGNMENT,
                "512 bytes",
            );
            if d.boot == Some(true) {
                boots.push(d.name.clone());
                if d.hotpluggable == Some(true) {
                    errors.push(FieldError::invalid(
                        format!("{at}.hotpluggable"),
                        "the boot disk cannot be hot-pluggable",
                    ));
                }
            }
            if d.bus == Some(crate::types::DiskBus::Sata) && d.hotpluggable == Some(true) {
                errors.push(FieldError::invalid(
                    format!("{at}.hotpluggable"),
                    "a sata disk cannot be hot-pluggable",
                ));
            }
            if let Some(fs) = &d.filesystem
                && fs.fs_type == crate::types::FsType::Xfs
                && d.size.bytes().is_ok_and(|b| b < MIN_XFS_DISK)
            {
                errors.push(FieldError::invalid(
                    format!("{at}.size"),
                    format!(
                        "{} is too small for xfs: mkfs.xfs refuses filesystems under 300 MB (give at least 300Mi)",
                        d.size.as_str()
                    ),
                ));
            }
            if let Some(fs) = &d.filesystem
                && let Err(reason) = check_mount_path(&fs.mount_path)
            {
                errors.push(FieldError::invalid(
                    format!("{at}.filesystem.mountPath"),
                    reason,
                ));
            }
        }
        if boots.len() > 1 {
            errors.push(FieldError::invalid(
                "spec.disks",
                format!(
                    "at most one disk can be the boot disk, found {}",
                    boots.join(", ")
                ),
            ));
        }
    }

    crate::sources::check(spec, &mut errors);

    if let Some(nets) = &spec.networks {
        if nets.len() > MAX_NETWORKS {
            errors.push(FieldError::invalid(
                "spec.networks",
                format!("at most {MAX_NETWORKS} networks, found {}", nets.len()),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, n) in nets.iter().enumerate() {
            let at = format!("spec.networks[{i}]");
            if let Err(r) = check_dns_label(&n.name, MAX_NETWORK_NAME) {
                errors.push(FieldError::invalid(format!("{at}.name"), r));
            }
            if !names.insert(n.name.as_str()) {
                errors.push(FieldError::invalid(
                    format!("{at}.name"),
                    format!("duplicate network name '{}'", n.name),
                ));
            }
            if n.source().is_none() {
                errors.push(FieldError::invalid(
                    at.clone(),
                    "exactly one network source (user, tap, bridge, pod, multus) must be set",
                ));
            }
            if let Some(mac) = &n.mac
                && !is_mac(mac)
            {
                errors.push(FieldError::invalid(
                    format!("{at}.mac"),
                    format!("'{mac}' is not a MAC address (six lowercase hex pairs, e.g. 52:54:00:12:34:56)"),
                ));
            }
        }
    }

    match (spec.restart_policy, &spec.maintenance_window) {
        (Some(RestartPolicy::Window), None) => errors.push(FieldError::invalid(
            "spec.maintenanceWindow",
            "restartPolicy Window needs a maintenanceWindow",
        )),
        (_, Some(w)) => {
            if let Err(r) = parse_window(w) {
                errors.push(FieldError::invalid("spec.maintenanceWindow", r));
            }
        }
        _ => {}
    }

    if let Some(a) = &spec.autoscaling {
        validate_autoscaling(spec, a, &mut errors);
    }
    FieldErrors(errors).into_result()
}

fn validate_autoscaling(
    spec: &WukongSpec,
    a: &crate::autoscaling::AutoscalingSpec,
    errors: &mut Vec<FieldError>,
) {
    use crate::autoscaling::{INTERVAL_RANGE, UP_WINDOW_RANGE, WINDOW_RANGE};
    let mut within = |field: &str, v: Option<u32>, (lo, hi): (u32, u32)| {
        if let Some(v) = v
            && !(lo..=hi).contains(&v)
        {
            errors.push(FieldError::invalid(
                format!("spec.autoscaling.{field}"),
                format!("{v} is outside {lo}–{hi} seconds"),
            ));
        }
    };
    within("intervalSeconds", a.interval_seconds, INTERVAL_RANGE);
    within(
        "stabilizationSeconds",
        a.stabilization_seconds,
        WINDOW_RANGE,
    );
    within(
        "scaleUpStabilizationSeconds",
        a.scale_up_stabilization_seconds,
        UP_WINDOW_RANGE,
    );
    within("cooldownSeconds", a.cooldown_seconds, WINDOW_RANGE);
    let percent = |errors: &mut Vec<FieldError>, field: &str, v: Option<u16>, lo: u16, hi: u16| {
        if let Some(v) = v
            && !(lo..=hi).contains(&v)
        {
            errors.push(FieldError::invalid(
                field,
                format!("{v} is outside {lo}–{hi} percent"),
            ));
        }
    };
    if let Some(c) = &a.cpu {
        if c.min == 0 || c.min > c.max {
            errors.push(FieldError::invalid(
                "spec.autoscaling.cpu",
                format!(
                    "min {} must be at least 1 and not exceed max {}",
                    c.min, c.max
                ),
            ));
        }
        percent(
            errors,
            "spec.autoscaling.cpu.targetUtilization",
            c.target_utilization.map(u16::from),
            1,
            100,
        );
        if let Some(max) = spec.max_cpu
            && c.max > max
        {
            errors.push(FieldError::invalid(
                "spec.autoscaling.cpu.max",
                format!("{} exceeds maxCpu {max}", c.max),
            ));
        }
    }
    if let Some(m) = &a.memory {
        let min = sized(
            errors,
            "spec.autoscaling.memory.min",
            &m.min,
            MEMORY_ALIGNMENT,
            "2Mi",
        );
        let max = sized(
            errors,
            "spec.autoscaling.memory.max",
            &m.max,
            MEMORY_ALIGNMENT,
            "2Mi",
        );
        percent(
            errors,
            "spec.autoscaling.memory.targetUtilization",
            m.target_utilization.map(u16::from),
            1,
            100,
        );
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            errors.push(FieldError::invalid(
                "spec.autoscaling.memory",
                "min must not exceed max",
            ));
        }
        if let (Some(max), Some(ceiling)) =
            (max, spec.max_memory.as_ref().and_then(|q| q.bytes().ok()))
            && max > ceiling
        {
            errors.push(FieldError::invalid(
                "spec.autoscaling.memory.max",
                format!(
                    "{} exceeds maxMemory {}",
                    m.max,
                    Quantity::from_bytes(ceiling)
                ),
            ));
        }
    }
    for (i, d) in a.disks.iter().enumerate() {
        let at = format!("spec.autoscaling.disks[{i}]");
        if a.disks[..i].iter().any(|x| x.name == d.name) {
            errors.push(FieldError::invalid(
                format!("{at}.name"),
                format!("disk '{}' is named twice", d.name),
            ));
        }
        let disk = spec
            .disks
            .as_ref()
            .map(|disks| disks.iter().find(|x| x.name == d.name));
        if let Some(None) = disk {
            errors.push(FieldError::invalid(
                format!("{at}.name"),
                format!("unknown disk '{}'", d.name),
            ));
        }
        let max = sized(
            errors,
            &format!("{at}.maxSize"),
            &d.max_size,
            DISK_ALIGNMENT,
            "512 bytes",
        );
        if let (Some(max), Some(Some(disk))) = (max, disk)
            && let Ok(size) = disk.size.bytes()
            && max < size
        {
            errors.push(FieldError::invalid(
                format!("{at}.maxSize"),
                format!(
                    "{} is below the disk's size {} (disks never shrink)",
                    d.max_size, disk.size
                ),
            ));
        }
        percent(
            errors,
            &format!("{at}.growAtUsage"),
            d.grow_at_usage.map(u16::from),
            1,
            99,
        );
        percent(
            errors,
            &format!("{at}.stepPercent"),
            d.step_percent,
            1,
            1000,
        );
        if let Some(q) = &d.min_step {
            sized(
                errors,
                &format!("{at}.minStep"),
                q,
                DISK_ALIGNMENT,
                "512 bytes",
            );
        }
    }
}

/// Whether `s` is six lowercase hex pairs separated by colons.
pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| {
            p.len() == 2
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// A maintenance window in minutes: start minute of the day (UTC) and duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowMinutes {
    /// Minutes after midnight UTC.
    pub start: u32,
    /// Length in minutes (1..=1440).
    pub duration: u32,
}

/// Parses `start` (`HH:MM`) and `duration` (`3h`, `90m`, `1h30m`, at most 24h).
pub fn parse_window(w: &MaintenanceWindow) -> Result<WindowMinutes, String> {
    let (h, m) = w
        .start
        .split_once(':')
        .ok_or_else(|| format!("start '{}' is not HH:MM", w.start))?;
    let (h, m): (u32, u32) = match (h.parse(), m.parse()) {
        (Ok(h), Ok(m)) if h < 24 && m < 60 && h_len_ok(&w.start) => (h, m),
        _ => return Err(format!("start '{}' is not HH:MM (00:00 to 23:59)", w.start)),
    };
    let duration = parse_duration_minutes(&w.duration)
        .ok_or_else(|| format!("duration '{}' is not like 3h, 90m or 1h30m", w.duration))?;
    if duration == 0 || duration > 24 * 60 {
        return Err(format!(
            "duration '{}' must be more than 0 and at most 24h",
            w.duration
        ));
    }
    Ok(WindowMinutes {
        start: h * 60 + m,
        duration,
    })
}

fn h_len_ok(start: &str) -> bool {
    start.len() == 5
}

fn parse_duration_minutes(s: &str) -> Option<u32> {
    let mut total = 0u32;
    let mut digits = String::new();
    let mut seen_any = false;
    let mut seen_m = false;
    for c in s.chars() {
        match c {
            '0'..='9' => digits.push(c),
            'h' if !seen_any && !digits.is_empty() => {
                total = total.checked_add(digits.parse::<u32>().ok()?.checked_mul(60)?)?;
                digits.clear();
                seen_any = true;
            }
            'm' if !seen_m && !digits.is_empty() => {
                total = total.checked_add(digits.parse::<u32>().ok()?)?;
                digits.clear();
                seen_any = true;
                seen_m = true;
            }
            _ => return None,
        }
    }
    (seen_any && digits.is_empty()).then_some(total)
}

/// Network sources, disk sources, boot settings and cloud-init data the backend cannot use
/// are refused with the field named.
pub fn validate_for_backend(spec: &WukongSpec, backend: BackendKind) -> Result<(), FieldErrors> {
    let mut errors = Vec::new();
    for (i, n) in spec.networks.iter().flatten().enumerate() {
        if let Some(source) = n.source()
            && source.backend() != backend
        {
            let usable = match backend {
                BackendKind::Local => "user, tap or bridge",
                BackendKind::Kubevirt => "pod or multus",
            };
            errors.push(FieldError::invalid(
                format!("spec.networks[{i}]"),
                format!("source '{source}' cannot be used by the {backend} backend (use {usable})"),
            ));
        }
    }
    crate::sources::check_for_backend(spec, backend, &mut errors);
    if backend == BackendKind::Local {
        for (i, d) in spec.disks.iter().flatten().enumerate() {
            if matches!(
                d.bus,
                Some(crate::types::DiskBus::Scsi | crate::types::DiskBus::Sata)
            ) {
                errors.push(FieldError::invalid(
                    format!("spec.disks[{i}].bus"),
                    "the local backend attaches virtio disks only",
                ));
            }
            if d.storage_class.is_some() || d.volume_mode.is_some() {
                errors.push(FieldError::invalid(
                    format!("spec.disks[{i}]"),
                    "storageClass and volumeMode are for the kubevirt backend only",
                ));
            }
        }
    }
    FieldErrors(errors).into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_stay_out_of_the_kernels_filesystems() {
        for good in ["/", "/data", "/srv/db/", "/proc-data", "/devices"] {
            assert_eq!(check_mount_path(good), Ok(()), "{good}");
        }
        for bad in [
            "data",
            "/a/../etc",
            "/a/./b",
            "/..",
            "/proc",
            "/proc/",
            "/sys/fs",
            "/dev/shm",
            "/a\0b",
        ] {
            assert!(check_mount_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_autoscaling_is_refused_field_by_field() {
        let spec = |a: serde_json::Value| -> WukongSpec {
            serde_json::from_value(serde_json::json!({
                "maxCpu": 4, "maxMemory": "4Gi",
                "disks": [{"name": "data", "size": "1Gi"}],
                "autoscaling": a
            }))
            .unwrap()
        };
        for (a, field, says) in [
            (
                serde_json::json!({"cpu": {"min": 3, "max": 2}}),
                "spec.autoscaling.cpu",
                "exceed max",
            ),
            (
                serde_json::json!({"cpu": {"min": 1, "max": 8}}),
                "spec.autoscaling.cpu.max",
                "maxCpu 4",
            ),
            (
                serde_json::json!({"memory": {"min": "1Gi", "max": "8Gi"}}),
                "spec.autoscaling.memory.max",
                "maxMemory",
            ),
            (
                serde_json::json!({"memory": {"min": "2Gi", "max": "1Gi"}}),
                "spec.autoscaling.memory",
                "min must not exceed max",
            ),
            (
                serde_json::json!({"disks": [{"name": "logs", "maxSize": "2Gi"}]}),
                "spec.autoscaling.disks[0].name",
                "unknown disk 'logs'",
            ),
            (
                serde_json::json!({"disks": [{"name": "data", "maxSize": "512Mi"}]}),
                "spec.autoscaling.disks[0].maxSize",
                "below the disk's size",
            ),
            (
                serde_json::json!({"disks": [{"name": "data", "maxSize": "2Gi", "growAtUsage": 100}]}),
                "spec.autoscaling.disks[0].growAtUsage",
                "outside 1–99",
            ),
            (
                serde_json::json!({"disks": [{"name": "data", "maxSize": "2Gi", "minStep": "0"}]}),
                "spec.autoscaling.disks[0].minStep",
                "greater than zero",
            ),
            (
                serde_json::json!({"intervalSeconds": 1}),
                "spec.autoscaling.intervalSeconds",
                "outside 5–3600",
            ),
            (
                serde_json::json!({"stabilizationSeconds": 100000}),
                "spec.autoscaling.stabilizationSeconds",
                "outside",
            ),
            (
                serde_json::json!({"scaleUpStabilizationSeconds": 4000}),
                "spec.autoscaling.scaleUpStabilizationSeconds",
                "outside",
            ),
        ] {
            let err = validate_spec(&spec(a.clone())).expect_err(&a.to_string());
            let text = err.to_string();
            assert!(text.contains(&format!("{field}: ")), "{a}: {text}");
            assert!(text.contains(says), "{a}: {text}");
        }
        let good = serde_json::json!({
            "cpu": {"min": 1, "max": 4, "targetUtilization": 60},
            "memory": {"min": "1Gi", "max": "4Gi"},
            "disks": [{"name": "data", "maxSize": "8Gi", "minStep": "64Mi"}],
            "intervalSeconds": 5, "stabilizationSeconds": 20, "mode": "Recommend"
        });
        assert_eq!(validate_spec(&spec(good)), Ok(()));
    }

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("data-1", 20).is_ok());
        assert!(check_dns_label("Data", 20).is_err());
        assert!(check_dns_label("-a", 20).is_err());
        assert!(check_dns_label("a-", 20).is_err());
        assert!(check_dns_label("a_b", 20).is_err());
        assert!(check_dns_label("abcdefghijklmnopqrstu", 20).is_err());
        assert!(check_dns_label("", 20).is_err());
    }

    #[test]
    fn windows() {
        let w = |start: &str, duration: &str| MaintenanceWindow {
            days: vec![],
            start: start.into(),
            duration: duration.into(),
        };
        assert_eq!(
            parse_window(&w("02:30", "1h30m")),
            Ok(WindowMinutes {
                start: 150,
                duration: 90
            })
        );
        assert_eq!(
            parse_window(&w("23:00", "24h")).map(|w| w.duration),
            Ok(1440)
        );
        assert!(parse_window(&w("24:00", "1h")).is_err());
        assert!(parse_window(&w("2:00", "1h")).is_err());
        assert!(parse_window(&w("02:00", "25h")).is_err());
        assert!(parse_window(&w("02:00", "0m")).is_err());
        assert!(parse_window(&w("02:00", "1m2h")).is_err());
        assert!(parse_window(&w("02:00", "h")).is_err());
    }

    #[test]
    fn macs() {
        assert!(is_mac("52:54:00:12:ab:ff"));
        assert!(!is_mac("52:54:00:12:AB:FF"));
        assert!(!is_mac("52:54:00:12:ab"));
        assert!(!is_mac("52-54-00-12-ab-ff"));
    }
}
