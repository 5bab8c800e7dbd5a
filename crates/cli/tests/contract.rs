//! The CLI contract (docs/cli.md): the examples plan as their comments say, bad input gets a
//! clear error naming the field with exit code 1, refused changes exit 2.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn wukong(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wukong"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wukong runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn plan_json(file: &str) -> Value {
    let out = wukong(
        &[
            "plan",
            "-f",
            file,
            "--observed",
            "examples/observed-my-vm.yaml",
            "-o",
            "json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

fn actions(plan: &Value) -> Vec<(String, String)> {
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_string(),
                s["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn example_cpu_2_to_4_is_one_live_hot_add() {
    let p = plan_json("examples/cpu-2-to-4.yaml");
    assert_eq!(actions(&p), vec![("addVcpus".into(), "live".into())]);
    assert_eq!(
        (p["steps"][0]["from"].as_u64(), p["steps"][0]["to"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(p["restart"], Value::Null);
}

#[test]
fn example_grow_system_disk_grows_disk_then_filesystem_live() {
    let p = plan_json("examples/grow-system-disk.yaml");
    assert_eq!(
        actions(&p),
        vec![
            ("growDisk".into(), "live".into()),
            ("growFilesystem".into(), "live".into())
        ]
    );
    assert_eq!(p["steps"][0]["to"].as_u64(), Some(50 << 30));
}

#[test]
fn example_attach_data_disk_is_one_live_attach() {
    let p = plan_json("examples/attach-data-disk.yaml");
    assert_eq!(actions(&p), vec![("attachDisk".into(), "live".into())]);
    assert_eq!(p["steps"][0]["disk"]["name"], "data");
    assert_eq!(p["steps"][0]["disk"]["size"].as_u64(), Some(100 << 30));
}

#[test]
fn examples_validate() {
    for f in [
        "examples/cpu-2-to-4.yaml",
        "examples/grow-system-disk.yaml",
        "examples/attach-data-disk.yaml",
    ] {
        let out = wukong(&["validate", "-f", f], "");
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "my-vm: valid\n");
    }
    for backend in ["local", "kubevirt"] {
        let out = wukong(
            &[
                "validate",
                "-f",
                "examples/autoscaling.yaml",
                "--backend",
                backend,
            ],
            "",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "elastic: valid\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

const HEAD: &str =
    "apiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata: {name: my-vm}\n";

/// (spec or whole document, exit code, a fragment the error must contain)
fn cases() -> Vec<(String, i32, &'static str)> {
    let spec = |s: &str| format!("{HEAD}spec: {s}\n");
    vec![
        (spec("{memory: 8Gx}"), 1, "spec.memory: '8Gx' has an unknown unit suffix"),
        (spec("{memory: -1Gi}"), 1, "spec.memory: '-1Gi' is not a quantity"),
        (spec("{disks: [{name: system, size: '0.5'}]}"), 1, "spec.disks[0].size: '0.5' is not a whole number of bytes"),
        (spec("{cpu: 0}"), 1, "spec.cpu: must be at least 1"),
        (spec("{cpu: 2.5}"), 1, "spec.cpu: invalid type: floating point `2.5`"),
        (spec("{cpu: 9, maxCpu: 8}"), 1, "spec.cpu: 9 exceeds maxCpu 8"),
        (spec("{memory: 1G}"), 1, "spec.memory: '1G' is not a multiple of 2Mi"),
        (spec("{disks: [{name: a, size: 1Gi}, {name: a, size: 2Gi}]}"), 1, "spec.disks[1].name: duplicate disk name 'a'"),
        (spec("{networks: [{name: n, user: {}}, {name: n, user: {}}]}"), 1, "spec.networks[1].name: duplicate network name 'n'"),
        (spec("{disks: [{name: Data_1, size: 1Gi}]}"), 1, "spec.disks[0].name: 'Data_1' is not a DNS label"),
        (spec("{disks: [{name: a-very-long-disk-name-x, size: 1Gi}]}"), 1, "at most 20 are allowed"),
        (spec("{cpu: 2, colour: red}"), 1, "spec.colour: unknown field `colour`"),
        (spec("{networks: [{name: n, pod: {}}]}"), 1, "source 'pod' cannot be used by the local backend"),
        (spec("{disks: [{name: system, size: 20Gi, bus: scsi}]}"), 1, "spec.disks[0].bus: the local backend attaches virtio disks only"),
        ("apiVersion: v1\nkind: Wukong\nmetadata: {name: my-vm}\n".into(), 1, "apiVersion: 'v1' is not vm.novasphere.dev/v1alpha1"),
        ("apiVersion: vm.novasphere.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: my-vm}\n".into(), 1, "kind: 'VirtualMachine' is not Wukong"),
        (format!("{HEAD}spec: {{cpu: [}}\n"), 1, "invalid YAML"),
        (spec("{maxCpu: 8, autoscaling: {cpu: {min: 1, max: 9}}}"), 1, "spec.autoscaling.cpu.max: 9 exceeds maxCpu 8"),
        (spec("{autoscaling: {disks: [{name: system, maxSize: 40Gi, growAtUsage: 100}]}}"), 1, "spec.autoscaling.disks[0].growAtUsage: 100 is outside 1–99 percent"),
        (spec("{autoscaling: {disks: [{name: logs, maxSize: 40Gi}]}}"), 1, "spec.autoscaling.disks[0].name: unknown disk 'logs'"),
        (spec("{disks: [{name: system, size: 10Gi}]}"), 2, "disk system is 20Gi and disks never shrink"),
        (spec("{disks: [{name: data, size: 10Gi}]}"), 2, "system is the boot disk and can never be detached"),
    ]
}

#[test]
fn bad_input_names_the_field_and_exits_with_its_code() {
    for (doc, code, fragment) in cases() {
        let out = wukong(
            &[
                "plan",
                "-f",
                "-",
                "--observed",
                "examples/observed-my-vm.yaml",
            ],
            &doc,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{doc}\n{stderr}");
        assert!(
            stderr.contains(fragment),
            "expected '{fragment}' in:\n{stderr}"
        );
        assert!(out.stdout.is_empty(), "nothing printed as a plan on error");
    }
}

#[test]
fn multi_document_input_plans_each() {
    let doc = format!("{HEAD}spec: {{cpu: 3}}\n---\n{HEAD}spec: {{memory: 16Gi}}\n");
    let out = wukong(
        &[
            "plan",
            "-f",
            "-",
            "--observed",
            "examples/observed-my-vm.yaml",
            "-o",
            "json",
        ],
        &doc,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["steps"][0]["action"], "growMemory");
}

#[test]
fn kubevirt_plans_cpu_decrease_as_restart_and_restart_policy_is_reported() {
    let observed = "examples/observed-my-vm.yaml";
    let doc = format!(
        "{HEAD}spec: {{cpu: 1, restartPolicy: Automatic, networks: [{{name: default, pod: {{}}}}]}}\n"
    );
    let out = wukong(
        &[
            "plan",
            "-f",
            "-",
            "--observed",
            observed,
            "--backend",
            "kubevirt",
            "-o",
            "json",
        ],
        &doc,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = &v[0]["steps"][0];
    assert_eq!(
        (step["action"].as_str(), step["mode"].as_str()),
        (Some("removeVcpus"), Some("restart"))
    );
    assert_eq!(v[0]["restart"]["allowedNow"], true);
}

#[test]
fn crd_matches_the_committed_file() {
    let out = wukong(&["crd"], "");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/crd.yaml"
    ))
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        committed,
        "run `wukong crd > deploy/crd.yaml`"
    );
}

#[test]
fn render_prints_the_vm_and_one_pvc_per_disk() {
    let out = wukong(
        &[
            "render",
            "-f",
            "examples/attach-data-disk.yaml",
            "-o",
            "json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "VirtualMachine",
            "PersistentVolumeClaim",
            "PersistentVolumeClaim"
        ]
    );
    assert_eq!(
        v[0]["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["hotpluggable"],
        true
    );
}

#[test]
fn a_cluster_without_live_migration_plans_cpu_as_a_restart() {
    let cluster =
        "kind: KubeVirt\nspec: {workloadUpdateStrategy: {workloadUpdateMethods: [Evict]}}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, cluster).unwrap();
    let out = wukong(
        &[
            "plan",
            "-f",
            "examples/cpu-2-to-4.yaml",
            "--observed",
            "examples/observed-my-vm.yaml",
            "--backend",
            "kubevirt",
            "--cluster",
            path.to_str().unwrap(),
            "-o",
            "json",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["steps"][0]["mode"], "restart");
    assert!(
        v[0]["steps"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("LiveMigrate")
    );
}
