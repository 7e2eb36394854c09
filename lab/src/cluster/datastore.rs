//! The lab's datastore: the cluster's resources (pools, nodes, peers) and namespaces.

use super::*;

impl Lab {
    pub(super) async fn store(&self, state: &State) -> anyhow::Result<Arc<dyn Datastore>> {
        connect(&state.datastore)
            .await
            .with_context(|| format!("cannot open the lab's datastore {}", state.datastore))
    }

    pub(super) async fn write_cluster_resources(
        &self,
        store: &Arc<dyn Datastore>,
        state: &State,
        options: &UpOptions,
    ) -> anyhow::Result<()> {
        let mut documents = vec![
            json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "default-ipv4-ippool"},
            "spec": {"cidr": POD_POOL, "blockSize": 26, "natOutgoing": false, "nodeSelector": "all()"}}),
        ];
        if options.dual_stack {
            documents.push(
                json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                "metadata": {"name": "default-ipv6-ippool"},
                "spec": {"cidr": POD_POOL_V6, "blockSize": 122, "nodeSelector": "all()"}}),
            );
        }
        if state.policy_only {
            documents.push(
                json!({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                "metadata": {"name": "default"}, "spec": {"interfacePrefix": "veth"}}),
            );
        }
        if options.tor.is_some() {
            // Each subnet's nodes peer with the rack on their own subnet.
            for subnet in 0..options.subnets.clamp(1, 8) {
                documents.push(
                    json!({"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer",
                    "metadata": {"name": format!("rack-subnet-{subnet}")},
                    "spec": {"peerIP": gateway(subnet), "asNumber": crate::tor::TOR_AS,
                        "nodeSelector": format!("twill.lab/subnet == '{subnet}'")}}),
                );
            }
        }
        let (vxlan, ipip) = match state.encap.as_str() {
            "vxlan" => ("Always", "Never"),
            "vxlan-cross-subnet" => ("CrossSubnet", "Never"),
            "ipip" => ("Never", "Always"),
            "ipip-cross-subnet" => ("Never", "CrossSubnet"),
            _ => ("Never", "Never"),
        };
        documents[0]["spec"]["vxlanMode"] = json!(vxlan);
        documents[0]["spec"]["ipipMode"] = json!(ipip);
        if options.dual_stack {
            // IPv6 has VXLAN (vxlan-v6.twill) but no IP-in-IP.
            documents[1]["spec"]["vxlanMode"] = json!(vxlan);
        }
        for node in &state.nodes {
            let mut bgp = json!({"ipv4Address": format!("{}/24", node.address)});
            if options.dual_stack {
                bgp["ipv6Address"] = json!(format!("{}/64", node_v6(&node.address)));
            }
            documents.push(json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name,
                    "twill.lab/subnet": subnet_of(&node.address).to_string()}},
                "spec": {"bgp": bgp}}));
        }
        let text: String = documents.iter().map(|d| format!("---\n{d}\n")).collect();
        let resources = parse_documents(&text).map_err(document_errors)?;
        Client::new(store.clone())
            .write_all(&resources, WriteMode::Apply)
            .await?;
        Ok(())
    }

    /// The control plane's directory (Kubernetes datastore): certificates, kubeconfigs, etcd's
    /// data, logs.
    pub(super) fn kube_dir(&self) -> PathBuf {
        self.dir().join("kube")
    }

    /// The datastore URL the nodes' processes use: on Kubernetes, the API server on the
    /// underlay (the machine's tools reach it through the loopback relay instead).
    pub(super) fn node_datastore(&self, state: &State) -> String {
        match state.kubeconfig {
            Some(_) => format!(
                "kubernetes:{}",
                self.kube_dir().join("node.kubeconfig").display()
            ),
            None => state.datastore.clone(),
        }
    }

    pub(super) async fn ensure_namespace(
        &self,
        store: &Arc<dyn Datastore>,
        namespace: &str,
    ) -> anyhow::Result<()> {
        let key = Key::cluster(Kind::Namespace, namespace);
        if store.get(&key).await?.is_none() {
            let resource = namespace_resource(namespace, &BTreeMap::new());
            Client::new(store.clone())
                .write_all(&[resource], WriteMode::Apply)
                .await?;
        }
        // The API server admits a pod only when its service account exists; without a
        // controller manager in the lab, the lab makes each namespace's `default` account as
        // that controller would.
        if store.endpoints_from_pods() {
            let key = Key::namespaced(Kind::ServiceAccount, namespace, "default");
            if store.get(&key).await?.is_none() {
                let value = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": namespace}});
                let resource = Resource::decode(Kind::ServiceAccount, value)?;
                Client::new(store.clone())
                    .write_all(&[resource], WriteMode::Apply)
                    .await?;
            }
        }
        Ok(())
    }
}

pub(super) fn namespace_resource(name: &str, labels: &BTreeMap<String, String>) -> Resource {
    let mut labels = labels.clone();
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    let value = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    Resource::decode(Kind::Namespace, value).expect("a namespace document decodes")
}
