//! Checks of what a VM boots and starts from: boot settings, disk sources and cloud-init data,
//! first on their own ([`check`]), then for the backend that will use them
//! ([`check_for_backend`]).

use crate::types::{BackendKind, CloudInitSpec, DiskSource, WukongSpec};
use crate::validate::FieldError;

/// Inline cloud-init data KubeVirt's admission takes (larger data goes through a Secret).
pub const KUBEVIRT_INLINE_CLOUD_INIT: usize = 2048;
/// Inline cloud-init data the local backend takes per field.
pub const MAX_CLOUD_INIT: usize = 64 * 1024;
/// Longest kernel command line (x86's COMMAND_LINE_SIZE).
pub const MAX_CMDLINE: usize = 2048;

/// A DNS-1123 subdomain (the names of Secrets and PVCs): ≤ 253 characters, dot-separated
/// labels of lower-case letters, digits and `-`.
pub fn check_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "'{name}' must be 1 to 253 characters (a DNS subdomain)"
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "'{name}' is not a DNS subdomain (lower-case letters, digits, '-' and '.')"
            ));
        }
    }
    Ok(())
}

fn absolute(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        Err(format!("'{path}' is not an absolute path"))
    } else if path.contains('\0') {
        Err("a path cannot hold a NUL byte".into())
    } else {
        Ok(())
    }
}

fn check_source(at: &str, s: &DiskSource, errors: &mut Vec<FieldError>) {
    if s.describe().is_none() {
        errors.push(FieldError::invalid(
            at,
            "exactly one disk source (image, http, registry, pvc) must be set",
        ));
        return;
    }
    if let Some(p) = &s.image
        && let Err(r) = absolute(p)
    {
        errors.push(FieldError::invalid(format!("{at}.image"), r));
    }
    if let Some(u) = &s.http {
        let rest = u
            .url
            .strip_prefix("https://")
            .or_else(|| u.url.strip_prefix("http://"));
        if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) {
            errors.push(FieldError::invalid(
                format!("{at}.http.url"),
                format!("'{}' is not an http:// or https:// URL with a host", u.url),
            ));
        }
    }
    if let Some(u) = &s.registry
        && !u
            .url
            .strip_prefix("docker://")
            .is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
    {
        errors.push(FieldError::invalid(
            format!("{at}.registry.url"),
            format!(
                "'{}' is not in CDI's form docker://REGISTRY/REPOSITORY[:TAG]",
                u.url
            ),
        ));
    }
    if let Some(p) = &s.pvc
        && let Err(r) = check_subdomain(&p.name)
    {
        errors.push(FieldError::invalid(format!("{at}.pvc.name"), r));
    }
}

fn check_cloud_init(c: &CloudInitSpec, errors: &mut Vec<FieldError>) {
    if c.user_data.is_some() && c.secret_ref.is_some() {
        errors.push(FieldError::invalid(
            "spec.cloudInit.secretRef",
            "userData and secretRef exclude each other",
        ));
    }
    if c.network_data.is_some() && c.network_data_secret_ref.is_some() {
        errors.push(FieldError::invalid(
            "spec.cloudInit.networkDataSecretRef",
            "networkData and networkDataSecretRef exclude each other",
        ));
    }
    for (field, data) in [("userData", &c.user_data), ("networkData", &c.network_data)] {
        if let Some(d) = data
            && d.len() > MAX_CLOUD_INIT
        {
            errors.push(FieldError::invalid(
                format!("spec.cloudInit.{field}"),
                format!("{} bytes, more than {MAX_CLOUD_INIT}", d.len()),
            ));
        }
    }
    for (field, r) in [
        ("secretRef", &c.secret_ref),
        ("networkDataSecretRef", &c.network_data_secret_ref),
    ] {
        if let Some(r) = r
            && let Err(why) = check_subdomain(&r.name)
        {
            errors.push(FieldError::invalid(
                format!("spec.cloudInit.{field}.name"),
                why,
            ));
        }
    }
}

/// Boot settings, disk sources and cloud-init data, whatever the backend.
pub fn check(spec: &WukongSpec, errors: &mut Vec<FieldError>) {
    if let Some(boot) = &spec.boot {
        if boot.firmware.is_some() && boot.kernel.is_some() {
            errors.push(FieldError::invalid(
                "spec.boot",
                "firmware and kernel exclude each other",
            ));
        }
        if let Some(k) = &boot.kernel {
            if let Err(r) = absolute(&k.path) {
                errors.push(FieldError::invalid("spec.boot.kernel.path", r));
            }
            if let Some(i) = &k.initrd
                && let Err(r) = absolute(i)
            {
                errors.push(FieldError::invalid("spec.boot.kernel.initrd", r));
            }
            if let Some(c) = &k.cmdline
                && (c.len() > MAX_CMDLINE || c.contains('\0'))
            {
                errors.push(FieldError::invalid(
                    "spec.boot.kernel.cmdline",
                    format!("at most {MAX_CMDLINE} bytes, no NUL"),
                ));
            }
        }
    }
    for (i, d) in spec.disks.iter().flatten().enumerate() {
        if let Some(s) = &d.source {
            check_source(&format!("spec.disks[{i}].source"), s, errors);
        }
    }
    if let Some(c) = &spec.cloud_init {
        check_cloud_init(c, errors);
    }
}

/// What the backend cannot use, each with the field named.
pub fn check_for_backend(spec: &WukongSpec, backend: BackendKind, errors: &mut Vec<FieldError>) {
    let local = backend == BackendKind::Local;
    for (i, d) in spec.disks.iter().flatten().enumerate() {
        let Some(s) = &d.source else { continue };
        let at = format!("spec.disks[{i}].source");
        if local {
            for (field, set) in [
                ("http", s.http.is_some()),
                ("registry", s.registry.is_some()),
                ("pvc", s.pvc.is_some()),
            ] {
                if set {
                    errors.push(FieldError::invalid(
                        format!("{at}.{field}"),
                        "imported by CDI: kubevirt backend only (the local backend takes `image`, a file on the host)",
                    ));
                }
            }
        } else if s.image.is_some() {
            errors.push(FieldError::invalid(
                format!("{at}.image"),
                "host images are for the local backend only (use http, registry or pvc)",
            ));
        }
    }
    if !local && spec.boot.as_ref().is_some_and(|b| b.kernel.is_some()) {
        errors.push(FieldError::invalid(
            "spec.boot.kernel",
            "a kernel from the host is for the local backend only (use firmware)",
        ));
    }
    let Some(c) = &spec.cloud_init else { return };
    if local {
        for (field, set) in [
            ("secretRef", c.secret_ref.is_some()),
            ("networkDataSecretRef", c.network_data_secret_ref.is_some()),
        ] {
            if set {
                errors.push(FieldError::invalid(
                    format!("spec.cloudInit.{field}"),
                    "Secrets are for the kubevirt backend only (give the data inline)",
                ));
            }
        }
    } else {
        for (field, data) in [("userData", &c.user_data), ("networkData", &c.network_data)] {
            if let Some(d) = data
                && d.len() > KUBEVIRT_INLINE_CLOUD_INIT
            {
                errors.push(FieldError::invalid(
                    format!("spec.cloudInit.{field}"),
                    format!(
                        "{} bytes: KubeVirt takes at most {KUBEVIRT_INLINE_CLOUD_INIT} inline (put it in a Secret and name it in secretRef)",
                        d.len()
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{BootSpec, Firmware, KernelBoot, LocalRef, UrlSource};

    fn errors_of(spec: &WukongSpec, backend: Option<BackendKind>) -> Vec<String> {
        let mut e = Vec::new();
        check(spec, &mut e);
        if let Some(b) = backend {
            check_for_backend(spec, b, &mut e);
        }
        e.into_iter().map(|e| e.field).collect()
    }

    fn with_source(s: DiskSource) -> WukongSpec {
        let mut spec: WukongSpec =
            serde_yaml::from_str("disks: [{name: system, size: 1Gi}]").unwrap();
        spec.disks.as_mut().unwrap()[0].source = Some(s);
        spec
    }

    #[test]
    fn a_source_is_exactly_one_thing_in_its_own_form() {
        let url = |u: &str| Some(UrlSource { url: u.into() });
        let good = [
            DiskSource::image("/images/debian.qcow2"),
            DiskSource {
                http: url("https://cloud.debian.org/x.qcow2"),
                ..Default::default()
            },
            DiskSource {
                registry: url("docker://quay.io/containerdisks/debian:12"),
                ..Default::default()
            },
            DiskSource {
                pvc: Some(LocalRef {
                    name: "golden-image".into(),
                }),
                ..Default::default()
            },
        ];
        for s in good {
            assert_eq!(
                errors_of(&with_source(s.clone()), None),
                Vec::<String>::new(),
                "{s:?}"
            );
        }
        let bad = [
            (DiskSource::default(), "spec.disks[0].source"),
            (
                DiskSource {
                    http: url("https://a/b"),
                    ..DiskSource::image("/x")
                },
                "spec.disks[0].source",
            ),
            (
                DiskSource::image("relative.qcow2"),
                "spec.disks[0].source.image",
            ),
            (
                DiskSource {
                    http: url("ftp://host/x"),
                    ..Default::default()
                },
                "spec.disks[0].source.http.url",
            ),
            (
                DiskSource {
                    http: url("https:///x"),
                    ..Default::default()
                },
                "spec.disks[0].source.http.url",
            ),
            (
                DiskSource {
                    registry: url("quay.io/containerdisks/debian"),
                    ..Default::default()
                },
                "spec.disks[0].source.registry.url",
            ),
            (
                DiskSource {
                    pvc: Some(LocalRef {
                        name: "Golden".into(),
                    }),
                    ..Default::default()
                },
                "spec.disks[0].source.pvc.name",
            ),
        ];
        for (s, field) in bad {
            assert_eq!(
                errors_of(&with_source(s.clone()), None),
                vec![field],
                "{s:?}"
            );
        }
    }

    #[test]
    fn each_backend_refuses_what_it_cannot_use() {
        let http = with_source(DiskSource {
            http: Some(UrlSource {
                url: "https://h/x".into(),
            }),
            ..Default::default()
        });
        assert_eq!(
            errors_of(&http, Some(BackendKind::Local)),
            vec!["spec.disks[0].source.http"]
        );
        assert!(errors_of(&http, Some(BackendKind::Kubevirt)).is_empty());
        let image = with_source(DiskSource::image("/x"));
        assert_eq!(
            errors_of(&image, Some(BackendKind::Kubevirt)),
            vec!["spec.disks[0].source.image"]
        );
        let mut kernel = WukongSpec {
            boot: Some(BootSpec {
                kernel: Some(KernelBoot {
                    path: "/boot/vmlinuz".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(errors_of(&kernel, Some(BackendKind::Local)).is_empty());
        assert_eq!(
            errors_of(&kernel, Some(BackendKind::Kubevirt)),
            vec!["spec.boot.kernel"]
        );
        kernel.boot.as_mut().unwrap().firmware = Some(Firmware::Uefi);
        assert_eq!(errors_of(&kernel, None), vec!["spec.boot"]);
    }

    #[test]
    fn cloud_init_data_is_inline_or_a_secret_and_kubevirt_caps_inline_data() {
        let spec = |c: CloudInitSpec| WukongSpec {
            cloud_init: Some(c),
            ..Default::default()
        };
        let both = spec(CloudInitSpec {
            user_data: Some("#cloud-config\n".into()),
            secret_ref: Some(LocalRef { name: "ud".into() }),
            ..Default::default()
        });
        assert_eq!(errors_of(&both, None), vec!["spec.cloudInit.secretRef"]);
        let big = spec(CloudInitSpec {
            user_data: Some("#".repeat(KUBEVIRT_INLINE_CLOUD_INIT + 1)),
            ..Default::default()
        });
        assert!(errors_of(&big, Some(BackendKind::Local)).is_empty());
        assert_eq!(
            errors_of(&big, Some(BackendKind::Kubevirt)),
            vec!["spec.cloudInit.userData"]
        );
        let secret = spec(CloudInitSpec {
            secret_ref: Some(LocalRef { name: "ud".into() }),
            ..Default::default()
        });
        assert!(errors_of(&secret, Some(BackendKind::Kubevirt)).is_empty());
        assert_eq!(
            errors_of(&secret, Some(BackendKind::Local)),
            vec!["spec.cloudInit.secretRef"]
        );
    }
}
