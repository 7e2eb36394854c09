//! The `twill` and `twill-ipam` binaries, called exactly as a container runtime calls them.
//!
//! Each test gets a temporary directory (SQLite datastore, IPAM lock, log file) and fresh
//! namespaces: a "node" with an uplink (198.18.0.1/32 and a default route, so proxy ARP for
//! 169.254.1.1 answers) and one namespace per pod. Every plugin runs as
//! `ip netns exec <node> env CNI_COMMAND=… … <plugin>` with the network configuration on
//! stdin, as libcni hands it over (the plugin object plus `cniVersion`, `name`, and for
//! chained plugins `prevResult` and the capabilities' `runtimeConfig`). Nothing touches the
//! root namespace.
//!
//! Expected values come from the CNI spec (result forms, error codes, DEL idempotence) and
//! from Calico (host interface `<prefix>` + 11 hex digits of sha1("<namespace>.<pod>"), MAC
//! ee:ee:ee:ee:ee:ee, /32 and /128 addresses, gateways 169.254.1.1 and
//! fe80::ecee:eeff:feee:eeee, endpoint names and labels, IPAM blocks and handles), never from
//! the plugin's own functions. The datastore is read raw, in Calico's schema.
#![allow(
    clippy::disallowed_methods,
    reason = "an integration test: it runs the plugins and `ip`, and polls with a deadline"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use twill_shared::client::{Client, WriteMode};
use twill_shared::datastore::{connect, Datastore};
use twill_shared::resource::document::parse_documents;
use twill_shared::resource::Kind;

/// The network name of every configuration; handles are `<name>.<containerID>`.
const NETWORK: &str = "k8s-pod-network";
/// The node name every configuration names (its `-` is doubled in endpoint names).
const NODE: &str = "node-1";
/// The node's uplink address.
const UPLINK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The default IPv4 pool.
const POOL_V4: &str = "10.90.0.0/24";
/// The default IPv6 pool.
const POOL_V6: &str = "fd00:90::/120";
/// Calico's IPv6 gateway: the link-local address of the ee:ee:ee:ee:ee:ee host end.
const GATEWAY_V6: &str = "fe80::ecee:eeff:feee:eeee";
/// Calico's IPv4 gateway, answered by proxy ARP.
const GATEWAY_V4: &str = "169.254.1.1";

/// `ip netns add` mounts /run/netns on first use; concurrent first uses can trip on it.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn twill() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_twill"))
}

fn twill_ipam() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_twill-ipam"))
}

/// The directory of the binaries (target/debug): the runtime's CNI_PATH.
fn plugin_dir() -> String {
    twill()
        .parent()
        .expect("the binary lives in a directory")
        .display()
        .to_string()
}

/// A pod: its network namespace and what the runtime says about it.
#[derive(Debug, Clone)]
struct Pod {
    /// The network namespace's name (under /run/netns).
    netns: String,
    /// CNI_CONTAINERID.
    container: String,
    /// K8S_POD_NAMESPACE.
    namespace: String,
    /// K8S_POD_NAME.
    name: String,
}

impl Pod {
    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// Calico's host-side name with Twill's prefix: `tw` + the first 11 hex digits of
    /// sha1("<namespace>.<pod>").
    fn host_ifname(&self) -> String {
        let digest = Sha1::digest(format!("{}.{}", self.namespace, self.name).as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("tw{}", &hex[..11])
    }

    /// Calico's endpoint name `<node>-k8s-<pod>-<interface>`, each `-` in a part doubled.
    fn endpoint_name(&self) -> String {
        [NODE, "k8s", &self.name, "eth0"]
            .iter()
            .map(|part| part.replace('-', "--"))
            .collect::<Vec<_>>()
            .join("-")
    }

    /// The IPAM handle of the pod's addresses.
    fn handle(&self) -> String {
        format!("{NETWORK}.{}", self.container)
    }

    /// The runtime's environment for ADD, DEL and CHECK of this pod.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CNI_CONTAINERID".into(), self.container.clone()),
            ("CNI_NETNS".into(), self.netns_path()),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    self.namespace, self.name, self.container
                ),
            ),
            ("CNI_PATH".into(), plugin_dir()),
        ]
    }
}

/// What a plugin call printed and how it exited.
#[derive(Debug)]
struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    log: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {self}"))
    }

    /// The result of a successful call (Null when it printed nothing).
    fn success(&self, what: &str) -> Value {
        assert_eq!(self.status, Some(0), "{what} failed: {self}");
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// The CNI error of a failed call: (code, msg, details).
    fn error(&self, what: &str) -> (u64, String, String) {
        assert_ne!(self.status, Some(0), "{what} should have failed: {self}");
        let error = self.json();
        let code = error["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: no error code: {self}"));
        let text = |key: &str| error[key].as_str().unwrap_or_default().to_string();
        (code, text("msg"), text("details"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- plugin log\n{}",
            self.status, self.stdout, self.stderr, self.log
        )
    }
}

/// One test's world: a temporary directory with the datastore, a node namespace with an
/// uplink, pod namespaces on demand. The namespaces are deleted on drop, also on panic.
struct Lab {
    dir: tempfile::TempDir,
    base: String,
    node: String,
    namespaces: Mutex<Vec<String>>,
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn Datastore>,
}

impl Lab {
    fn new() -> Lab {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("tw-cni-{}-{n}", std::process::id());
        let node = format!("{base}-node");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let url = format!("sqlite:{}/twill.db", dir.path().display());
        let store = runtime
            .block_on(connect(&url))
            .expect("open the test datastore");
        let lab = Lab {
            dir,
            base,
            node: node.clone(),
            namespaces: Mutex::new(Vec::new()),
            runtime,
            store,
        };
        lab.add_netns(&node);
        ip(&["-n", &node, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &node, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        ip(&["-n", &node, "link", "set", "up0", "up"]);
        ip(&["-n", &node, "link", "set", "up1", "up"]);
        ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("{UPLINK}/32"),
            "dev",
            "up0",
        ]);
        ip(&["-n", &node, "route", "add", "default", "dev", "up0"]);
        lab
    }

    fn add_netns(&self, name: &str) {
        let _serial = NETNS_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.namespaces
            .lock()
            .expect("namespace list")
            .push(name.to_string());
        ip(&["netns", "add", name]);
    }

    /// A fresh pod namespace; the pod is `x/<name>` with container ID `<name>-ctr`.
    fn pod(&self, name: &str) -> Pod {
        let n = self.namespaces.lock().expect("namespace list").len();
        let netns = format!("{}-pod{n}", self.base);
        self.add_netns(&netns);
        Pod {
            netns,
            container: format!("{name}-ctr"),
            namespace: "x".into(),
            name: name.into(),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    fn datastore_url(&self) -> String {
        format!("sqlite:{}", self.path("twill.db"))
    }

    /// The `twill` plugin object of the conflist, with `cniVersion` and `name` added.
    fn config(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "twill",
            "datastore": self.datastore_url(),
            "nodename": NODE,
            "mtu": 1450,
            "log_level": "debug",
            "log_file_path": self.path("cni.log"),
            "ipam_lock_file": self.path("ipam.lock"),
            "ipam": {"type": "twill-ipam"},
            // No twill-node runs beside these tests: the plugin alone is under test.
            "node_health_address": "none",
        })
    }

    /// Stores resources given as JSON (what `twillctl apply -f` does).
    fn apply(&self, documents: &[Value]) {
        let text: String = documents.iter().map(|d| format!("---\n{d}\n")).collect();
        let resources = parse_documents(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        self.runtime
            .block_on(Client::new(self.store.clone()).write_all(&resources, WriteMode::Apply))
            .expect("apply");
    }

    /// Stores a `v1` Pod for `pod` with labels app=web and the given annotations.
    fn store_pod(&self, pod: &Pod, annotations: Value) {
        self.apply(&[json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": {"app": "web"},
                "annotations": annotations,
            },
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]},
        })]);
    }

    /// Runs `plugin` in the node namespace as a runtime does.
    fn run(&self, plugin: &Path, command: &str, env: &[(String, String)], stdin: &Value) -> Run {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node, "env"])
            .arg(format!("CNI_COMMAND={command}"))
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .arg(plugin)
            .env_remove("TWILL_DATASTORE")
            .env_remove("TWILL_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ip netns exec");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.to_string().as_bytes())
            .expect("write the configuration");
        let output = child.wait_with_output().expect("wait for the plugin");
        Run {
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            log: std::fs::read_to_string(self.path("cni.log")).unwrap_or_default(),
        }
    }

    fn add(&self, pod: &Pod, config: &Value) -> Value {
        self.run(twill(), "ADD", &pod.env(), config)
            .success(&format!("ADD {}", pod.name))
    }

    /// DEL as libcni sends it: with the ADD result as prevResult.
    fn del(&self, pod: &Pod, config: &Value, prev: &Value) {
        let run = self.run(twill(), "DEL", &pod.env(), &with_prev(config, prev));
        assert_eq!(run.success(&format!("DEL {}", pod.name)), Value::Null);
    }

    fn list(&self, kind: Kind) -> Vec<Value> {
        self.runtime
            .block_on(self.store.list(Some(kind), None))
            .expect("list")
            .items
            .into_iter()
            .map(|stored| stored.value)
            .collect()
    }

    /// The workload endpoints, by name.
    fn endpoints(&self) -> BTreeMap<String, Value> {
        self.list(Kind::WorkloadEndpoint)
            .into_iter()
            .map(|wep| (wep["metadata"]["name"].as_str().unwrap().to_string(), wep))
            .collect()
    }

    fn delete_endpoint(&self, pod: &Pod) {
        let listing = self
            .runtime
            .block_on(self.store.list(Some(Kind::WorkloadEndpoint), None))
            .expect("list");
        let stored = listing
            .items
            .into_iter()
            .find(|s| s.key.name == pod.endpoint_name())
            .expect("the endpoint exists");
        self.runtime
            .block_on(self.store.delete(&stored.key, None))
            .expect("delete the endpoint");
    }

    /// Every allocated address and its handle, read from the IPAM blocks as Calico stores
    /// them: `allocations[ordinal]` indexes `attributes`, which carry `handle_id`.
    fn allocations(&self) -> BTreeMap<IpAddr, String> {
        let mut held = BTreeMap::new();
        for block in self.list(Kind::IpamBlock) {
            let spec = &block["spec"];
            let cidr: IpNet = spec["cidr"].as_str().unwrap().parse().unwrap();
            for (ordinal, slot) in spec["allocations"].as_array().unwrap().iter().enumerate() {
                let Some(index) = slot.as_u64() else { continue };
                let handle = spec["attributes"][index as usize]["handle_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                held.insert(nth_address(cidr, ordinal), handle);
            }
        }
        held
    }

    /// The handles the IPAMHandle objects name.
    fn handles(&self) -> BTreeSet<String> {
        self.list(Kind::IpamHandle)
            .into_iter()
            .map(|h| h["spec"]["handleID"].as_str().unwrap().to_string())
            .collect()
    }

    /// Asserts that IPAM holds nothing for `pod`'s container.
    fn assert_released(&self, pod: &Pod) {
        let held = self.allocations();
        assert!(
            !held.values().any(|h| *h == pod.handle()),
            "{} still holds addresses: {held:?}",
            pod.handle()
        );
        assert!(
            !self.handles().contains(&pod.handle()),
            "the IPAMHandle {} is still there",
            pod.handle()
        );
    }

    /// Interface names in the node namespace.
    fn node_links(&self) -> BTreeSet<String> {
        links(&self.node)
    }

    /// The node's routes of protocol 211 (Twill's endpoint routes), both families.
    fn host_routes(&self) -> String {
        let v4 = ip(&["-n", &self.node, "-4", "route", "show", "proto", "211"]);
        let v6 = ip(&["-n", &self.node, "-6", "route", "show", "proto", "211"]);
        format!("{v4}{v6}")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names = self
            .namespaces
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default();
        for name in names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

fn with_prev(config: &Value, prev: &Value) -> Value {
    let mut config = config.clone();
    config["prevResult"] = prev.clone();
    config
}

fn pool(name: &str, cidr: &str, extra: Value) -> Value {
    let mut spec = json!({"cidr": cidr});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
           "metadata": {"name": name}, "spec": spec})
}

fn nth_address(cidr: IpNet, ordinal: usize) -> IpAddr {
    match cidr {
        IpNet::V4(net) => IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) + ordinal as u32)),
        IpNet::V6(net) => IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) + ordinal as u128)),
    }
}

/// Run `ip` and return its standard output; panic if it fails.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_json(args: &[&str]) -> Value {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    serde_json::from_str(&ip(&all)).expect("ip -j prints JSON")
}

fn links(netns: &str) -> BTreeSet<String> {
    ip_json(&["-n", netns, "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The global addresses of the pod's eth0, as CIDRs.
fn pod_addresses(pod: &Pod) -> BTreeSet<String> {
    let link = &ip_json(&["-n", &pod.netns, "addr", "show", "dev", "eth0"])[0];
    link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The addresses of a result's `ips`.
fn result_addresses(result: &Value) -> Vec<IpNet> {
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips in {result}"))
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn only_v4(result: &Value) -> IpNet {
    let addresses = result_addresses(result);
    assert_eq!(addresses.len(), 1, "{result}");
    assert!(addresses[0].addr().is_ipv4(), "{result}");
    addresses[0]
}

/// Runs `f` on a thread that has entered the network namespace `netns`.
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let file = File::open(&path).expect("open the namespace");
                setns(&file, CloneFlags::CLONE_NEWNET).expect("enter the namespace");
                f()
            })
            .join()
            .expect("the namespace thread panicked")
    })
}

/// Listens on TCP `port` in the pod, connects from the node namespace to `target`, and
/// returns what the pod's listener sent (None if no connection succeeded within 5 s).
fn tcp_from_node(lab: &Lab, pod: &Pod, port: u16, target: SocketAddr) -> Option<String> {
    let listener =
        in_netns(&pod.netns, || TcpListener::bind(("0.0.0.0", port))).expect("listen in the pod");
    listener.set_nonblocking(true).expect("non-blocking");
    let greeting = format!("hello from {}", pod.name);
    std::thread::scope(|scope| {
        let server = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(6);
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.write_all(greeting.as_bytes());
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let received = in_netns(&lab.node, || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(1))
                {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    let mut text = String::new();
                    let _ = stream.read_to_string(&mut text);
                    return Some(text);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        });
        let _ = server.join();
        received
    })
}

// ---------------------------------------------------------------------------------------
// 1. ADD

#[test]
fn add_wires_the_pod_and_writes_its_endpoint() {
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    let pod = lab.pod("a");
    lab.store_pod(&pod, json!({}));
    let result = lab.add(&pod, &lab.config("1.0.0"));

    // The result, in the 1.0.0 form.
    let host = pod.host_ifname();
    assert_eq!(result["cniVersion"], "1.0.0");
    let pod_mac = ip_json(&["-n", &pod.netns, "link", "show", "eth0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        result["interfaces"],
        json!([
            {"name": host, "mac": "ee:ee:ee:ee:ee:ee"},
            {"name": "eth0", "mac": pod_mac, "sandbox": pod.netns_path()},
        ]),
        "{result}"
    );
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 1, "{result}");
    assert_eq!(ips[0]["interface"], 1);
    assert!(
        ips[0].get("version").is_none(),
        "1.0.0 results have no version: {result}"
    );
    let address = only_v4(&result);
    assert_eq!(address.prefix_len(), 32);
    assert!(POOL_V4.parse::<IpNet>().unwrap().contains(&address.addr()));
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GATEWAY_V4}])
    );

    // The pod: the address, MTU, the gateway route and the default route.
    assert_eq!(pod_addresses(&pod), set(&[&address.to_string()]));
    let eth0 = &ip_json(&["-n", &pod.netns, "link", "show", "eth0"])[0];
    assert_eq!(eth0["mtu"], 1450);
    let routes = ip(&["-n", &pod.netns, "-4", "route", "show"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );

    // The node: the host end and its route, protocol 211.
    let host_link = &ip_json(&["-n", &lab.node, "link", "show", &host])[0];
    assert_eq!(host_link["address"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(
        lab.host_routes().trim(),
        format!("{} dev {host} scope link", address.addr())
    );

    // The endpoint, as Calico writes it.
    let endpoints = lab.endpoints();
    assert_eq!(
        endpoints.keys().cloned().collect::<Vec<_>>(),
        ["node--1-k8s-a-eth0"]
    );
    let wep = &endpoints["node--1-k8s-a-eth0"];
    assert_eq!(wep["metadata"]["namespace"], "x");
    assert_eq!(
        wep["metadata"]["labels"],
        json!({"app": "web", "projectcalico.org/namespace": "x",
               "projectcalico.org/orchestrator": "k8s"})
    );
    let spec = &wep["spec"];
    assert_eq!(spec["ipNetworks"], json!([address.to_string()]));
    assert_eq!(
        spec["ports"],
        json!([{"name": "http", "protocol": "TCP", "port": 80}])
    );
    assert_eq!(spec["interfaceName"], host);
    assert_eq!(spec["mac"], pod_mac);
    assert_eq!(spec["containerID"], pod.container);
    assert_eq!(spec["node"], NODE);
    assert_eq!(spec["pod"], "a");
    assert_eq!(spec["endpoint"], "eth0");
    assert_eq!(spec["orchestrator"], "k8s");
    assert_eq!(spec["profiles"], json!(["kns.x"]));

    // IPAM: the address belongs to the container's handle.
    assert_eq!(
        lab.allocations(),
        BTreeMap::from([(address.addr(), pod.handle())])
    );

    // The node reaches the pod.
    let reply = tcp_from_node(&lab, &pod, 80, SocketAddr::new(address.addr(), 80));
    assert_eq!(reply.as_deref(), Some("hello from a"));
}

// ---------------------------------------------------------------------------------------
// 2. Older callers and VERSION

#[test]
fn old_versions_get_their_result_form_and_version_lists_them() {
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    for version in ["0.3.1", "0.4.0"] {
        let pod = lab.pod(&format!("v{}", version.replace('.', "")));
        let result = lab.add(&pod, &lab.config(version));
        assert_eq!(result["cniVersion"], version, "{result}");
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 1, "{result}");
        // CNI 0.3.x / 0.4.0: each address says its family.
        assert_eq!(ips[0]["version"], "4", "{result}");
        assert_eq!(ips[0]["interface"], 1, "{result}");
        let address = only_v4(&result);
        assert_eq!(pod_addresses(&pod), set(&[&address.to_string()]));
        assert_eq!(result["interfaces"][1]["name"], "eth0");
    }

    for plugin in [twill(), twill_ipam()] {
        let run = lab.run(
            plugin,
            "VERSION",
            &[],
            &json!({"cniVersion": "1.1.0", "name": NETWORK}),
        );
        let answer = run.success("VERSION");
        assert_eq!(answer["cniVersion"], "1.1.0");
        let supported: BTreeSet<&str> = answer["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(supported.contains(version), "{version}: {answer}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. Dual stack

#[test]
fn dual_stack_gives_a_v4_and_a_v6_address_and_both_default_routes() {
    let lab = Lab::new();
    lab.apply(&[
        pool("poola", POOL_V4, json!({})),
        pool("pool6", POOL_V6, json!({})),
    ]);
    let pod = lab.pod("a");
    let mut config = lab.config("1.0.0");
    config["ipam"]["assign_ipv6"] = json!("true");
    let result = lab.add(&pod, &config);

    let addresses = result_addresses(&result);
    assert_eq!(addresses.len(), 2, "{result}");
    let v4 = addresses.iter().find(|a| a.addr().is_ipv4()).unwrap();
    let v6 = addresses.iter().find(|a| a.addr().is_ipv6()).unwrap();
    assert_eq!(v4.prefix_len(), 32);
    assert_eq!(v6.prefix_len(), 128);
    assert!(POOL_V4.parse::<IpNet>().unwrap().contains(&v4.addr()));
    assert!(POOL_V6.parse::<IpNet>().unwrap().contains(&v6.addr()));
    let routes = result["routes"].as_array().unwrap();
    assert!(
        routes.contains(&json!({"dst": "0.0.0.0/0", "gw": GATEWAY_V4})),
        "{result}"
    );
    assert!(
        routes.contains(&json!({"dst": "::/0", "gw": GATEWAY_V6})),
        "{result}"
    );

    assert_eq!(
        pod_addresses(&pod),
        set(&[&v4.to_string(), &v6.to_string()])
    );
    let v6_routes = ip(&["-n", &pod.netns, "-6", "route", "show", "default"]);
    assert!(
        v6_routes.contains(&format!("default via {GATEWAY_V6} dev eth0")),
        "{v6_routes}"
    );
    let host_routes = lab.host_routes();
    assert!(
        host_routes.contains(&format!("{} dev {} ", v6.addr(), pod.host_ifname())),
        "{host_routes}"
    );
    let wep = &lab.endpoints()[&pod.endpoint_name()];
    assert_eq!(
        wep["spec"]["ipNetworks"],
        json!([v4.to_string(), v6.to_string()])
    );
    assert_eq!(
        lab.allocations(),
        BTreeMap::from([(v4.addr(), pod.handle()), (v6.addr(), pod.handle())])
    );
}

// ---------------------------------------------------------------------------------------
// 4. DEL

#[test]
fn del_removes_everything_and_is_idempotent() {
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    let config = lab.config("1.0.0");
    let pod = lab.pod("a");
    lab.store_pod(&pod, json!({}));
    let result = lab.add(&pod, &config);

    for round in 1..=2 {
        lab.del(&pod, &config, &result);
        assert_eq!(links(&pod.netns), set(&["lo"]), "round {round}");
        assert_eq!(
            lab.node_links(),
            set(&["lo", "up0", "up1"]),
            "round {round}"
        );
        assert_eq!(lab.host_routes().trim(), "", "round {round}");
        assert!(lab.endpoints().is_empty(), "round {round}");
        lab.assert_released(&pod);
        assert!(
            lab.allocations().is_empty(),
            "round {round}: {:?}",
            lab.allocations()
        );
    }

    // The pod's namespace went before DEL (a runtime that tore the sandbox down first).
    let gone = lab.pod("b");
    let result = lab.add(&gone, &config);
    ip(&["netns", "del", &gone.netns]);
    lab.del(&gone, &config, &result);
    assert_eq!(lab.node_links(), set(&["lo", "up0", "up1"]));
    assert!(lab.endpoints().is_empty());
    lab.assert_released(&gone);

    // A container that was never added, with and without a namespace path.
    let never = lab.pod("never");
    let run = lab.run(twill(), "DEL", &never.env(), &config);
    run.success("DEL of a container never added");
    let without_netns: Vec<_> = never
        .env()
        .into_iter()
        .filter(|(k, _)| k != "CNI_NETNS")
        .collect();
    let run = lab.run(twill(), "DEL", &without_netns, &config);
    run.success("DEL without CNI_NETNS");
}

#[test]
fn del_of_an_old_sandbox_leaves_the_pods_new_sandbox_alone() {
    // The runtime replaced the pod's sandbox (same pod, new container and namespace) and
    // only then tears the old one down: the host end and the endpoint now belong to the new
    // container, which must keep its network.
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    let config = lab.config("1.0.0");
    let old = lab.pod("a");
    let old_result = lab.add(&old, &config);
    let mut new = lab.pod("a");
    new.container = "a-ctr-2".into();
    let new_result = lab.add(&new, &config);
    let address = only_v4(&new_result);

    lab.del(&old, &config, &old_result);
    assert!(
        lab.node_links().contains(&new.host_ifname()),
        "DEL of the old sandbox removed the new sandbox's host end"
    );
    assert_eq!(
        lab.host_routes().trim(),
        format!("{} dev {} scope link", address.addr(), new.host_ifname())
    );
    assert_eq!(
        lab.endpoints()[&new.endpoint_name()]["spec"]["containerID"],
        "a-ctr-2"
    );
    assert_eq!(
        lab.allocations(),
        BTreeMap::from([(address.addr(), new.handle())])
    );
    let run = lab.run(
        twill(),
        "CHECK",
        &new.env(),
        &with_prev(&config, &new_result),
    );
    run.success("CHECK of the new sandbox");
}

// ---------------------------------------------------------------------------------------
// 5. CHECK

#[test]
fn check_passes_after_add_and_names_what_is_missing() {
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    let config = lab.config("1.0.0");
    let pod = lab.pod("a");
    let result = lab.add(&pod, &config);
    let check = with_prev(&config, &result);
    let address = only_v4(&result);
    let host = pod.host_ifname();

    assert_eq!(
        lab.run(twill(), "CHECK", &pod.env(), &check)
            .success("CHECK after ADD"),
        Value::Null
    );

    ip(&["-n", &lab.node, "route", "del", &address.to_string()]);
    let (code, msg, details) = lab
        .run(twill(), "CHECK", &pod.env(), &check)
        .error("CHECK without the host route");
    assert_eq!(code, 102, "{msg}: {details}");
    let text = format!("{msg}: {details}");
    assert!(
        text.contains(&format!("host route {address}")) && text.contains("missing"),
        "{text}"
    );
    assert!(text.contains(&host), "{text}");

    ip(&[
        "-n",
        &lab.node,
        "route",
        "add",
        &address.to_string(),
        "dev",
        &host,
        "scope",
        "link",
        "proto",
        "211",
    ]);
    lab.run(twill(), "CHECK", &pod.env(), &check)
        .success("CHECK with the host route back");

    lab.delete_endpoint(&pod);
    let (code, msg, details) = lab
        .run(twill(), "CHECK", &pod.env(), &check)
        .error("CHECK without the endpoint");
    assert_eq!(code, 102, "{msg}: {details}");
    let text = format!("{msg}: {details}");
    assert!(
        text.contains("workload endpoint") && text.contains(&pod.endpoint_name()),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Bad configuration and environment

/// Asserts that nothing was made: no link beyond the uplink, an empty pod, no IPAM state,
/// no endpoint.
fn assert_untouched(lab: &Lab, pod: &Pod) {
    assert_eq!(lab.node_links(), set(&["lo", "up0", "up1"]));
    assert_eq!(links(&pod.netns), set(&["lo"]));
    assert!(lab.allocations().is_empty(), "{:?}", lab.allocations());
    assert!(lab.handles().is_empty(), "{:?}", lab.handles());
    assert!(lab.list(Kind::IpamBlock).is_empty());
    assert!(lab.endpoints().is_empty());
}

#[test]
fn bad_configuration_and_environment_are_refused_before_any_change() {
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    let pod = lab.pod("a");
    let config = lab.config("1.0.0");

    let mut cases = Vec::new();
    let mut bad = config.clone();
    bad["mtu"] = json!("big");
    cases.push(("mtu", bad));
    let mut bad = config.clone();
    bad["ipam"]["assign_ipv4"] = json!("yes");
    cases.push(("ipam.assign_ipv4", bad));
    let mut bad = config.clone();
    bad["datastore"] = json!("mysql://x");
    cases.push(("datastore", bad));
    for (key, bad) in cases {
        let (code, msg, details) = lab.run(twill(), "ADD", &pod.env(), &bad).error(key);
        assert_eq!(code, 7, "{key}: {msg}: {details}");
        assert!(msg.contains(key), "{key}: {msg}: {details}");
        assert_untouched(&lab, &pod);
    }

    let regular_file = lab.path("not-a-netns");
    std::fs::write(&regular_file, "x").unwrap();
    for (variable, value, says) in [
        ("CNI_IFNAME", "eth0/x", "interface name"),
        ("CNI_CONTAINERID", "../x", "identifier"),
        (
            "CNI_NETNS",
            regular_file.as_str(),
            "is not a network namespace",
        ),
        ("CNI_NETNS", "run/netns/x", "absolute"),
    ] {
        let env: Vec<(String, String)> = pod
            .env()
            .into_iter()
            .map(|(k, v)| {
                if k == variable {
                    (k, value.to_string())
                } else {
                    (k, v)
                }
            })
            .collect();
        let (code, msg, details) = lab
            .run(twill(), "ADD", &env, &config)
            .error(&format!("{variable}={value}"));
        assert_eq!(code, 4, "{variable}={value}: {msg}: {details}");
        assert!(msg.contains(variable), "{variable}: {msg}");
        assert!(details.contains(says), "{variable}: {details}");
        assert_untouched(&lab, &pod);
    }

    // Keys the plugin does not know are ignored (Calico's own, and anything new).
    let mut extended = config.clone();
    extended["policy"] = json!({"type": "k8s"});
    extended["kubernetes"] = json!({"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"});
    extended["something_new"] = json!({"nested": [1, 2, 3]});
    let result = lab.add(&pod, &extended);
    assert_eq!(pod_addresses(&pod), set(&[&only_v4(&result).to_string()]));
}

// ---------------------------------------------------------------------------------------
// 7. A failed ADD undoes everything

#[test]
fn a_failed_add_leaves_nothing_behind() {
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    let pod = lab.pod("a");
    lab.store_pod(&pod, json!({}));
    ip(&[
        "-n", &pod.netns, "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let (code, msg, details) = lab
        .run(twill(), "ADD", &pod.env(), &lab.config("1.0.0"))
        .error("ADD into a pod that has eth0");
    assert!(code >= 100, "{code}: {msg}: {details}");
    assert!(
        format!("{msg}: {details}").contains("eth0"),
        "{msg}: {details}"
    );

    assert_eq!(lab.node_links(), set(&["lo", "up0", "up1"]));
    assert_eq!(lab.host_routes().trim(), "");
    assert!(lab.endpoints().is_empty());
    lab.assert_released(&pod);
    assert!(lab.allocations().is_empty(), "{:?}", lab.allocations());
    let eth0 = &ip_json(&["-n", &pod.netns, "link", "show", "eth0"])[0];
    assert_eq!(eth0["link"], "other0", "the pod's own eth0 was touched");
}

// ---------------------------------------------------------------------------------------
// 8. Pool exhaustion

#[test]
fn an_exhausted_pool_fails_the_fifth_add_cleanly() {
    let lab = Lab::new();
    lab.apply(&[pool("tiny", "10.91.0.0/30", json!({"blockSize": 30}))]);
    let config = lab.config("1.0.0");
    let mut given = BTreeSet::new();
    let mut hosts = set(&["lo", "up0", "up1"]);
    for n in 0..4 {
        let pod = lab.pod(&format!("p{n}"));
        let address = only_v4(&lab.add(&pod, &config));
        assert!("10.91.0.0/30"
            .parse::<IpNet>()
            .unwrap()
            .contains(&address.addr()));
        given.insert(address.addr());
        hosts.insert(pod.host_ifname());
    }
    assert_eq!(given.len(), 4);

    let fifth = lab.pod("p4");
    let (code, msg, details) = lab
        .run(twill(), "ADD", &fifth.env(), &config)
        .error("the fifth ADD");
    assert_eq!(code, 100, "{msg}: {details}");
    assert_eq!(lab.node_links(), hosts);
    assert_eq!(links(&fifth.netns), set(&["lo"]));
    assert_eq!(lab.host_routes().lines().count(), 4);
    assert!(!lab.endpoints().contains_key(&fifth.endpoint_name()));
    assert_eq!(lab.endpoints().len(), 4);
    lab.assert_released(&fifth);
    assert_eq!(
        lab.allocations().keys().copied().collect::<BTreeSet<_>>(),
        given
    );
}

// ---------------------------------------------------------------------------------------
// 9. Calico's pod annotations

#[test]
fn calico_annotations_choose_the_address_and_the_pool() {
    let lab = Lab::new();
    lab.apply(&[
        pool("poola", POOL_V4, json!({})),
        pool("poolb", "10.92.0.0/24", json!({})),
    ]);
    let config = lab.config("1.0.0");

    let fixed = lab.pod("fixed");
    lab.store_pod(
        &fixed,
        json!({"cni.projectcalico.org/ipAddrs": "[\"10.90.0.77\"]"}),
    );
    let result = lab.add(&fixed, &config);
    assert_eq!(only_v4(&result).to_string(), "10.90.0.77/32");
    assert_eq!(pod_addresses(&fixed), set(&["10.90.0.77/32"]));
    assert_eq!(
        lab.allocations()
            .get(&"10.90.0.77".parse::<IpAddr>().unwrap()),
        Some(&fixed.handle())
    );

    let chosen = lab.pod("chosen");
    lab.store_pod(
        &chosen,
        json!({"cni.projectcalico.org/ipv4pools": "[\"poolb\"]"}),
    );
    let address = only_v4(&lab.add(&chosen, &config));
    assert!(
        "10.92.0.0/24"
            .parse::<IpNet>()
            .unwrap()
            .contains(&address.addr()),
        "{address} is not from poolb"
    );
    assert_eq!(pod_addresses(&chosen), set(&[&address.to_string()]));
}

// ---------------------------------------------------------------------------------------
// 10. twill-ipam under another main plugin

#[test]
fn twill_ipam_serves_the_reference_bridge_plugin() {
    // Debian's reference `bridge` plugin delegating to twill-ipam. (`ptp` cannot use an
    // IPAM that returns /32 addresses without a gateway, as calico-ipam and twill-ipam do: it
    // puts the gateway on its host end and deletes the subnet route the address implies.)
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    let pod = lab.pod("a");
    let mut config = lab.config("1.0.0");
    config["type"] = json!("bridge");
    config["bridge"] = json!("twbr0");
    let env: Vec<(String, String)> = pod
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "CNI_PATH" {
                (k, format!("/usr/lib/cni:{v}"))
            } else {
                (k, v)
            }
        })
        .collect();
    let bridge = Path::new("/usr/lib/cni/bridge");
    let result = lab.run(bridge, "ADD", &env, &config).success("bridge ADD");
    let address = only_v4(&result);
    assert!(POOL_V4.parse::<IpNet>().unwrap().contains(&address.addr()));
    assert_eq!(pod_addresses(&pod), set(&[&address.to_string()]));
    assert_eq!(
        lab.allocations(),
        BTreeMap::from([(address.addr(), pod.handle())])
    );

    lab.run(bridge, "DEL", &env, &with_prev(&config, &result))
        .success("bridge DEL");
    lab.assert_released(&pod);
    assert!(lab.allocations().is_empty());
}

// ---------------------------------------------------------------------------------------
// 11. Chaining portmap after twill

#[test]
fn portmap_chains_after_twill() {
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    let pod = lab.pod("a");
    let base = lab.config("1.0.0");
    let portmap_config = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "snat": true,
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
        ]},
    });
    let mut env = pod.env();
    for (k, v) in &mut env {
        if k == "CNI_PATH" {
            *v = format!("/usr/lib/cni:{v}");
        }
    }
    let portmap = Path::new("/usr/lib/cni/portmap");

    // ADD in list order; each plugin gets the previous one's result.
    let twill_result = lab.run(twill(), "ADD", &env, &base).success("twill ADD");
    let final_result = lab
        .run(
            portmap,
            "ADD",
            &env,
            &with_prev(&portmap_config, &twill_result),
        )
        .success("portmap ADD");
    assert_eq!(final_result["ips"], twill_result["ips"]);
    let address = only_v4(&twill_result);
    let nat = ip(&["netns", "exec", &lab.node, "iptables-save", "-t", "nat"]);
    assert!(
        nat.contains("--dport 8080") && nat.contains(&format!("{}:80", address.addr())),
        "{nat}"
    );
    let reply = tcp_from_node(&lab, &pod, 80, SocketAddr::new(IpAddr::V4(UPLINK), 8080));
    assert_eq!(reply.as_deref(), Some("hello from a"), "{nat}");

    // DEL in reverse order, each with the cached final result.
    lab.run(
        portmap,
        "DEL",
        &env,
        &with_prev(&portmap_config, &final_result),
    )
    .success("portmap DEL");
    lab.run(twill(), "DEL", &env, &with_prev(&base, &final_result))
        .success("twill DEL");
    let nat = ip(&["netns", "exec", &lab.node, "iptables-save", "-t", "nat"]);
    assert!(!nat.contains("8080"), "{nat}");
    assert_eq!(lab.node_links(), set(&["lo", "up0", "up1"]));
    lab.assert_released(&pod);
}

// ---------------------------------------------------------------------------------------
// 12. GC and STATUS (1.1.0)

#[test]
fn gc_removes_what_no_valid_attachment_uses_and_status_reports_pools() {
    let lab = Lab::new();
    lab.apply(&[pool("poola", POOL_V4, json!({}))]);
    let config = lab.config("1.1.0");
    let mut c1 = lab.pod("a");
    c1.container = "c1".into();
    let mut c2 = lab.pod("b");
    c2.container = "c2".into();
    let a1 = only_v4(&lab.add(&c1, &config));
    lab.add(&c2, &config);
    // A pod of another network on the same node (its handle other-net.c3).
    let mut other_config = config.clone();
    other_config["name"] = json!("other-net");
    let mut c3 = lab.pod("c");
    c3.container = "c3".into();
    let a3 = only_v4(&lab.add(&c3, &other_config));
    let env = [("CNI_PATH".to_string(), plugin_dir())];
    let everything = (lab.endpoints(), lab.allocations());
    assert_eq!(everything.0.len(), 3);

    // A runtime that names no valid attachments: nothing can be judged stale.
    lab.run(twill(), "GC", &env, &config)
        .success("GC without valid attachments");
    assert_eq!((lab.endpoints(), lab.allocations()), everything);

    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    lab.run(twill(), "GC", &env, &gc).success("GC");
    assert_eq!(
        lab.endpoints().keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([c1.endpoint_name(), c3.endpoint_name()]),
        "x/c belongs to other-net: this network's GC leaves it"
    );
    assert_eq!(
        lab.allocations(),
        BTreeMap::from([
            (a1.addr(), c1.handle()),
            (a3.addr(), "other-net.c3".to_string())
        ])
    );
    lab.assert_released(&c2);

    assert_eq!(
        lab.run(twill(), "STATUS", &env, &config).success("STATUS"),
        Value::Null
    );
    lab.apply(&[pool("poola", POOL_V4, json!({"disabled": true}))]);
    let (code, msg, details) = lab
        .run(twill(), "STATUS", &env, &config)
        .error("STATUS with the only pool disabled");
    assert_eq!(code, 50, "{msg}: {details}");
}
