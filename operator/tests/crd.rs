//! The committed CRD must be what the types generate, and carry the admission rules.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::PathBuf;

use dynamo_operator::crd::{DynamoCluster, crd_yaml};
use kube::CustomResourceExt;
use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/dynamocluster.yaml")
}

#[test]
fn committed_crd_matches_the_types() {
    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    let generated = crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/dynamocluster.yaml differs from what operator/src/crd.rs generates: run `cargo run -p dynamo-operator --bin crdgen` and commit the result"
    );
}

fn schema() -> Value {
    let crd = serde_json::to_value(DynamoCluster::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn rules(v: &Value) -> Vec<String> {
    v["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["rule"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn crd_names_scope_and_columns() {
    let crd = serde_json::to_value(DynamoCluster::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "dynamoclusters.dynamo.dev");
    assert_eq!(crd["spec"]["group"], "dynamo.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "DynamoCluster");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "dc");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert!(v["subresources"]["status"].is_object());
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert_eq!(
        v["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Replicas",
            "Ready",
            "Epoch",
            "Handoffs",
            "Available",
            "Rebalancing",
            "Age"
        ]
    );
}

#[test]
fn spec_rules_are_in_the_schema() {
    let spec = &schema()["properties"]["spec"];
    let top = rules(spec);
    assert!(
        top.contains(&"self.replication.w <= self.replication.n".to_string()),
        "{top:?}"
    );
    assert!(top.contains(&"self.replication.r <= self.replication.n".to_string()));
    assert!(top.contains(&"self.replicas >= self.replication.n".to_string()));
    let partitions = &spec["properties"]["partitions"];
    let p = rules(partitions);
    assert!(
        p.iter()
            .any(|r| r.starts_with("self in [8, 16,") && r.ends_with("65536]")),
        "{p:?}"
    );
    assert!(p.contains(&"self == oldSelf".to_string()));
    assert_eq!(partitions["default"], 256);
    assert!(rules(&spec["properties"]["replication"]).contains(&"self == oldSelf".to_string()));
    assert_eq!(spec["properties"]["replication"]["default"]["n"], 3);
    assert_eq!(
        spec["properties"]["replication"]["properties"]["n"]["maximum"],
        7.0
    );
    assert_eq!(
        spec["properties"]["replication"]["properties"]["conflicts"]["enum"],
        serde_json::json!(["siblings", "lww"])
    );
    assert_eq!(
        spec["properties"]["service"]["properties"]["type"]["enum"],
        serde_json::json!(["ClusterIP", "NodePort", "LoadBalancer"])
    );
    let required: Vec<&str> = spec["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(required, ["image", "replicas"]);
}

#[test]
fn status_lists_merge_by_key() {
    let status = &schema()["properties"]["status"]["properties"];
    assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    assert_eq!(
        status["conditions"]["x-kubernetes-list-map-keys"],
        serde_json::json!(["type"])
    );
    assert_eq!(status["members"]["x-kubernetes-list-type"], "map");
    assert_eq!(
        status["members"]["x-kubernetes-list-map-keys"],
        serde_json::json!(["name"])
    );
    assert_eq!(
        status["members"]["items"]["properties"]["state"]["enum"][0],
        "Pending"
    );
}

#[test]
fn schema_is_structural() {
    // No `anyOf`/`oneOf` without types, no `$ref`: what the API server accepts as structural.
    fn walk(v: &Value, path: &str) {
        if let Some(o) = v.as_object() {
            assert!(!o.contains_key("$ref"), "$ref at {path}");
            for key in ["anyOf", "oneOf", "allOf"] {
                if o.contains_key(key) {
                    // Allowed only as value validation beside a type (k8s int-or-string).
                    assert!(
                        o.contains_key("type") || o.contains_key("x-kubernetes-int-or-string"),
                        "{key} without a type at {path}"
                    );
                }
            }
            for (k, child) in o {
                walk(child, &format!("{path}/{k}"));
            }
        } else if let Some(a) = v.as_array() {
            for (i, child) in a.iter().enumerate() {
                walk(child, &format!("{path}/{i}"));
            }
        }
    }
    walk(&schema(), "");
}
