//! Work inside a KubeVirt guest: the guest agent reached through the virt-launcher pod's
//! `compute` container (`virsh qemu-agent-command <ns>_<vm> '{"execute":"guest-exec",…}'`,
//! then `guest-exec-status`), and the agent's `filesystemlist` subresource. Commands are argv
//! lists end to end: nothing is ever put through a shell.

use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use wukong_api::{FilesystemSpec, FsType};
use wukong_engine::{BackendError, VmRef};
use wukong_planner::GuestDiskView;

use crate::backend::api_error;

/// The connection URI of the (non-root) launcher's libvirt.
pub const VIRSH_URI: &str = "qemu+unix:///session?socket=/var/run/libvirt/virtqemud-sock";

/// The guest side of one cluster.
pub struct Guest {
    client: Client,
    timeout: Duration,
}

fn failed(m: impl Into<String>) -> BackendError {
    BackendError::Failed(m.into())
}

impl Guest {
    /// Through `client`; one guest command may take `timeout`.
    pub fn new(client: Client, timeout: Duration) -> Self {
        Guest { client, timeout }
    }

    /// The guest agent's mounted filesystems (empty when the agent does not answer).
    pub async fn filesystems(&self, vm: &VmRef) -> Result<Vec<Value>, BackendError> {
        let url = format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachineinstances/{}/filesystemlist",
            vm.namespace, vm.name
        );
        let req = http::Request::get(url)
            .body(Vec::new())
            .map_err(|e| failed(e.to_string()))?;
        let text = self
            .client
            .request_text(req)
            .await
            .map_err(|e| api_error("filesystemlist", e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| failed(format!("filesystemlist: {e}")))?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }

    async fn launcher(&self, vm: &VmRef) -> Result<String, BackendError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &vm.namespace);
        let lp = ListParams::default().labels(&format!(
            "kubevirt.io=virt-launcher,vm.kubevirt.io/name={}",
            vm.name
        ));
        let list = pods
            .list(&lp)
            .await
            .map_err(|e| api_error("launcher pod", e))?;
        list.items
            .iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .map(|p| p.name_any())
            .ok_or_else(|| failed(format!("no running virt-launcher pod for {vm}")))
    }

    /// Sends one command to the guest agent; returns its `return` value.
    pub async fn agent(&self, vm: &VmRef, command: &Value) -> Result<Value, BackendError> {
        let pod = self.launcher(vm).await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &vm.namespace);
        let argv = [
            "virsh".to_string(),
            "-c".into(),
            VIRSH_URI.into(),
            "qemu-agent-command".into(),
            format!("{}_{}", vm.namespace, vm.name),
            command.to_string(),
        ];
        let ap = AttachParams::default()
            .container("compute")
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let run = async {
            let mut p = pods.exec(&pod, argv, &ap).await.map_err(|e| {
                failed(format!(
                    "the guest cannot be reached: exec into {pod} (container compute) failed: {e}; grant pods/exec or grow the filesystem by hand"
                ))
            })?;
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut s) = p.stdout() {
                let _ = s.read_to_string(&mut out).await;
            }
            if let Some(mut s) = p.stderr() {
                let _ = s.read_to_string(&mut err).await;
            }
            let status = match p.take_status() {
                Some(s) => s.await,
                None => None,
            };
            let _ = p.join().await;
            Ok::<_, BackendError>((status, out, err))
        };
        let (status, out, err) =
            tokio::time::timeout(self.timeout, run)
                .await
                .map_err(|_| BackendError::Timeout {
                    what: "the guest agent".into(),
                    after: self.timeout,
                })??;
        if status.as_ref().and_then(|s| s.status.as_deref()) != Some("Success") {
            return Err(failed(format!(
                "the guest agent refused {}: {}",
                command["execute"].as_str().unwrap_or("the command"),
                err.trim()
            )));
        }
        let v: Value = serde_json::from_str(out.trim())
            .map_err(|e| failed(format!("guest agent reply: {e}")))?;
        Ok(v["return"].clone())
    }

    /// How many vCPUs the guest has online (`guest-get-vcpus`).
    pub async fn online_vcpus(&self, vm: &VmRef) -> Result<u32, BackendError> {
        let cpus = self
            .agent(vm, &json!({"execute": "guest-get-vcpus"}))
            .await?;
        Ok(cpus
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["online"] == true)
            .count() as u32)
    }

    /// Runs `argv` in the guest (stdin `input`); fails unless it exits 0.
    pub async fn run(
        &self,
        vm: &VmRef,
        argv: &[&str],
        input: Option<&[u8]>,
    ) -> Result<(i64, String), BackendError> {
        let mut args = json!({"path": argv[0], "arg": &argv[1..], "capture-output": true});
        if let Some(i) = input {
            args["input-data"] = json!(base64::engine::general_purpose::STANDARD.encode(i));
        }
        let pid = self
            .agent(vm, &json!({"execute": "guest-exec", "arguments": args}))
            .await?["pid"]
            .as_i64()
            .ok_or_else(|| failed("guest-exec returned no pid"))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let st = self
                .agent(
                    vm,
                    &json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
                )
                .await?;
            if st["exited"] == true {
                let decode = |k: &str| {
                    st[k]
                        .as_str()
                        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                };
                let code = st["exitcode"].as_i64().unwrap_or(-1);
                return Ok((
                    code,
                    format!("{}{}", decode("out-data"), decode("err-data")),
                ));
            }
            if Instant::now() > deadline {
                return Err(BackendError::Timeout {
                    what: format!("{} in the guest", argv.join(" ")),
                    after: self.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run_ok(
        &self,
        vm: &VmRef,
        argv: &[&str],
        input: Option<&[u8]>,
    ) -> Result<(), BackendError> {
        match self.run(vm, argv, input).await? {
            (0, _) => Ok(()),
            (code, out) => Err(failed(format!(
                "{} exited {code} in the guest: {}",
                argv.join(" "),
                out.trim()
            ))),
        }
    }

    /// Grows the last partition (if the filesystem sits in one) and the filesystem of a disk.
    pub async fn grow_filesystem(
        &self,
        vm: &VmRef,
        disk: &GuestDiskView,
    ) -> Result<(), BackendError> {
        let dev = format!(
            "/dev/{}",
            disk.device
                .as_deref()
                .ok_or_else(|| failed("the guest does not show the disk"))?
        );
        let mount = disk
            .mount
            .as_deref()
            .ok_or_else(|| failed("the disk's filesystem is not mounted in the guest"))?;
        let target = match &disk.partition {
            Some(part) => {
                let number = wukong_planner::guest::partition_number(part);
                for c in wukong_planner::guest::grow_partition(&dev, &number) {
                    let argv: Vec<&str> = c.argv.iter().map(String::as_str).collect();
                    if c.checked {
                        self.run_ok(vm, &argv, c.stdin).await?;
                    } else {
                        let _ = self.run(vm, &argv, c.stdin).await?;
                    }
                }
                format!("/dev/{part}")
            }
            None => dev,
        };
        match disk.fs_type.as_deref() {
            Some("ext2" | "ext3" | "ext4") => self.run_ok(vm, &["resize2fs", &target], None).await,
            Some("xfs") => self.run_ok(vm, &["xfs_growfs", mount], None).await,
            other => Err(failed(format!(
                "cannot grow a {} filesystem online (ext4 and xfs can be)",
                other.unwrap_or("unknown")
            ))),
        }
    }

    /// Makes the filesystem on a blank disk (found by its serial) and mounts it.
    pub async fn create_filesystem(
        &self,
        vm: &VmRef,
        serial: &str,
        fs: &FilesystemSpec,
        disk: &GuestDiskView,
    ) -> Result<(), BackendError> {
        let dev = format!("/dev/disk/by-id/virtio-{serial}");
        let kind = match fs.fs_type {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        };
        if self.run(vm, &["blkid", &dev], None).await?.0 != 0 {
            match fs.fs_type {
                FsType::Ext4 => {
                    self.run_ok(vm, &["mke2fs", "-t", "ext4", "-F", "-q", &dev], None)
                        .await?
                }
                FsType::Xfs => {
                    self.run_ok(vm, &["mkfs.xfs", "-f", "-q", &dev], None)
                        .await?
                }
            }
        }
        if disk.mount.as_deref() != Some(fs.mount_path.as_str()) {
            self.run_ok(vm, &["mkdir", "-p", &fs.mount_path], None)
                .await?;
            self.run_ok(vm, &["mount", "-t", kind, &dev, &fs.mount_path], None)
                .await?;
        }
        Ok(())
    }
}
