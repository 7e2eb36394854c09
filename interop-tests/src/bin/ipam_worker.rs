//! A separate process that allocates addresses through Twill's IPAM, as a CNI plugin would:
//! `twill-ipam-worker URL NODE COUNT TAG [LOCKFILE]`. For each allocation it prints
//! `allocated IP HANDLE`, then writes the WorkloadEndpoint (on Kubernetes: the Pod with the
//! CNI plugin's address annotations) and prints `endpoint IP HANDLE`, so
//! a test that kills it with SIGKILL knows which allocations must show up as leaks.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context};
use twill_ipam::runtime::{AssignArgs, Ipam};
use twill_shared::datastore::connect;
use twill_shared::resource::{Key, Kind};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (url, node, count, tag, lock) = match args.as_slice() {
        [_, url, node, count, tag] => (url, node, count, tag, None),
        [_, url, node, count, tag, lock] => (url, node, count, tag, Some(lock.into())),
        _ => bail!("usage: twill-ipam-worker URL NODE COUNT TAG [LOCKFILE]"),
    };
    let count: u32 = count.parse().context("COUNT is a number")?;
    let store = connect(url).await?;
    let ipam = Ipam::new(store.clone(), node, lock);
    let mut stdout = std::io::stdout();
    for i in 0..count {
        let container = format!("{tag}{i}");
        let handle = format!("stress.{container}");
        let pod = format!("pod-{tag}-{i}");
        let assigned = ipam
            .assign(&AssignArgs {
                handle: handle.clone(),
                attributes: BTreeMap::from([
                    ("namespace".to_string(), "stress".to_string()),
                    ("pod".to_string(), pod.clone()),
                    ("node".to_string(), node.clone()),
                ]),
                ipv4: true,
                ..AssignArgs::default()
            })
            .await?;
        let ip = assigned.addresses[0];
        writeln!(stdout, "allocated {} {handle}", ip.addr())?;
        stdout.flush()?;
        if url.starts_with("kubernetes") {
            // On Kubernetes the endpoint is the Pod, with the addresses the CNI plugin writes
            // into its annotations.
            let pod_object = serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "stress", "annotations": {
                    "cni.projectcalico.org/podIP": ip.to_string(),
                    "cni.projectcalico.org/podIPs": ip.to_string(),
                    "cni.projectcalico.org/containerID": container}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "twill/none"}]},
            });
            store
                .create(&Key::namespaced(Kind::Pod, "stress", &pod), pod_object)
                .await?;
        } else {
            let endpoint = serde_json::json!({
                "apiVersion": "projectcalico.org/v3",
                "kind": "WorkloadEndpoint",
                "metadata": {"name": format!("{node}-k8s-{pod}-eth0"), "namespace": "stress"},
                "spec": {"node": node, "pod": pod, "containerID": container, "endpoint": "eth0",
                         "orchestrator": "k8s", "ipNetworks": [ip.to_string()]},
            });
            let key = Key::namespaced(
                Kind::WorkloadEndpoint,
                "stress",
                &format!("{node}-k8s-{pod}-eth0"),
            );
            store.create(&key, endpoint).await?;
        }
        writeln!(stdout, "endpoint {} {handle}", ip.addr())?;
        stdout.flush()?;
    }
    Ok(())
}
