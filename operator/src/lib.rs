//! The dynamo-rs Kubernetes operator: the `DynamoCluster` resource (`dynamo.dev/v1alpha1`)
//! and its reconciler.
//!
//! The reconciler is a pipeline: [`builders`] turn a spec into desired objects (pure),
//! [`plan`] decides membership steps from what was observed (pure), [`controller`] applies
//! and executes them, and [`status`] computes the status and conditions (pure). Node admin
//! calls go through the [`admin::NodeAdmin`] trait.

pub mod admin;
pub mod builders;
pub mod controller;
pub mod crd;
pub mod metrics;
pub mod plan;
pub mod status;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;

use std::time::Duration;

use kube::Client;

/// Waits until the API server serves the `DynamoCluster` CRD, polling discovery (the
/// operator starts before or after the CRD is installed; it never exits for that).
pub async fn wait_for_crd(client: &Client, poll: Duration) {
    let mut warned = false;
    loop {
        match client
            .list_api_group_resources(&format!("{}/{}", crd::GROUP, crd::VERSION))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == "dynamoclusters") => {
                tracing::info!("the DynamoCluster CRD is served");
                return;
            }
            Ok(_) | Err(_) if !warned => {
                tracing::warn!(
                    "dynamoclusters.{} is not served yet (apply crds/dynamocluster.yaml); polling discovery",
                    crd::GROUP
                );
                warned = true;
            }
            _ => {}
        }
        tokio::time::sleep(poll).await;
    }
}
