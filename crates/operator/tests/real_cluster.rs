//! Against a real cluster with KubeVirt, the CRD installed and the operator running
//! (`kubectl apply -k deploy/`). Ignored by default; run with
//! `WUKONG_TEST_NAMESPACE=default cargo nextest run -p wukong-operator --run-ignored only`
//! (uses KUBECONFIG or the in-cluster config).

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use wukong_api::Wukong;

#[tokio::test]
#[ignore = "needs a cluster with KubeVirt and the operator installed"]
async fn cpu_and_memory_hot_plug_on_a_real_cluster() {
    let ns = std::env::var("WUKONG_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
    let client = kube::Client::try_default().await.expect("a cluster");
    let api: Api<Wukong> = Api::namespaced(client, &ns);
    let w: Wukong = serde_yaml::from_str(
        "apiVersion: vm.novasphere.dev/v1alpha1\nkind: Wukong\nmetadata: {name: wukong-e2e}\nspec:\n  cpu: 1\n  memory: 1Gi\n  maxCpu: 4\n  maxMemory: 4Gi\n  restartPolicy: Never\n  disks:\n  - {name: system, size: 5Gi}\n",
    )
    .unwrap();
    api.create(&PostParams::default(), &w).await.unwrap();
    let converged = |w: &Wukong| {
        let st = w.status.as_ref();
        st.and_then(|s| s.observed_generation) == w.metadata.generation
            && st.and_then(|s| s.phase) == Some(wukong_api::Phase::Running)
    };
    let wait = |what: &'static str| {
        let api = api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let w = api.get("wukong-e2e").await.unwrap();
                if converged(&w) {
                    return w;
                }
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    wait("the VM to run").await;
    api.patch(
        "wukong-e2e",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cpu": 2, "memory": "2Gi"}})),
    )
    .await
    .unwrap();
    let w = wait("the hot-plug").await;
    let guest = w.status.unwrap().guest.unwrap();
    assert_eq!(guest.cpus_online, Some(2));
    api.delete("wukong-e2e", &DeleteParams::default())
        .await
        .unwrap();
}
