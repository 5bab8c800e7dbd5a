//! The fake API server's authorizer gives the verdicts a real kube-apiserver gave
//! (`fixtures/rbac-verdicts.json`, checked against the real server by `real_apiserver.rs`),
//! with the same RBAC objects installed from `deploy/`.

mod common;

use serde_json::Value;
use wukong_fakeapi::FakeApi;
use wukong_fakeapi::auth::{Attributes, Token, authorize};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_authorizer_agrees_with_the_real_one() {
    let api = FakeApi::start(Default::default()).await.unwrap();
    for file in ["rbac.yaml", "guest-exec.yaml"] {
        common::install(&api, file, None);
    }
    common::install(&api, "guest-exec-namespace.yaml", Some("tenant"));
    let sa = Token {
        token: String::new(),
        user: common::operator_user(),
        groups: vec![
            "system:serviceaccounts".into(),
            "system:authenticated".into(),
        ],
    };
    let verdicts: Value =
        serde_json::from_str(include_str!("fixtures/rbac-verdicts.json")).unwrap();
    for case in verdicts["cases"].as_array().unwrap() {
        let text = |k: &str| case[k].as_str().map(String::from);
        let a = Attributes {
            verb: match case["verb"].as_str().unwrap() {
                "get" => "get",
                "list" => "list",
                "watch" => "watch",
                "create" => "create",
                "update" => "update",
                "patch" => "patch",
                "delete" => "delete",
                other => panic!("verb {other}"),
            },
            group: text("group").unwrap(),
            resource: text("resource").unwrap(),
            subresource: text("subresource"),
            namespace: text("namespace"),
            name: None,
        };
        let got = authorize(&api.store, &sa, &a);
        assert_eq!(
            got.is_ok(),
            case["allowed"].as_bool().unwrap(),
            "{case}: {got:?}"
        );
        if let Err(e) = got {
            assert_eq!(e.code, 403);
            assert!(e.message.contains(&sa.user), "{}", e.message);
        }
    }
}
