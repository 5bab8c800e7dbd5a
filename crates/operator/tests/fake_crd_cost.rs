//! The fake API server refuses the CRDs a real kube-apiserver refuses for their CEL cost, and
//! accepts the ones it accepts (`fixtures/crd-verdicts.json`, recorded from and checked
//! against the real server by `real_apiserver.rs`).

mod common;

use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;
use wukong_fakeapi::FakeApi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_cost_estimate_agrees_with_the_real_one() {
    let api = FakeApi::start(Default::default()).await.unwrap();
    let client = kube::Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
    let crds: Api<DynamicObject> = Api::all_with(
        client,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd = serde_json::to_value(wukong_api::crd::crd()).unwrap();
    let fixture: Value = serde_json::from_str(include_str!("fixtures/crd-verdicts.json")).unwrap();
    for (i, v) in fixture["variants"].as_array().unwrap().iter().enumerate() {
        let variant = common::crd_variant(&crd, i, v["remove"].as_str());
        let obj: DynamicObject = serde_json::from_value(variant).unwrap();
        let accepted = match crds.create(&PostParams::default(), &obj).await {
            Ok(_) => true,
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{}", e.message);
                assert!(
                    e.message.contains("estimated rule cost exceeds budget"),
                    "{}",
                    e.message
                );
                false
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            accepted,
            v["accepted"].as_bool().unwrap(),
            "{}",
            v["remove"]
        );
    }
}
