//! Pods: the CNI configuration, ADD and DEL as a runtime calls them, the workloads, and the
//! files users apply and delete.

use super::*;

impl Lab {
    pub(super) fn write_cni_config(
        &self,
        state: &State,
        node: &NodeState,
        dual_stack: bool,
    ) -> anyhow::Result<()> {
        let dir = self.node_dir(&node.name);
        std::fs::create_dir_all(dir.join("net.d"))?;
        if state.policy_only {
            // Another CNI: the reference ptp plugin, addresses from host-local (one /24 per
            // node, its state in the node's directory).
            let index = state
                .nodes
                .iter()
                .position(|n| n.name == node.name)
                .unwrap_or(0);
            let conflist = json!({
                "cniVersion": "1.0.0",
                "name": NETWORK,
                "plugins": [{
                    "type": "ptp",
                    "ipMasq": false,
                    "mtu": 1500,
                    "ipam": {"type": "host-local",
                             "ranges": [[{"subnet": format!("{POLICY_ONLY_POOL_PREFIX}.{}.0/24", index + 1)}]],
                             "routes": [{"dst": "0.0.0.0/0"}],
                             "dataDir": dir.join("host-local")},
                }],
            });
            std::fs::write(
                dir.join("net.d/10-twill.conflist"),
                serde_json::to_vec_pretty(&conflist)?,
            )?;
            return Ok(());
        }
        let (datastore, kubeconfig) = match state.kubeconfig {
            Some(_) => (
                "kubernetes".to_string(),
                Some(self.kube_dir().join("cni.kubeconfig")),
            ),
            None => (state.datastore.clone(), None),
        };
        let mut conflist = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "twill",
                "datastore": datastore,
                "nodename": node.name,
                // What twill-node detects (the veth underlay's 1500 minus VXLAN's 50 over
                // IPv4, 70 over IPv6; pods take the smaller); the lab's nodes share one
                // filesystem, so the lab writes it here rather than letting the plugin read
                // the machine's MTU file.
                "mtu": match (state.encap.starts_with("vxlan"), dual_stack) {
                    (true, true) => 1430,
                    (true, false) => 1450,
                    _ => 1500,
                },
                "log_level": "info",
                "log_file_path": dir.join("cni.log"),
                "ipam_lock_file": dir.join("ipam.lock"),
                "ipam": {"type": "twill-ipam", "ipv4_pools": [], "ipv6_pools": [],
                         "assign_ipv4": "true", "assign_ipv6": if dual_stack { "true" } else { "false" }},
            }],
        });
        if let Some(kubeconfig) = kubeconfig {
            conflist["plugins"][0]["kubeconfig"] = json!(kubeconfig);
        }
        std::fs::write(
            dir.join("net.d/10-twill.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(())
    }

    /// The plugin's stdin for one call, as a runtime builds it from the conflist: the
    /// plugin's object with the list's `cniVersion` and `name`.
    pub(super) fn plugin_config(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let path = self.node_dir(node).join("net.d/10-twill.conflist");
        let conflist: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        let mut plugin = conflist["plugins"][0].clone();
        plugin["cniVersion"] = conflist["cniVersion"].clone();
        plugin["name"] = conflist["name"].clone();
        Ok(plugin)
    }

    /// Calls the `twill` plugin (policy-only: the reference `ptp`) inside the node's
    /// namespace, as kubelet's runtime would.
    pub(super) async fn call_cni(
        &self,
        command: &str,
        node: &NodeState,
        pod: &PodState,
        policy_only: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let config = serde_json::to_vec(&self.plugin_config(&node.name)?)?;
        let (program, path) = if policy_only {
            let dir = PathBuf::from(REFERENCE_CNI_DIR);
            (dir.join("ptp"), dir)
        } else {
            (self.tools.twill.clone(), self.tools.cni_dir())
        };
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            pod.namespace, pod.name, pod.container_id
        );
        let mut child =
            tokio::process::Command::from(named::command(&node.netns, program.as_os_str()))
                .env("CNI_COMMAND", command)
                .env("CNI_CONTAINERID", &pod.container_id)
                .env("CNI_NETNS", format!("/run/netns/{}", pod.netns))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_ARGS", args)
                .env("CNI_PATH", path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot run the CNI plugin {}", program.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(&config).await?;
        }
        let output = child.wait_with_output().await?;
        let value: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
        if !output.status.success() {
            bail!(
                "CNI {command} of {} failed: {} {}",
                pod.id(),
                value,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(value)
    }

    /// ADD as a runtime does it: "try again later" (twill-node not ready yet, as right after
    /// `lab up` starts the agents) is retried with back-off for up to 30 s; any other error
    /// is final.
    pub(super) async fn add_with_retries(
        &self,
        node: &NodeState,
        pod: &PodState,
        policy_only: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(20);
        loop {
            match self.call_cni("ADD", node, pod, policy_only).await {
                Err(err)
                    if err.to_string().contains("\"code\":11")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                outcome => return outcome,
            }
        }
    }

    /// Creates one pod: its namespace, its Pod resource, the plugin's ADD, then its
    /// responder (or its own command).
    pub(super) async fn add_pod(
        &self,
        state: &mut State,
        store: &Arc<dyn Datastore>,
        pod: Object<PodSpec>,
        node: Option<String>,
    ) -> anyhow::Result<()> {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        if state.pod(&format!("{namespace}/{name}")).is_some() {
            bail!(
                "pod {namespace}/{name} exists already in lab {:?}",
                self.name
            );
        }
        let node = match node.or_else(|| pod.spec.node_name.clone()) {
            Some(node) => state
                .node(&node)
                .cloned()
                .with_context(|| format!("pod {namespace}/{name}: no node {node:?} in the lab"))?,
            None => state.nodes[(state.created as usize) % state.nodes.len()].clone(),
        };
        state.created += 1;
        let mut pod = pod;
        pod.spec.node_name = Some(node.name.clone());
        pod.metadata.namespace = Some(namespace.clone());
        self.ensure_namespace(store, &namespace).await?;
        Client::new(store.clone())
            .write_all(&[Resource::Pod(pod.clone())], WriteMode::Apply)
            .await?;
        let mut record = PodState {
            namespace: namespace.clone(),
            name: name.clone(),
            node: node.name.clone(),
            netns: format!("{}p.{namespace}.{name}", self.prefix()),
            container_id: format!(
                "{:016x}{:08x}",
                fnv64(&format!("{}/{namespace}/{name}", self.name)),
                state.created
            ),
            ips: Vec::new(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            serves: Vec::new(),
            command: None,
        };
        named::add(&record.netns).map_err(anyhow::Error::msg)?;
        let result = match self
            .add_with_retries(&node, &record, state.policy_only)
            .await
        {
            Ok(result) => result,
            Err(err) => {
                let _ = named::delete(&record.netns);
                return Err(err);
            }
        };
        record.ips = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .collect();
        if state.policy_only {
            // What an orchestrator integration writes for a pod another CNI wired: its
            // WorkloadEndpoint, with the host side of the veth the plugin reported.
            let host_side = result["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i.get("sandbox").is_none())
                .and_then(|i| i["name"].as_str())
                .with_context(|| format!("ptp reported no host interface for {}", record.id()))?
                .to_string();
            let endpoint = workload_endpoint(&pod, &node.name, &host_side, &record.ips);
            Client::new(store.clone())
                .write_all(&[endpoint], WriteMode::Apply)
                .await?;
        }
        let (serves, command) = workload_of(&pod, &state.ports);
        record.serves = serves;
        record.command = command;
        self.start_workload(&record)?;
        if state.policy_only {
            routes_to_pod(state, &record, "add")?;
        }
        state.pods.push(record);
        state::save(state)?;
        Ok(())
    }

    /// Starts the pod's command, or the responder, detached, logging into the lab directory.
    pub(super) fn start_workload(&self, pod: &PodState) -> anyhow::Result<()> {
        let log_path = self
            .dir()
            .join("logs")
            .join(format!("{}.{}.log", pod.namespace, pod.name));
        std::fs::create_dir_all(log_path.parent().expect("a parent"))?;
        let log = std::fs::File::create(&log_path)?;
        let mut command = match &pod.command {
            Some(argv) => {
                let program = resolve_program(&argv[0]);
                let mut command = named::command(&pod.netns, program.as_os_str());
                command.args(&argv[1..]).current_dir(self.dir());
                command
            }
            None => {
                let mut command = named::command(&pod.netns, self.tools.twillctl.as_os_str());
                command.args(["lab", "responder", "--answer", &pod.id()]);
                for port in &pod.serves {
                    command.args(["--port", &port.label()]);
                }
                command
            }
        };
        use std::os::unix::process::CommandExt;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start the workload of {}", pod.id()))?;
        Ok(())
    }

    /// Writes each pod's /etc/hosts (through `ip netns exec`'s /etc/netns/NAME): pods of the
    /// same namespace by name, every pod as `pod.ns` and `pod.ns.svc.cluster.local`.
    pub(super) fn write_hosts(&self, state: &State) -> anyhow::Result<()> {
        for pod in &state.pods {
            let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
            for other in &state.pods {
                for ip in &other.ips {
                    let qualified = format!(
                        "{0}.{1} {0}.{1}.svc {0}.{1}.svc.cluster.local",
                        other.name, other.namespace
                    );
                    if other.namespace == pod.namespace {
                        text.push_str(&format!("{ip}\t{} {qualified}\n", other.name));
                    } else {
                        text.push_str(&format!("{ip}\t{qualified}\n"));
                    }
                }
            }
            let dir = Path::new("/etc/netns").join(&pod.netns);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::write(dir.join("hosts"), text)?;
        }
        Ok(())
    }

    /// Applies a file to the lab's datastore; `v1` Pod documents create pods. Returns a line
    /// per document.
    pub async fn apply(&self, text: &str) -> anyhow::Result<Vec<String>> {
        let mut state = self.state()?;
        let store = self.store(&state).await?;
        let resources = parse_documents(text).map_err(document_errors)?;
        let (pods, others): (Vec<Resource>, Vec<Resource>) =
            resources.into_iter().partition(|r| r.kind() == Kind::Pod);
        let mut lines = Vec::new();
        if !others.is_empty() {
            for (key, outcome) in Client::new(store.clone())
                .write_all(&others, WriteMode::Apply)
                .await?
            {
                lines.push(format!("{key}: {outcome:?}").to_lowercase());
            }
        }
        let mut added = Vec::new();
        let mut kube_pods = Vec::new();
        for resource in pods {
            let Resource::Pod(pod) = resource else {
                continue;
            };
            let id = format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or("")
            );
            if state.pod(&id).is_some() {
                Client::new(store.clone())
                    .write_all(&[Resource::Pod(pod)], WriteMode::Apply)
                    .await?;
                lines.push(format!(
                    "pod {id}: configured (the lab keeps the running pod)"
                ));
                continue;
            }
            added.push(id.clone());
            if state.kubelets {
                kube_pods.push((pod, None));
                continue;
            }
            self.add_pod(&mut state, &store, pod, None).await?;
            lines.push(format!(
                "pod {id}: created on {}",
                state.pod(&id).map(|p| p.node.as_str()).unwrap_or("?")
            ));
        }
        if !kube_pods.is_empty() {
            self.add_kube_pods(&mut state, kube_pods).await?;
            for id in &added {
                lines.push(format!(
                    "pod {id}: created on {}",
                    state.pod(id).map(|p| p.node.as_str()).unwrap_or("?")
                ));
            }
        }
        if !added.is_empty() {
            self.write_hosts(&state)?;
            self.wait_until_answering(&state, Some(&added)).await?;
        }
        self.sync(ANSWER_TIMEOUT).await?;
        Ok(lines)
    }

    /// Deletes what a file names; `v1` Pod documents remove pods.
    pub async fn delete(&self, text: &str) -> anyhow::Result<Vec<String>> {
        let mut state = self.state()?;
        let store = self.store(&state).await?;
        let resources = parse_documents(text).map_err(document_errors)?;
        let mut lines = Vec::new();
        for resource in &resources {
            if let Resource::Pod(pod) = resource {
                let id = format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                    pod.metadata.name.as_deref().unwrap_or("")
                );
                if let Some(index) = state.pods.iter().position(|p| p.id() == id) {
                    let record = state.pods.remove(index);
                    self.remove_pod(&state, &record).await?;
                    state::save(&state)?;
                }
            }
            match store.delete(&resource.key(), None).await {
                Ok(_) => lines.push(format!("{}: deleted", resource.key())),
                Err(twill_shared::datastore::DatastoreError::NotFound { .. }) => {
                    lines.push(format!("{}: not found", resource.key()))
                }
                Err(err) => return Err(err.into()),
            }
        }
        self.write_hosts(&state)?;
        self.sync(ANSWER_TIMEOUT).await?;
        Ok(lines)
    }

    pub(super) async fn remove_pod(&self, state: &State, pod: &PodState) -> anyhow::Result<()> {
        if state.kubelets {
            // The kubelet stops it (and calls CNI DEL) once its Pod is deleted; the lab only
            // drops the name it gave the pod's namespace.
            named::delete(&pod.netns).map_err(anyhow::Error::msg)?;
            return Ok(());
        }
        named::kill_all(&pod.netns);
        if let Some(node) = state.node(&pod.node) {
            self.call_cni("DEL", node, pod, state.policy_only).await?;
            if state.policy_only {
                let key = twill_shared::resource::Key::namespaced(
                    twill_shared::resource::Kind::WorkloadEndpoint,
                    &pod.namespace,
                    &format!("{}-k8s-{}-eth0", node.name, pod.name.replace('-', "--")),
                );
                match self.store(state).await?.delete(&key, None).await {
                    Ok(_) | Err(twill_shared::datastore::DatastoreError::NotFound { .. }) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        named::delete(&pod.netns).map_err(anyhow::Error::msg)?;
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&pod.netns));
        if state.policy_only {
            routes_to_pod(state, pod, "del")?;
        }
        Ok(())
    }

    /// Runs a command in a pod (inheriting this process's standard streams); returns its exit
    /// code.
    pub fn exec(&self, pod: &str, argv: &[String]) -> anyhow::Result<i32> {
        let state = self.state()?;
        let record = state
            .pod(pod)
            .with_context(|| format!("no pod {pod:?} in lab {:?} (pods are NS/POD)", self.name))?;
        if let (true, Some(kubeconfig)) = (state.kubelets, &state.kubeconfig) {
            // The Kubernetes lab: inside the pod's container, as a user runs it.
            let status = std::process::Command::new(crate::kube::binaries().join("kubectl"))
                .args(["--kubeconfig", kubeconfig, "exec", "-i", "-n"])
                .args([&record.namespace, &record.name, "--"])
                .args(argv)
                .status()
                .context("cannot run kubectl (make k8s builds it)")?;
            return Ok(status.code().unwrap_or(1));
        }
        let program = resolve_program(&argv[0]);
        let status = named::command(&record.netns, program.as_os_str())
            .args(&argv[1..])
            .status()
            .with_context(|| format!("cannot run {} in {pod}", argv[0]))?;
        Ok(status.code().unwrap_or(1))
    }
}

/// Policy-only labs' pods are wired by another CNI with no routing of its own: the lab gives
/// every other node a static route to each pod via the pod's node (full labs route by BGP).
pub(super) fn routes_to_pod(state: &State, pod: &PodState, action: &str) -> anyhow::Result<()> {
    let Some(home) = state.node(&pod.node) else {
        return Ok(());
    };
    for node in state.nodes.iter().filter(|n| n.name != pod.node) {
        for ip in &pod.ips {
            let prefix = if ip.contains(':') {
                format!("{ip}/128")
            } else {
                format!("{ip}/32")
            };
            let via = if ip.contains(':') {
                continue;
            } else {
                home.address.as_str()
            };
            let result = named::ip(
                &node.netns,
                &["route", action, &prefix, "via", via, "proto", "static"],
            );
            if let (Err(err), "add") = (result, action) {
                bail!(
                    "cannot route {prefix} from {} to {}: {err}",
                    node.name,
                    home.name
                );
            }
        }
    }
    Ok(())
}

/// A program name as a pod image would have it: `python` is `python3` where only that exists.
pub(super) fn resolve_program(name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    state::find_program(name)
        .or_else(|_| {
            if name == "python" {
                state::find_program("python3")
            } else {
                Err(anyhow::anyhow!(""))
            }
        })
        .unwrap_or_else(|_| PathBuf::from(name))
}

/// What runs in a pod: its command when it has one that runs here, else the responder on
/// the topology's ports and the pod's container ports.
pub(super) fn workload_of(
    pod: &Object<PodSpec>,
    topology_ports: &[Port],
) -> (Vec<Port>, Option<Vec<String>>) {
    let container = pod.spec.containers.first();
    if let Some(argv) = container.and_then(|c| {
        let mut argv = c.command.clone().unwrap_or_default();
        argv.extend(c.args.clone().unwrap_or_default());
        (!argv.is_empty()).then_some(argv)
    }) {
        if argv[0].contains('/') && Path::new(&argv[0]).is_file()
            || resolve_program(&argv[0]).is_absolute()
        {
            return (Vec::new(), Some(argv));
        }
    }
    let mut ports: Vec<Port> = topology_ports.to_vec();
    for container in &pod.spec.containers {
        for port in container.ports.iter().flatten() {
            let candidate = Port {
                name: port.name.clone(),
                port: port.container_port,
                protocol: port
                    .protocol
                    .clone()
                    .unwrap_or_else(|| "TCP".into())
                    .to_ascii_uppercase(),
            };
            if !ports
                .iter()
                .any(|p| p.port == candidate.port && p.protocol == candidate.protocol)
            {
                ports.push(candidate);
            }
        }
    }
    (ports, None)
}

pub(super) fn topology_pod(pod: &crate::topology::PodEntry, ports: &[Port]) -> Object<PodSpec> {
    let container_ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| {
            let mut port = json!({"containerPort": p.port, "protocol": p.protocol});
            if let Some(name) = &p.name {
                port["name"] = json!(name);
            }
            port
        })
        .collect();
    let value = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.ns, "labels": pod.labels},
        "spec": {"containers": [{"name": "responder", "image": "twill/responder", "ports": container_ports}]}});
    match Resource::decode(Kind::Pod, value).expect("a topology pod decodes") {
        Resource::Pod(pod) => pod,
        _ => unreachable!("decoded as a Pod"),
    }
}

pub(super) fn fnv64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The WorkloadEndpoint of a pod another CNI wired (policy-only), as Calico's Kubernetes
/// integration derives it: `<node>-k8s-<pod>-eth0`, the pod's labels with the namespace and
/// orchestrator labels, the namespace profile.
pub(super) fn workload_endpoint(
    pod: &Object<PodSpec>,
    node: &str,
    interface: &str,
    ips: &[String],
) -> Resource {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut labels = pod.metadata.labels.clone().unwrap_or_default();
    labels.insert("projectcalico.org/namespace".into(), namespace.clone());
    labels.insert("projectcalico.org/orchestrator".into(), "k8s".into());
    let networks: Vec<String> = ips
        .iter()
        .map(|ip| {
            if ip.contains(':') {
                format!("{ip}/128")
            } else {
                format!("{ip}/32")
            }
        })
        .collect();
    let document = json!({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
        "metadata": {"name": format!("{node}-k8s-{}-eth0", name.replace('-', "--")),
                     "namespace": namespace, "labels": labels},
        "spec": {"node": node, "orchestrator": "k8s", "pod": name, "endpoint": "eth0",
                 "interfaceName": interface, "ipNetworks": networks,
                 "profiles": [format!("kns.{namespace}")]}});
    let mut resources = parse_documents(&document.to_string()).expect("a well-formed endpoint");
    resources.remove(0)
}
