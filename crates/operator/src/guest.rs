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
use wukong_engine::{BackendError, VmRef};
use wukong_guest::ExecOutput;

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
        let agent = VmAgent { guest: self, vm };
        let cpus = wukong_guest::Transport::vcpus(&agent, self.timeout).await?;
        Ok(cpus.iter().filter(|(_, online)| *online).count() as u32)
    }

    /// Runs `argv` in the guest (stdin `input`): exit code, stdout, stderr.
    pub async fn exec(
        &self,
        vm: &VmRef,
        argv: &[&str],
        input: Option<&[u8]>,
    ) -> Result<(i64, Vec<u8>, Vec<u8>), BackendError> {
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
                        .unwrap_or_default()
                };
                let code = st["exitcode"]
                    .as_i64()
                    .or(st["signal"].as_i64().map(|s| 128 + s))
                    .unwrap_or(-1);
                return Ok((code, decode("out-data"), decode("err-data")));
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

    /// The guest-side operations of `vm`, through this cluster's agent path.
    pub fn ops<'a>(&'a self, agent: &'a VmAgent<'a>) -> wukong_guest::Guest<'a, VmAgent<'a>> {
        wukong_guest::Guest::new(agent, self.timeout, self.timeout)
    }
}

/// One VM's guest agent, reached through its launcher pod.
pub struct VmAgent<'a> {
    /// The cluster's guest side.
    pub guest: &'a Guest,
    /// The VM.
    pub vm: &'a VmRef,
}

impl wukong_guest::Transport for VmAgent<'_> {
    async fn exec(
        &self,
        argv: &[&str],
        input: Option<&[u8]>,
        _timeout: Duration,
    ) -> Result<ExecOutput, BackendError> {
        let (code, stdout, stderr) = self.guest.exec(self.vm, argv, input).await?;
        Ok(ExecOutput {
            code,
            stdout,
            stderr,
        })
    }

    async fn vcpus(&self, _timeout: Duration) -> Result<Vec<(i64, bool)>, BackendError> {
        let cpus = self
            .guest
            .agent(self.vm, &json!({"execute": "guest-get-vcpus"}))
            .await?;
        Ok(cpus
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["logical-id"].as_i64().unwrap_or(-1), c["online"] == true))
            .collect())
    }

    async fn set_vcpus(
        &self,
        changes: &[(i64, bool)],
        _timeout: Duration,
    ) -> Result<(), BackendError> {
        let vcpus: Vec<Value> = changes
            .iter()
            .map(|(id, online)| json!({"logical-id": id, "online": online}))
            .collect();
        self.guest
            .agent(
                self.vm,
                &json!({"execute": "guest-set-vcpus", "arguments": {"vcpus": vcpus}}),
            )
            .await
            .map(|_| ())
    }
}
