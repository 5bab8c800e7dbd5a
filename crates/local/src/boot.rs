//! What one VM boots: its own boot settings (BIOS, UEFI with a variable store of its own, or a
//! kernel from a trusted directory) or else the daemon's default; and cloud-init's NoCloud
//! seed built from its data. Both files live in the VM's directory and go with it.

use std::path::{Path, PathBuf};

use wukong_api::{BootSpec, CloudInitSpec, Firmware, VmConfig};
use wukong_engine::BackendError;

use crate::machine::{BootSource, DEFAULT_CMDLINE, Uefi};

/// The UEFI firmware the daemon boots `uefi` VMs with: Debian's `ovmf` package (4 MiB flash,
/// secure boot off — not the `.secboot`/`.ms` variants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UefiFirmware {
    /// The firmware, mapped read-only.
    pub code: PathBuf,
    /// The template each VM's variable store is copied from (its size must be the one the
    /// firmware expects: the pair comes from one build).
    pub vars_template: PathBuf,
}

impl Default for UefiFirmware {
    fn default() -> Self {
        UefiFirmware {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        }
    }
}

/// The VM's UEFI variable store.
pub fn vars_path(dir: &Path) -> PathBuf {
    dir.join("efivars.fd")
}

/// The VM's cloud-init seed.
pub fn seed_path(dir: &Path) -> PathBuf {
    dir.join("cidata.iso")
}

fn failed(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed(format!("{what}: {e}"))
}

/// How the VM of `def` boots, its files made ready: the UEFI variable store copied from the
/// template the first time, a kernel checked against the trusted `roots` again (it was when
/// the spec came in; the file may have changed since) and held open: QEMU is given the open
/// file, so what it loads is what was checked. Keep the returned files open until QEMU has
/// started (it reads the kernel and initrd once, at start).
pub fn boot_source(
    def: &VmConfig,
    default: &BootSource,
    dir: &Path,
    uefi: &UefiFirmware,
    roots: &[PathBuf],
) -> Result<(BootSource, Vec<crate::trusted::Pinned>), BackendError> {
    let firmware = |uefi: Option<Uefi>| BootSource {
        kernel: None,
        initrd: None,
        cmdline: String::new(),
        uefi,
    };
    match def.boot.as_ref() {
        None
        | Some(BootSpec {
            firmware: None,
            kernel: None,
        }) => Ok((default.clone(), Vec::new())),
        Some(BootSpec {
            firmware: Some(Firmware::Bios),
            ..
        }) => Ok((firmware(None), Vec::new())),
        Some(BootSpec {
            firmware: Some(Firmware::Uefi),
            ..
        }) => Ok((firmware(Some(uefi_files(dir, uefi)?)), Vec::new())),
        Some(BootSpec {
            kernel: Some(k), ..
        }) => {
            let mut pins = Vec::new();
            let mut trusted = |p: &str, field: &str| {
                let pinned = crate::trusted::check_source(p, roots, false)
                    .and_then(|real| crate::trusted::Pinned::open(&real, roots))
                    .map_err(|e| failed(&format!("spec.boot.kernel.{field}"), e))?;
                let path = pinned.path();
                pins.push(pinned);
                Ok::<_, BackendError>(path)
            };
            let kernel = trusted(&k.path, "path")?;
            let initrd = k
                .initrd
                .as_deref()
                .map(|i| trusted(i, "initrd"))
                .transpose()?;
            Ok((
                BootSource {
                    kernel: Some(kernel),
                    initrd,
                    cmdline: k.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.into()),
                    uefi: None,
                },
                pins,
            ))
        }
    }
}

/// The firmware and the VM's own variable store (created from the template once, then kept:
/// it holds the boot entries the guest writes).
fn uefi_files(dir: &Path, fw: &UefiFirmware) -> Result<Uefi, BackendError> {
    let missing = |p: &Path, e: std::io::Error| {
        failed(
            &format!("UEFI firmware {}", p.display()),
            format!(
                "{e} (install Debian's ovmf package, or point serve --ovmf-code/--ovmf-vars at it)"
            ),
        )
    };
    std::fs::metadata(&fw.code).map_err(|e| missing(&fw.code, e))?;
    let template =
        std::fs::metadata(&fw.vars_template).map_err(|e| missing(&fw.vars_template, e))?;
    let vars = vars_path(dir);
    match std::fs::metadata(&vars) {
        Ok(m) if m.len() == template.len() => {}
        Ok(m) => {
            return Err(failed(
                &format!("UEFI variable store {}", vars.display()),
                format!(
                    "{} bytes, the firmware's template has {}: not from the same firmware build",
                    m.len(),
                    template.len()
                ),
            ));
        }
        Err(_) => {
            let tmp = dir.join("efivars.fd.tmp");
            std::fs::copy(&fw.vars_template, &tmp)
                .and_then(|_| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                })
                .and_then(|_| std::fs::rename(&tmp, &vars))
                .map_err(|e| failed("copying the UEFI variable store", e))?;
        }
    }
    Ok(Uefi {
        code: fw.code.clone(),
        vars,
    })
}

/// The files of a NoCloud seed: `meta-data` (the instance-id is the VM's uid for its whole
/// life, the hostname its name), `user-data` (as given, or an empty cloud-config) and
/// `network-config` when given.
pub fn seed_files(name: &str, uid: &str, ci: &CloudInitSpec) -> Vec<(&'static str, String)> {
    let mut files = vec![
        (
            "meta-data",
            format!("instance-id: {uid}\nlocal-hostname: {name}\n"),
        ),
        (
            "user-data",
            ci.user_data
                .clone()
                .unwrap_or_else(|| "#cloud-config\n".into()),
        ),
    ];
    if let Some(n) = &ci.network_data {
        files.push(("network-config", n.clone()));
    }
    files
}

/// Writes the VM's seed (`cidata.iso`, volume label `cidata`) from `ci`, or removes it when
/// there is no cloud-init data. The new image replaces the old one by a rename: a running
/// QEMU keeps reading the one it opened; the next boot reads the new one.
pub async fn write_seed(
    dir: &Path,
    name: &str,
    uid: &str,
    ci: Option<&CloudInitSpec>,
) -> Result<Option<PathBuf>, BackendError> {
    let seed = seed_path(dir);
    let Some(ci) = ci else {
        match std::fs::remove_file(&seed) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("removing the cloud-init seed", e)),
        }
        return Ok(None);
    };
    let staging = dir.join("cidata");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(|e| failed("the cloud-init seed", e))?;
    let files = seed_files(name, uid, ci);
    for (file, content) in &files {
        std::fs::write(staging.join(file), content)
            .map_err(|e| failed("the cloud-init seed", e))?;
    }
    let tmp = dir.join("cidata.iso.tmp");
    let out = tokio::process::Command::new("genisoimage")
        .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(&tmp)
        .args(files.iter().map(|(f, _)| staging.join(f)))
        .output()
        .await
        .map_err(|e| failed("genisoimage (apt-get install genisoimage)", e))?;
    let _ = std::fs::remove_dir_all(&staging);
    if !out.status.success() {
        return Err(failed(
            "genisoimage",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    std::fs::rename(&tmp, &seed).map_err(|e| failed("the cloud-init seed", e))?;
    Ok(Some(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_names_the_vm_by_its_uid_and_keeps_the_users_data() {
        let ci = CloudInitSpec {
            user_data: Some("#cloud-config\nhostname: web\n".into()),
            ..Default::default()
        };
        let files = seed_files("web", "1234-abcd", &ci);
        assert_eq!(
            files[0],
            (
                "meta-data",
                "instance-id: 1234-abcd\nlocal-hostname: web\n".into()
            )
        );
        assert_eq!(files[1].1, "#cloud-config\nhostname: web\n");
        assert_eq!(files.len(), 2, "no network-config unless given");
        let net = CloudInitSpec {
            network_data: Some("version: 2\n".into()),
            ..Default::default()
        };
        let files = seed_files("web", "u", &net);
        assert_eq!(files[1].1, "#cloud-config\n");
        assert_eq!(files[2], ("network-config", "version: 2\n".into()));
    }

    #[test]
    fn a_uefi_vm_gets_its_own_variable_store_once_and_a_foreign_one_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let fw = UefiFirmware {
            code: t.path().join("CODE.fd"),
            vars_template: t.path().join("VARS.fd"),
        };
        std::fs::write(&fw.code, vec![0u8; 4096]).unwrap();
        std::fs::write(&fw.vars_template, vec![1u8; 1024]).unwrap();
        let vm = t.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let u = uefi_files(&vm, &fw).unwrap();
        assert_eq!(std::fs::read(&u.vars).unwrap(), vec![1u8; 1024]);
        // The guest writes its boot entries: kept across boots.
        std::fs::write(&u.vars, vec![2u8; 1024]).unwrap();
        uefi_files(&vm, &fw).unwrap();
        assert_eq!(std::fs::read(&u.vars).unwrap(), vec![2u8; 1024]);
        std::fs::write(&u.vars, vec![2u8; 512]).unwrap();
        assert!(uefi_files(&vm, &fw).is_err(), "a store of another size");
        std::fs::remove_file(&fw.code).unwrap();
        assert!(uefi_files(&vm, &fw).is_err(), "no firmware");
    }

    #[test]
    fn qemu_is_given_the_kernel_that_was_checked_whatever_its_path_becomes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("images");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("vmlinuz"), "checked kernel").unwrap();
        std::fs::write(root.join("initrd"), "checked initrd").unwrap();
        let roots = crate::trusted::resolve_roots(std::slice::from_ref(&root)).unwrap();
        let spec: wukong_api::WukongSpec = serde_json::from_value(serde_json::json!({
            "boot": {"kernel": {
                "path": root.join("vmlinuz"),
                "initrd": root.join("initrd"),
            }},
        }))
        .unwrap();
        let def = wukong_api::resolve_new(
            "vm",
            &spec,
            wukong_api::BackendKind::Local,
            wukong_api::config::HostLimits::UNLIMITED,
        )
        .unwrap()
        .0;
        let default = BootSource {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            uefi: None,
        };
        let (boot, pins) =
            boot_source(&def, &default, t.path(), &UefiFirmware::default(), &roots).unwrap();
        // The files are swapped under their names after the check.
        std::fs::write(t.path().join("other"), "swapped in").unwrap();
        std::fs::rename(t.path().join("other"), root.join("vmlinuz")).unwrap();
        std::fs::remove_file(root.join("initrd")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("initrd")).unwrap();
        assert_eq!(
            std::fs::read_to_string(boot.kernel.as_ref().unwrap()).unwrap(),
            "checked kernel"
        );
        assert_eq!(
            std::fs::read_to_string(boot.initrd.as_ref().unwrap()).unwrap(),
            "checked initrd"
        );
        drop(pins);
        // Named again, the link that now stands there is refused.
        let e = boot_source(&def, &default, t.path(), &UefiFirmware::default(), &roots)
            .err()
            .expect("a kernel file replaced by a link out of the roots");
        assert!(e.to_string().contains("spec.boot.kernel.initrd"), "{e}");
    }
}
