//! The holes a Felix maintainer would look for, each tried on a lab the way an attacker or an
//! unlucky operator would meet it: a pod sending from another pod's address, a new pod given
//! a freed address that still has flows, a reboot with the CNI configuration still on disk,
//! objects written straight into the datastore that no validation saw.

#![allow(clippy::disallowed_methods)] // Tests run processes, read the clock and sleep.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::LabGuard;

const TOPOLOGY: &str =
    "namespaces:\n  x: {ns: x}\npods:\n  - {ns: x, name: a, labels: {pod: a}}\n  \
    - {ns: x, name: b, labels: {pod: b}}\n  - {ns: x, name: c, labels: {pod: c}}\nports:\n  \
    - {name: serve-80-tcp, port: 80, protocol: TCP}\n";

/// x/a accepts only from x/b (every port and protocol, both families).
const ONLY_B_TO_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-b, namespace: x}\n\
    spec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n";

/// The port the tests' own UDP listeners use (the lab's responders do not serve it).
const LISTEN_PORT: u16 = 7777;

/// Runs `f` on a thread that entered the network namespace `/run/netns/NAME`.
fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let netns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn pod_netns(lab: &LabGuard, pod: &str) -> String {
    let (namespace, name) = pod.split_once('/').unwrap();
    format!("twl-{}.p.{namespace}.{name}", lab.name)
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Gives a pod's eth0 an extra address, as a pod with NET_ADMIN (or a raw socket) can forge
/// any source it likes.
fn forge_address(lab: &LabGuard, pod: &str, address: IpAddr) {
    let netns = pod_netns(lab, pod);
    let (prefix, extra): (String, &[&str]) = match address {
        IpAddr::V4(_) => (format!("{address}/32"), &[]),
        IpAddr::V6(_) => (format!("{address}/128"), &["nodad"]),
    };
    let mut args = vec![
        "netns", "exec", &netns, "ip", "addr", "add", &prefix, "dev", "eth0",
    ];
    args.extend_from_slice(extra);
    run_ok("ip", &args);
}

/// A UDP listener inside a pod, recording (source, payload) of what arrives.
struct Listener {
    received: Arc<Mutex<Vec<(IpAddr, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Listener {
    fn start(netns: &str, port: u16) -> Listener {
        Listener::start_with(netns, port, false)
    }

    /// With `echo`, every datagram is answered (so conntrack sees the flow both ways:
    /// ESTABLISHED).
    fn start_with(netns: &str, port: u16, echo: bool) -> Listener {
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{netns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let received = received.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let netns = std::fs::File::open(&path).unwrap();
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                // [::] with the default bindv6only=0 receives IPv4 too (as ::ffff:a.b.c.d).
                let socket = UdpSocket::bind(("::", port)).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut buffer = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buffer) {
                        if echo {
                            let _ = socket.send_to(&buffer[..n], from);
                        }
                        let source = match from.ip() {
                            IpAddr::V6(v6) => {
                                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
                            }
                            v4 => v4,
                        };
                        let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                        received.lock().unwrap().push((source, text));
                    }
                }
            })
        };
        ready_rx.recv().unwrap();
        Listener {
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn payloads(&self) -> BTreeSet<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, text)| text.clone())
            .collect()
    }

    fn count(&self, payload: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, text)| text == payload)
            .count()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends one datagram from inside a pod, from `source` (any port) to `to`.
fn send_from(lab: &LabGuard, pod: &str, source: IpAddr, to: SocketAddr, payload: &str) {
    let payload = payload.to_string();
    in_netns(&pod_netns(lab, pod), move || {
        let socket = UdpSocket::bind(SocketAddr::new(source, 0))
            .unwrap_or_else(|e| panic!("bind {source}: {e}"));
        let _ = socket.send_to(payload.as_bytes(), to);
    });
}

/// Sends `forged` datagrams and genuine ones alternately until the listener got `wanted`
/// genuine ones (each forged one was sent before a genuine one that arrived, on the same
/// path), or the deadline passes. Returns what the listener received.
fn forged_and_genuine(
    lab: &LabGuard,
    listener: &Listener,
    forged: (&str, IpAddr, &str),
    genuine: (&str, IpAddr, &str),
    to: SocketAddr,
) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while listener.count(genuine.2) < 3 {
        assert!(
            Instant::now() < deadline,
            "the genuine datagrams {:?} never arrived at {to}: {:?}",
            genuine.2,
            listener.payloads()
        );
        send_from(lab, forged.0, forged.1, to, forged.2);
        send_from(lab, genuine.0, genuine.1, to, genuine.2);
        std::thread::sleep(Duration::from_millis(30));
    }
    listener.payloads()
}

fn address_of(lab: &LabGuard, pod: &str, v6: bool) -> IpAddr {
    lab.pod(pod)["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip.as_str()?.parse::<IpAddr>().ok())
        .find(|ip| ip.is_ipv6() == v6)
        .unwrap_or_else(|| panic!("{pod} has no {} address", if v6 { "IPv6" } else { "IPv4" }))
}

#[test]
fn a_pod_cannot_send_from_another_pods_address() {
    let lab = LabGuard::up_with(TOPOLOGY, &["--dual-stack"]);
    lab.run(&["apply", "-f", "-"], Some(ONLY_B_TO_A));
    lab.ok(&["sync", "--timeout", "20"]);
    let listener = Listener::start(&pod_netns(&lab, "x/a"), LISTEN_PORT);
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let (a, b, c) = (
            address_of(&lab, "x/a", v6),
            address_of(&lab, "x/b", v6),
            address_of(&lab, "x/c", v6),
        );
        // x/c takes x/b's address, which the policy on x/a admits.
        forge_address(&lab, "x/c", b);
        let to = SocketAddr::new(a, LISTEN_PORT);
        let forged = format!("forged by c as b, {family}");
        let genuine = format!("from b, {family}");
        let got = forged_and_genuine(
            &lab,
            &listener,
            ("x/c", b, &forged),
            ("x/b", b, &genuine),
            to,
        );
        assert!(
            !got.contains(&forged),
            "{family}: x/c ({c}) reached x/a with x/b's source {b}: {got:?}"
        );
        // Its own address gets it nowhere either: the policy admits only x/b.
        let own = format!("c as itself, {family}");
        send_from(&lab, "x/c", c, to, &own);
        let got = forged_and_genuine(
            &lab,
            &listener,
            ("x/c", c, &own),
            ("x/b", b, &format!("again from b, {family}")),
            to,
        );
        assert!(!got.contains(&own), "{family}: the policy let x/c in");
    }
}

/// `cni.projectcalico.org/allowedSourcePrefixes` on a pod lets it send from those prefixes —
/// only once FelixConfiguration `workloadSourceSpoofing` is `Any`, as in Calico — and never
/// from anything else.
#[test]
fn allowed_source_prefixes_need_workload_source_spoofing_any() {
    let lab = LabGuard::up(TOPOLOGY);
    let router = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: router\n  namespace: x\n  labels: {pod: router}\n  \
        annotations:\n    cni.projectcalico.org/allowedSourcePrefixes: '[\"10.99.0.0/24\"]'\n\
        spec:\n  containers:\n  - {name: responder, image: twill/responder}\n";
    let run = lab.run(&["apply", "-f", "-"], Some(router));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let endpoint = twill_endpoint(&lab, "router");
    assert_eq!(
        endpoint["spec"]["allowSpoofedSourcePrefixes"],
        serde_json::json!(["10.99.0.0/24"]),
        "the CNI plugin copies the annotation into the endpoint: {endpoint}"
    );
    let inside: IpAddr = "10.99.0.7".parse().unwrap();
    let outside: IpAddr = "10.98.0.7".parse().unwrap();
    forge_address(&lab, "x/router", inside);
    forge_address(&lab, "x/router", outside);
    let listener = Listener::start(&pod_netns(&lab, "x/c"), LISTEN_PORT);
    let to = SocketAddr::new(address_of(&lab, "x/c", false), LISTEN_PORT);
    let own = address_of(&lab, "x/router", false);
    // Not yet allowed: workloadSourceSpoofing is Disabled by default.
    let got = forged_and_genuine(
        &lab,
        &listener,
        ("x/router", inside, "inside, disabled"),
        ("x/router", own, "own, disabled"),
        to,
    );
    assert!(!got.contains("inside, disabled"), "{got:?}");
    let status = lab.status_file();
    assert!(
        status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("workloadSourceSpoofing")),
        "the ignored prefixes are reported: {status}"
    );
    let spoofing = "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {workloadSourceSpoofing: Any}\n";
    let run = lab.run(&["apply", "-f", "-"], Some(spoofing));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let deadline = Instant::now() + Duration::from_secs(15);
    while listener.count("inside, any") == 0 {
        assert!(Instant::now() < deadline, "{:?}", listener.payloads());
        send_from(&lab, "x/router", inside, to, "inside, any");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = forged_and_genuine(
        &lab,
        &listener,
        ("x/router", outside, "outside, any"),
        ("x/router", inside, "inside, any"),
        to,
    );
    assert!(
        !got.contains("outside, any"),
        "a prefix the pod was not given stays forbidden: {got:?}"
    );
}

/// A pod's WorkloadEndpoint as stored.
fn twill_endpoint(lab: &LabGuard, pod: &str) -> serde_json::Value {
    let run = common::twillctl_on(
        Some(&lab.datastore()),
        &["get", "workloadendpoints", "-n", "x", "-o", "json"],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let items = value["items"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![value.clone()]);
    items
        .into_iter()
        .find(|e| e["spec"]["pod"] == pod)
        .unwrap_or_else(|| panic!("no endpoint of {pod} in {}", run.stdout))
}

/// A file's permission bits, in octal.
fn mode(path: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode();
    format!("{:o}", mode & 0o777)
}

/// A BGP password from a Secret is written where only root can read it (0600 in a 0700
/// directory), the speaker's control socket is 0600, and no log line, even at debug level,
/// prints it.
#[test]
fn bgp_passwords_stay_out_of_reach_and_out_of_the_logs() {
    const SECRET: &str = "Tw1ll-s3cret-never-printed";
    let lab = LabGuard::up(TOPOLOGY);
    let lab_dir = std::path::PathBuf::from(format!("/run/twill/lab/{}", lab.name));
    // The lab reads Secrets as files (as a Secret volume has them): secrets/NAME/KEY.
    let secret_dir = lab_dir.join("secrets").join("bgp-secrets");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("rack-password"), SECRET).unwrap();
    // The agent again, logging at debug level.
    lab.ok(&["node", "stop", "node-1"]);
    let run = Command::new(env!("CARGO_BIN_EXE_twillctl"))
        .args(["lab", "--name", &lab.name, "node", "start", "node-1"])
        .env("TWILL_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let peer = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: rack}\nspec:\n  \
        peerIP: 198.18.0.1\n  asNumber: 65000\n  password:\n    secretKeyRef: {name: bgp-secrets, key: rack-password}\n";
    let run = lab.run(&["apply", "-f", "-"], Some(peer));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let node_dir = lab_dir.join("node-1");
    let config = node_dir.join("bgpd.toml");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&config).is_ok_and(|t| t.contains(SECRET)) {
        assert!(
            Instant::now() < deadline,
            "the peer's password never reached {}",
            config.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        mode(&config),
        "600",
        "{} holds the password",
        config.display()
    );
    assert_eq!(
        mode(&node_dir),
        "700",
        "{} holds bgpd.toml",
        node_dir.display()
    );
    assert_eq!(
        mode(&node_dir.join("bgpd.sock")),
        "600",
        "the control socket"
    );
    // Sessions are attempted (the rack does not answer) while the logs are read.
    lab.ok(&["sync", "--timeout", "20"]);
    let logs = lab_dir.join("logs").join("node-1.twill-node.log");
    let text = std::fs::read_to_string(&logs).unwrap();
    let pid = lab.status_file()["pid"].as_u64().unwrap();
    let environment = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environment
            .split(|b| *b == 0)
            .any(|v| v == b"TWILL_LOG=debug"),
        "the agent (pid {pid}) logs at debug level"
    );
    assert!(
        !text.contains(SECRET),
        "{} prints the password:\n{}",
        logs.display(),
        text.lines()
            .filter(|l| l.contains(SECRET))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A UDP stream from inside a pod: one socket (so one 5-tuple), a datagram every 20 ms to
/// `to`, counting the answers, until dropped.
struct Stream {
    answers: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(netns: &str, from: SocketAddr, to: SocketAddr) -> Stream {
        let answers = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{netns}");
        let thread = {
            let answers = answers.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let netns = std::fs::File::open(&path).unwrap();
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let socket = UdpSocket::bind(from).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                let mut buffer = [0u8; 1500];
                let mut sequence = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    sequence += 1;
                    let _ = socket.send_to(format!("stream {sequence}").as_bytes(), to);
                    if socket.recv_from(&mut buffer).is_ok() {
                        *answers.lock().unwrap() += 1;
                    }
                }
            })
        };
        Stream {
            answers,
            stop,
            thread: Some(thread),
        }
    }

    fn answers(&self) -> usize {
        *self.answers.lock().unwrap()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pod that takes over a released address: x/b2, labelled pod=b2, on `node`, asking IPAM
/// for exactly `address` (Calico's ipAddrs annotation).
fn successor(address: IpAddr, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: b2\n  namespace: x\n  labels: {{pod: b2}}\n  \
         annotations:\n    cni.projectcalico.org/ipAddrs: '[\"{address}\"]'\n\
         spec:\n  nodeName: {node}\n  containers:\n  - {{name: responder, image: twill/responder}}\n"
    )
}

const POD_B: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\n";

/// Streams UDP from x/a to x/b (answered, so conntrack holds it as established), deletes x/b,
/// gives its address to x/b2 on `b2_node`, and returns the stream, b2's listener and the
/// address, once the lab is in sync.
fn hand_over_bs_address(lab: &LabGuard, b2_node: &str) -> (Stream, Listener, IpAddr) {
    let a = address_of(lab, "x/a", false);
    let b = address_of(lab, "x/b", false);
    let stream = {
        let echo = Listener::start_with(&pod_netns(lab, "x/b"), LISTEN_PORT, true);
        let stream = Stream::start(
            &pod_netns(lab, "x/a"),
            SocketAddr::new(a, 5555),
            SocketAddr::new(b, LISTEN_PORT),
        );
        wait_until("x/b answers the stream", || stream.answers() >= 5);
        drop(echo);
        stream
    };
    let run = lab.run(&["delete", "-f", "-"], Some(POD_B));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = lab.run(&["apply", "-f", "-"], Some(&successor(b, b2_node)));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(address_of(lab, "x/b2", false), b, "x/b2 took x/b's address");
    let listener = Listener::start_with(&pod_netns(lab, "x/b2"), LISTEN_PORT, true);
    lab.ok(&["sync", "--timeout", "20"]);
    (stream, listener, b)
}

/// The stream keeps going for a second and more; nothing of it may arrive.
fn nothing_arrives(listener: &Listener, stream: &Stream, why: &str) {
    let answers = stream.answers();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let got = listener.payloads();
        assert!(
            got.is_empty(),
            "{why}: x/b2 received {} datagrams, {:?} among them",
            got.len(),
            got.iter().next()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stream.answers(), answers, "{why}: x/b2 answered");
}

/// A pod deleted while a UDP flow to it is established: the pod that gets its address next,
/// with a policy that refuses the sender, receives nothing of that flow — the node deleted
/// the flow's conntrack entry before the address could be handed out again — and receives
/// it once a policy allows the sender.
#[test]
fn a_released_address_takes_no_flows_to_its_next_pod() {
    let lab = LabGuard::up(TOPOLOGY);
    let only_c = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b2-only-c, namespace: x}\n\
        spec:\n  podSelector: {matchLabels: {pod: b2}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: c}}\n";
    let run = lab.run(&["apply", "-f", "-"], Some(only_c));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (stream, listener, _) = hand_over_bs_address(&lab, "node-1");
    nothing_arrives(&listener, &stream, "x/a's old flow");
    // The stream was alive all along: allowed, it arrives.
    let allow_a = only_c.replace("pod: c", "pod: a");
    let run = lab.run(&["apply", "-f", "-"], Some(&allow_a));
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_until("x/b2 hears x/a once allowed", || {
        !listener.payloads().is_empty()
    });
}

/// The same across nodes, guarded by the sender's egress policy: x/a on node-1 streams to x/b
/// on node-2; x/b2 takes the address on node-2 and x/a's egress refuses x/b2. node-1's agent
/// deletes its entry of the flow when x/b's endpoint goes, so the egress policy is asked.
#[test]
fn a_released_address_takes_no_flows_across_nodes() {
    let topology = "namespaces:\n  x: {ns: x}\npods:\n  - {ns: x, name: a, labels: {pod: a}, node: node-1}\n  \
        - {ns: x, name: b, labels: {pod: b}, node: node-2}\n  - {ns: x, name: c, labels: {pod: c}, node: node-2}\n\
        ports:\n  - {name: serve-80-tcp, port: 80, protocol: TCP}\n";
    let lab = LabGuard::up_with(topology, &["--nodes", "2"]);
    let deny_b2 = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: a-not-b2, namespace: x}\n\
        spec:\n  selector: pod == 'a'\n  types: [Egress]\n  egress:\n  - {action: Deny, destination: {selector: pod == 'b2'}}\n  - {action: Allow}\n";
    let run = lab.run(&["apply", "-f", "-"], Some(deny_b2));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (stream, listener, _) = hand_over_bs_address(&lab, "node-2");
    nothing_arrives(&listener, &stream, "x/a's old flow from node-1");
    let run = lab.run(&["delete", "-f", "-"], Some(deny_b2));
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_until("x/b2 hears x/a once allowed", || {
        !listener.payloads().is_empty()
    });
}

/// Writes objects straight into the lab's datastore, as another tool would: no validation.
fn write_unchecked(lab: &LabGuard, objects: &[(twill_shared::resource::Key, serde_json::Value)]) {
    let url = lab.datastore();
    let objects = objects.to_vec();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = twill_shared::datastore::connect(&url).await.unwrap();
        for (key, value) in objects {
            store.create(&key, value).await.unwrap();
        }
    });
}

/// One bad object never freezes a node: a host endpoint whose interface name no kernel takes
/// (16+ characters) and a policy with an unparseable rule selector, written straight into the
/// datastore. The node keeps programming everything else (a policy applied afterwards is
/// enforced), the bad policy fails closed for the pod it selects, and both objects are named
/// in the status, the log and a metric.
#[test]
fn one_bad_object_never_freezes_a_node() {
    use twill_shared::resource::{Key, Kind};
    let lab = LabGuard::up(TOPOLOGY);
    let run = lab.run(&["apply", "-f", "-"], Some(ONLY_B_TO_A));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let host_endpoint = serde_json::json!({
        "apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint",
        "metadata": {"name": "node-1-uplink"},
        "spec": {"node": "node-1", "interfaceName": "uplink-with-a-long-name", "expectedIPs": ["198.18.0.11"]}});
    // Its own selector is fine; a rule's is not: it cannot be decoded, so it denies all of
    // x/c's traffic (both directions: its types are not readable either).
    let policy = serde_json::json!({
        "apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
        "metadata": {"name": "c-broken", "namespace": "x"},
        "spec": {"selector": "pod == 'c'",
                 "ingress": [{"action": "Allow", "source": {"selector": "pod in {"}}]}});
    write_unchecked(
        &lab,
        &[
            (
                Key::cluster(Kind::HostEndpoint, "node-1-uplink"),
                host_endpoint,
            ),
            (
                Key::namespaced(Kind::NetworkPolicy, "x", "c-broken"),
                policy,
            ),
        ],
    );
    // Applied afterwards, through the user's path: it must reach the kernel.
    let deny_b = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\n\
        spec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n";
    let run = lab.run(&["apply", "-f", "-"], Some(deny_b));
    assert_eq!(run.code, 0, "{}", run.stderr);
    lab.ok(&["sync", "--timeout", "20"]);
    let matrix = lab.probe(&["80/TCP"]);
    let connected: Vec<(String, String)> = matrix
        .iter()
        .filter(|(_, connected)| **connected)
        .map(|((from, to, _, _), _)| (from.clone(), to.clone()))
        .collect();
    assert_eq!(
        connected,
        [("x/b".to_string(), "x/a".to_string())],
        "x/a takes only x/b; x/b takes nothing (the policy applied after the bad objects); \
         x/c is cut off by its broken policy, both ways: {matrix:?}"
    );
    let status = lab.status_file();
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    let invalid: Vec<String> = status["invalid_objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(invalid.len(), 2, "{invalid:?}");
    assert!(
        invalid
            .iter()
            .any(|i| i.contains("HostEndpoint node-1-uplink") && i.contains("spec.interfaceName")),
        "{invalid:?}"
    );
    assert!(
        invalid
            .iter()
            .any(|i| i.contains("NetworkPolicy x/c-broken")
                && i.contains("spec.ingress[0].source.selector")
                && i.contains("fail closed")),
        "{invalid:?}"
    );
    let metrics = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node_netns(),
            "curl",
            "-s",
            "http://127.0.0.1:9099/metrics",
        ])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("twill_felix_invalid_objects 2"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(format!(
        "/run/twill/lab/{}/logs/node-1.twill-node.log",
        lab.name
    ))
    .unwrap();
    assert!(
        log.contains("invalid object in the datastore") && log.contains("c-broken"),
        "{log}"
    );
}

/// Calls the `twill` plugin inside node-1's namespace as a runtime does (configuration from
/// the lab's conflist on stdin, CNI_* in the environment); exit code and JSON output.
fn call_plugin(lab: &LabGuard, command: &str, pod: &str, netns: &str) -> (i32, serde_json::Value) {
    let conflist_path = format!("/run/twill/lab/{}/node-1/net.d/10-twill.conflist", lab.name);
    let conflist: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conflist_path).unwrap()).unwrap();
    let mut config = conflist["plugins"][0].clone();
    config["cniVersion"] = conflist["cniVersion"].clone();
    if command == "STATUS" {
        // STATUS came with CNI 1.1.0.
        config["cniVersion"] = "1.1.0".into();
    }
    config["name"] = conflist["name"].clone();
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_twillctl")).with_file_name("twill");
    let (namespace, name) = pod.split_once('/').unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node_netns()])
        .arg(&plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("container-of-{name}"))
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
        )
        .env("CNI_PATH", plugin.parent().unwrap())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        &serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    let value = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), value)
}

/// What a reboot leaves of the node's firewall: nothing (every table flushed, Twill's chains
/// and sets gone), while the CNI configuration is still on disk.
fn flush_as_a_reboot_would(lab: &LabGuard) {
    let netns = lab.node_netns();
    for program in ["iptables", "ip6tables"] {
        for table in ["filter", "raw", "mangle", "nat"] {
            for verb in ["-F", "-X"] {
                run_ok(
                    "ip",
                    &["netns", "exec", &netns, program, "-w", "-t", table, verb],
                );
            }
        }
    }
    run_ok("ip", &["netns", "exec", &netns, "ipset", "destroy"]);
}

/// No pod starts unprotected after a reboot: with twill-node down and the node's rules gone
/// (the CNI configuration still there), STATUS and ADD fail with a clear error; once
/// twill-node is back, ADD works and returns only when the pod's policy is in place — the
/// pod's first packet already meets it.
#[test]
fn no_pod_starts_unprotected_after_a_reboot() {
    let lab = LabGuard::up(TOPOLOGY);
    // x/d will take only x/b; the Pod is stored as the API server would hold it.
    let setup = "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x, labels: {pod: d}}\n\
        spec:\n  nodeName: node-1\n  containers:\n  - {name: c, image: twill/responder}\n---\n\
        apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-b-to-d, namespace: x}\n\
        spec:\n  podSelector: {matchLabels: {pod: d}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n";
    let run = common::twillctl_on(Some(&lab.datastore()), &["apply", "-f", "-"], Some(setup));
    assert_eq!(run.code, 0, "{}", run.stderr);
    lab.ok(&["sync", "--timeout", "20"]);
    lab.ok(&["node", "stop", "node-1"]);
    flush_as_a_reboot_would(&lab);
    let netns = format!("twl-{}.p.x.d", lab.name);
    run_ok("ip", &["netns", "add", &netns]);
    let (code, status) = call_plugin(&lab, "STATUS", "x/d", &netns);
    assert_eq!(code, 1, "{status}");
    assert_eq!(status["code"], 50, "STATUS: not available: {status}");
    let (code, refused) = call_plugin(&lab, "ADD", "x/d", &netns);
    assert_eq!(code, 1, "ADD refused: {refused}");
    assert_eq!(refused["code"], 11, "try again later: {refused}");
    assert_eq!(
        refused["msg"], "twill-node is not ready on this node",
        "{refused}"
    );
    assert!(
        refused["details"]
            .as_str()
            .unwrap()
            .contains("twill-node does not answer"),
        "{refused}"
    );
    // Nothing was done: no interface in the pod.
    let links = run_ok("ip", &["netns", "exec", &netns, "ip", "-o", "link"]);
    assert!(!links.contains("eth0"), "{links}");
    // Listening before the pod is wired, so its first packets are caught as they come.
    let echo = Listener::start_with(&netns, LISTEN_PORT, true);
    lab.ok(&["node", "start", "node-1"]);
    // The runtime retries until twill-node is ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    let added = loop {
        let (code, value) = call_plugin(&lab, "ADD", "x/d", &netns);
        if code == 0 {
            break value;
        }
        assert_eq!(
            value["code"], 11,
            "only 'try again later' until ready: {value}"
        );
        assert!(Instant::now() < deadline, "ADD never worked: {value}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let d: IpAddr = added["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The very first packets: x/b is answered at once (x/d's chains are there), x/c never.
    let answered = |pod: &str| {
        let source = address_of(&lab, pod, false);
        in_netns(&pod_netns(&lab, pod), move || {
            let socket = UdpSocket::bind(SocketAddr::new(source, 0)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            socket
                .send_to(b"first", SocketAddr::new(d, LISTEN_PORT))
                .unwrap();
            socket.recv_from(&mut [0u8; 64]).is_ok()
        })
    };
    assert!(
        answered("x/b"),
        "x/b's first packet to x/d was not answered"
    );
    assert!(!answered("x/c"), "x/c reached x/d");
    assert_eq!(echo.count("first"), 1, "only x/b's packet arrived");
    let (code, value) = call_plugin(&lab, "DEL", "x/d", &netns);
    assert_eq!(code, 0, "{value}");
}

/// `/livez` is the main loop's watchdog: twill-node restarted with a FAKE iptables-nft-save
/// (a script first on its PATH that passes its first two calls to the real one, then hangs,
/// standing in for a wedged kernel or lock) gets stuck in a drift-repair read, and /livez
/// fails within the watchdog timeout (2 s here) — while the first calls kept it live.
#[test]
fn livez_fails_when_the_main_loop_hangs_in_a_fake_iptables_save() {
    let lab = LabGuard::up(TOPOLOGY);
    lab.ok(&["node", "stop", "node-1"]);
    let real = run_ok("sh", &["-c", "command -v iptables-nft-save"]);
    let fake = tempfile::tempdir().unwrap();
    let script = fake.path().join("iptables-nft-save");
    let count = fake.path().join("calls");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(cat {count} 2>/dev/null || echo 0)\necho $((n + 1)) > {count}\n\
             [ \"$n\" -ge 2 ] && exec sleep 120\nexec {real} \"$@\"\n",
            count = count.display(),
            real = real.trim()
        ),
    )
    .unwrap();
    run_ok("chmod", &["755", script.to_str().unwrap()]);
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new(env!("CARGO_BIN_EXE_twillctl"))
        .args(["lab", "--name", &lab.name, "node", "start", "node-1"])
        .env("PATH", &path)
        .env("TWILL_WATCHDOG_TIMEOUT", "2")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let health = |path: &str| {
        let output = Command::new("ip")
            .args(["netns", "exec", &lab.node_netns(), "curl", "-s", "-m", "2"])
            .args(["-w", " %{http_code}"])
            .arg(format!("http://127.0.0.1:9099{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    wait_until("the agent is ready on the real calls", || {
        health("/readyz").ends_with(" 200")
    });
    assert!(health("/livez").ends_with(" 200"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !health("/livez").ends_with(" 503") {
        assert!(
            Instant::now() < deadline,
            "/livez never failed: {} (calls {:?}; log {})",
            health("/livez"),
            std::fs::read_to_string(&count).ok(),
            std::fs::read_to_string(format!(
                "/run/twill/lab/{}/logs/node-1.twill-node.log",
                lab.name
            ))
            .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        health("/livez").contains("the main loop made no progress"),
        "{}",
        health("/livez")
    );
    // lab down (the guard) kills what runs in the node's namespace, the hanging script too.
}
