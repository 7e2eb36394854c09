//! The apply edge against a real kernel, as root: real iptables (nft and legacy) and ipset.
//!
//! Every test makes its own network namespaces (`tw-fx-<pid>-<n>`, deleted on drop, also when
//! the test panics) and runs the applier on a thread that has entered one, so the iptables
//! and ipset children it starts program that namespace; the root namespace's firewall is
//! never touched. Observations go through `ip netns exec`.
#![cfg(feature = "runtime")]
#![allow(
    clippy::disallowed_methods,
    reason = "an integration test: it runs ip, iptables and ipset"
)]

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use twill_felix::apply::{Applier, ApplierConfig, ApplyStats, Backend, BackendChoice};
use twill_felix::ir::{
    Chain, Dataplane, Family, Hook, IpSet, Match, Member, Ports, Rule, SetKind, Side, Table,
    Target, MARK_ACCEPT, MARK_MASK,
};

/// `ip netns add` mounts /run/netns on first use; concurrent first uses can trip on it.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let netns = Netns {
            name: format!("tw-fx-{}-{n}", std::process::id()),
        };
        {
            let _serial = NETNS_LOCK
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            run("ip", &["netns", "add", &netns.name]);
        }
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    /// Run a program inside the namespace; its output; panic if it fails.
    fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Run `f` on a fresh thread that has entered the namespace.
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                let netns = File::open(&path).expect("open the namespace");
                setns(&netns, CloneFlags::CLONE_NEWNET).expect("enter the namespace");
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("run a program");
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace and an applier of one backend for it.
struct Node {
    netns: Netns,
    applier: Applier,
    backend: Backend,
}

impl Node {
    fn new(backend: Backend) -> Node {
        let netns = Netns::new();
        let choice = match backend {
            Backend::Nft => BackendChoice::Nft,
            Backend::Legacy => BackendChoice::Legacy,
        };
        let config = ApplierConfig {
            backend: choice,
            ..ApplierConfig::default()
        };
        let applier = netns.inside(|| Applier::new(&config));
        Node {
            netns,
            applier,
            backend,
        }
    }

    /// Reads the kernel first, as drift repair does.
    fn apply(&mut self, dataplane: &Dataplane) -> ApplyStats {
        let applier = &mut self.applier;
        self.netns
            .inside(|| applier.apply_fresh(Family::V4, dataplane))
            .unwrap_or_else(|error| panic!("apply failed: {error}"))
    }

    /// Plans against what the last apply wrote, as a change does.
    fn apply_change(&mut self, dataplane: &Dataplane) -> ApplyStats {
        let applier = &mut self.applier;
        self.netns
            .inside(|| applier.apply(Family::V4, dataplane))
            .unwrap_or_else(|error| panic!("apply failed: {error}"))
    }

    /// `iptables-save` of the filter table, without comment lines.
    fn save(&self) -> String {
        let out = self
            .netns
            .exec(&[&self.backend.save(Family::V4), "-t", "filter"]);
        out.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    fn iptables(&self, args: &[&str]) {
        let program = match self.backend {
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        };
        let mut all = vec![program, "-w"];
        all.extend_from_slice(args);
        self.netns.exec(&all);
    }

    fn ipset_save(&self) -> String {
        self.netns.exec(&["ipset", "save"])
    }
}

fn rule(matches: Vec<Match>, target: Target, comment: &str) -> Rule {
    Rule {
        matches,
        target,
        comment: comment.to_owned(),
    }
}

fn tcp() -> Match {
    Match::Protocol {
        not: false,
        number: 6,
    }
}

fn net(text: &str) -> Member {
    Member::Net(text.parse().expect("test network"))
}

fn hook(chain: &str, target: &str) -> Hook {
    Hook {
        table: "filter".into(),
        chain: chain.into(),
        target: target.into(),
    }
}

fn dataplane_of(chains: Vec<Chain>, hooks: Vec<Hook>, sets: Vec<IpSet>) -> Dataplane {
    let table = Table {
        chains: chains.into_iter().map(|c| (c.name.clone(), c)).collect(),
    };
    Dataplane {
        tables: [("filter".to_owned(), table)].into_iter().collect(),
        hooks,
        sets: sets.into_iter().map(|s| (s.name.clone(), s)).collect(),
    }
}

fn frontend(members: &[&str]) -> IpSet {
    IpSet {
        name: "twl-s-frontend".into(),
        kind: SetKind::Net,
        family: Family::V4,
        members: members.iter().map(|m| net(m)).collect(),
        comment: "role == 'frontend'".into(),
    }
}

/// FORWARD → twl-FORWARD → twl-to-wl-dispatch → twl-pi-web, which allows the set
/// twl-s-frontend on TCP ports.
fn dataplane(members: &[&str]) -> Dataplane {
    let forward = Chain {
        name: "twl-FORWARD".into(),
        rules: vec![
            rule(
                vec![Match::OutInterface("twl+".into())],
                Target::Jump("twl-to-wl-dispatch".into()),
                "to workloads",
            ),
            rule(
                vec![Match::Mark {
                    value: MARK_ACCEPT,
                    mask: MARK_ACCEPT,
                }],
                Target::Accept,
                "accepted by policy",
            ),
        ],
    };
    let dispatch = Chain {
        name: "twl-to-wl-dispatch".into(),
        rules: vec![
            rule(
                vec![Match::OutInterface("twl1234".into())],
                Target::Goto("twl-pi-web".into()),
                "to default/web",
            ),
            rule(vec![], Target::Drop, "Unknown interface"),
        ],
    };
    let policy = Chain {
        name: "twl-pi-web".into(),
        rules: vec![rule(
            vec![
                tcp(),
                Match::Set {
                    side: Side::Src,
                    not: false,
                    set: "twl-s-frontend".into(),
                },
                Match::Ports {
                    side: Side::Dst,
                    not: false,
                    ports: Ports(vec![(80, 80), (8000, 8010)]),
                },
            ],
            Target::SetMark {
                value: MARK_ACCEPT,
                mask: MARK_MASK,
            },
            "allow frontend",
        )],
    };
    dataplane_of(
        vec![forward, dispatch, policy],
        vec![hook("FORWARD", "twl-FORWARD")],
        vec![frontend(members)],
    )
}

const MEMBERS: [&str; 2] = ["10.0.0.5/32", "10.1.0.0/16"];

/// Foreign objects a Twill apply must never touch.
fn add_foreign(node: &Node) {
    node.iptables(&["-N", "DOCKER-USER"]);
    node.iptables(&["-A", "DOCKER-USER", "-s", "192.0.2.0/24", "-j", "DROP"]);
    node.iptables(&["-I", "FORWARD", "1", "-j", "DOCKER-USER"]);
    node.netns
        .exec(&["ipset", "create", "kube-foreign", "hash:ip"]);
    node.netns
        .exec(&["ipset", "add", "kube-foreign", "192.0.2.1"]);
}

fn assert_foreign_intact(node: &Node) {
    let save = node.save();
    assert!(save.contains(":DOCKER-USER - [0:0]\n"), "{save}");
    assert!(save.contains("-A FORWARD -j DOCKER-USER\n"), "{save}");
    assert!(
        save.contains("-A DOCKER-USER -s 192.0.2.0/24 -j DROP\n"),
        "{save}"
    );
    assert!(node.ipset_save().contains("add kube-foreign 192.0.2.1"));
}

/// The first rule of FORWARD.
fn first_forward_rule(save: &str) -> &str {
    save.lines()
        .find(|line| line.starts_with("-A FORWARD "))
        .unwrap_or_default()
}

fn both_backends(test: impl Fn(Backend)) {
    for backend in [Backend::Nft, Backend::Legacy] {
        test(backend);
    }
}

#[test]
fn first_apply_programs_the_kernel_and_a_second_writes_nothing() {
    both_backends(|backend| {
        let mut node = Node::new(backend);
        let dataplane = dataplane(&MEMBERS);
        let stats = node.apply(&dataplane);
        assert_eq!(stats.chains_written, 3, "{backend:?}");
        assert_eq!(stats.rules_written, 6, "five rules and the hook");
        assert_eq!((stats.sets_created, stats.members_added), (1, 2));
        let save = node.save();
        for chain in ["twl-FORWARD", "twl-to-wl-dispatch", "twl-pi-web"] {
            assert!(save.contains(&format!(":{chain} - [0:0]\n")), "{save}");
        }
        assert!(
            first_forward_rule(&save).ends_with("-j twl-FORWARD"),
            "{save}"
        );
        assert!(save.contains("--match-set twl-s-frontend src"), "{save}");
        assert!(save.contains("-m comment --comment \"twl:"), "{save}");
        let sets = node.ipset_save();
        assert!(sets.contains("add twl-s-frontend 10.0.0.5\n"), "{sets}");
        assert!(sets.contains("add twl-s-frontend 10.1.0.0/16\n"), "{sets}");
        let again = node.apply(&dataplane);
        assert!(again.wrote_nothing(), "{backend:?}: {again:?}");
        assert_eq!(node.save(), save);
    });
}

#[test]
fn a_deleted_rule_rewrites_exactly_its_chain_and_a_flushed_chain_is_repaired() {
    both_backends(|backend| {
        let mut node = Node::new(backend);
        let dataplane = dataplane(&MEMBERS);
        node.apply(&dataplane);
        let synced = node.save();
        node.iptables(&["-D", "twl-to-wl-dispatch", "2"]);
        let stats = node.apply(&dataplane);
        assert_eq!(
            (stats.chains_written, stats.rules_written),
            (1, 2),
            "{backend:?}: {stats:?}"
        );
        assert_eq!(node.save(), synced);
        node.iptables(&["-F", "twl-FORWARD"]);
        let stats = node.apply(&dataplane);
        assert_eq!((stats.chains_written, stats.rules_written), (1, 2));
        assert_eq!(node.save(), synced);
        // A hook removed by someone comes back, once, at the top.
        node.iptables(&["-D", "FORWARD", "1"]);
        let stats = node.apply(&dataplane);
        assert_eq!((stats.chains_written, stats.rules_written), (0, 1));
        assert_eq!(node.save(), synced);
    });
}

#[test]
fn foreign_rules_chains_and_sets_survive_every_apply() {
    let mut node = Node::new(Backend::Nft);
    add_foreign(&node);
    let dataplane = dataplane(&MEMBERS);
    node.apply(&dataplane);
    assert_foreign_intact(&node);
    // A foreign rule inserted above Twill's hook: the hook moves back to the top.
    node.iptables(&[
        "-I",
        "FORWARD",
        "1",
        "-s",
        "198.51.100.0/24",
        "-j",
        "ACCEPT",
    ]);
    let stats = node.apply(&dataplane);
    assert_eq!((stats.rules_deleted, stats.rules_written), (1, 1));
    let save = node.save();
    assert!(
        first_forward_rule(&save).ends_with("-j twl-FORWARD"),
        "{save}"
    );
    assert!(
        save.contains("-A FORWARD -s 198.51.100.0/24 -j ACCEPT\n"),
        "{save}"
    );
    assert_foreign_intact(&node);
    node.iptables(&["-F", "twl-pi-web"]);
    node.apply(&dataplane);
    assert_foreign_intact(&node);
    node.apply(&Dataplane::default());
    assert_foreign_intact(&node);
    assert!(node
        .save()
        .contains("-A FORWARD -s 198.51.100.0/24 -j ACCEPT\n"));
}

#[test]
fn removed_members_chains_and_sets_leave_the_kernel() {
    both_backends(|backend| {
        let mut node = Node::new(backend);
        node.apply(&dataplane(&MEMBERS));
        let stats = node.apply(&dataplane(&["10.0.0.5/32"]));
        assert_eq!((stats.members_added, stats.members_removed), (0, 1));
        let listed = node.netns.exec(&["ipset", "list", "twl-s-frontend"]);
        assert!(listed.contains("10.0.0.5\n"), "{listed}");
        assert!(!listed.contains("10.1.0.0/16"), "{listed}");
        // Drop the policy chain, the dispatch rule that goes to it, and its set.
        let mut smaller = dataplane(&["10.0.0.5/32"]);
        let filter = smaller.tables.get_mut("filter").expect("filter");
        filter.chains.remove("twl-pi-web");
        let dispatch = filter
            .chains
            .get_mut("twl-to-wl-dispatch")
            .expect("dispatch");
        dispatch.rules.remove(0);
        smaller.sets.clear();
        let stats = node.apply(&smaller);
        assert_eq!(
            (stats.chains_deleted, stats.sets_destroyed),
            (1, 1),
            "{stats:?}"
        );
        assert!(!node.save().contains("twl-pi-web"), "{backend:?}");
        assert!(!node.ipset_save().contains("twl-s-frontend"));
        assert!(node.apply(&smaller).wrote_nothing());
        // Nothing desired: nothing of Twill's is left.
        node.apply(&Dataplane::default());
        assert!(!node.save().contains("twl"), "{}", node.save());
        assert!(!node.ipset_save().contains("twl"));
    });
}

#[test]
fn a_set_that_changes_type_is_replaced_under_its_rules() {
    let mut node = Node::new(Backend::Nft);
    node.apply(&dataplane(&MEMBERS));
    let mut changed = dataplane(&[]);
    let set = changed.sets.get_mut("twl-s-frontend").expect("set");
    set.kind = SetKind::IpPort;
    let addr = "10.0.0.5".parse().expect("address");
    set.members = [Member::IpPort(addr, 6, 80)].into_iter().collect();
    let policy = changed
        .tables
        .get_mut("filter")
        .and_then(|t| t.chains.get_mut("twl-pi-web"))
        .expect("policy");
    policy.rules[0].matches = vec![Match::SetIpPort {
        side: Side::Dst,
        not: false,
        set: "twl-s-frontend".into(),
    }];
    node.apply(&changed);
    assert!(node.save().contains("--match-set twl-s-frontend dst,dst"));
    let sets = node.ipset_save();
    assert!(
        sets.contains("create twl-s-frontend hash:ip,port family inet"),
        "{sets}"
    );
    assert!(
        sets.contains("add twl-s-frontend 10.0.0.5,tcp:80"),
        "{sets}"
    );
    assert!(node.apply(&changed).wrote_nothing());
}

#[test]
fn an_ipv6_dataplane_applies_with_ip6tables_and_inet6_sets() {
    let mut node = Node::new(Backend::Nft);
    let chain = Chain {
        name: "twl-INPUT".into(),
        rules: vec![
            rule(
                vec![
                    Match::Protocol {
                        not: false,
                        number: 58,
                    },
                    Match::Icmp {
                        not: false,
                        icmp_type: 128,
                        code: Some(0),
                    },
                ],
                Target::Accept,
                "echo",
            ),
            rule(
                vec![Match::Set {
                    side: Side::Src,
                    not: true,
                    set: "twl-s-six".into(),
                }],
                Target::Drop,
                "only the set",
            ),
        ],
    };
    let set = IpSet {
        name: "twl-s-six".into(),
        kind: SetKind::Net,
        family: Family::V6,
        members: [net("fd00::1/128"), net("fd00:1::/64")]
            .into_iter()
            .collect(),
        comment: String::new(),
    };
    let dataplane = dataplane_of(vec![chain], vec![hook("INPUT", "twl-INPUT")], vec![set]);
    let applier = &mut node.applier;
    let apply = || applier.apply(Family::V6, &dataplane).expect("apply v6");
    let stats = node.netns.inside(apply);
    assert_eq!((stats.chains_written, stats.members_added), (1, 2));
    let save = node.netns.exec(&["ip6tables-nft-save", "-t", "filter"]);
    assert!(
        save.contains("-A INPUT -m comment --comment \"twl:"),
        "{save}"
    );
    assert!(save.contains("--icmpv6-type 128/0"), "{save}");
    assert!(node.ipset_save().contains("add twl-s-six fd00:1::/64"));
    let applier = &mut node.applier;
    let again = node
        .netns
        .inside(|| applier.apply(Family::V6, &dataplane).expect("apply v6"));
    assert!(again.wrote_nothing(), "{again:?}");
    // The IPv4 side of the same namespace has nothing to do with it.
    assert!(!node.save().contains("twl"));
}

/// A client, a node that forwards, and a server, in three namespaces:
/// client 198.18.1.2 — 198.18.1.1 node 198.18.2.1 — 198.18.2.2 server.
struct Topology {
    node: Node,
    client: Netns,
    server: Netns,
}

impl Topology {
    fn new() -> Topology {
        let node = Node::new(Backend::Nft);
        let client = Netns::new();
        let server = Netns::new();
        for (peer, near, far, subnet) in [(&client, "c0", "c1", 1), (&server, "s0", "s1", 2)] {
            node.netns.exec(&[
                "ip", "link", "add", near, "type", "veth", "peer", "name", far, "netns", &peer.name,
            ]);
            let near_addr = format!("198.18.{subnet}.1/24");
            let far_addr = format!("198.18.{subnet}.2/24");
            let gateway = format!("198.18.{subnet}.1");
            node.netns
                .exec(&["ip", "addr", "add", &near_addr, "dev", near]);
            node.netns.exec(&["ip", "link", "set", near, "up"]);
            peer.exec(&["ip", "addr", "add", &far_addr, "dev", far]);
            peer.exec(&["ip", "link", "set", far, "up"]);
            peer.exec(&["ip", "route", "add", "default", "via", &gateway]);
        }
        node.netns
            .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        Topology {
            node,
            client,
            server,
        }
    }

    /// Whether a TCP connection from the client to the server's `port` completes.
    fn connects(&self, port: u16) -> bool {
        let address: SocketAddr = ([198, 18, 2, 2], port).into();
        self.client
            .inside(|| TcpStream::connect_timeout(&address, Duration::from_millis(1500)).is_ok())
    }
}

#[test]
fn a_rendered_drop_really_drops_a_tcp_connect() {
    let mut topology = Topology::new();
    let listeners: Vec<TcpListener> = topology.server.inside(|| {
        [8080, 8081]
            .into_iter()
            .map(|port| TcpListener::bind(("198.18.2.2", port)).expect("listen"))
            .collect()
    });
    assert!(
        topology.connects(8080) && topology.connects(8081),
        "no route"
    );
    let deny = Chain {
        name: "twl-FORWARD".into(),
        rules: vec![rule(
            vec![
                Match::Set {
                    side: Side::Src,
                    not: false,
                    set: "twl-s-clients".into(),
                },
                Match::Net {
                    side: Side::Dst,
                    not: false,
                    net: "198.18.2.2/32".parse().expect("net"),
                },
                tcp(),
                Match::Ports {
                    side: Side::Dst,
                    not: false,
                    ports: Ports(vec![(8080, 8080)]),
                },
            ],
            Target::Drop,
            "deny clients to web",
        )],
    };
    let clients = IpSet {
        name: "twl-s-clients".into(),
        kind: SetKind::Net,
        family: Family::V4,
        members: [net("198.18.1.2/32")].into_iter().collect(),
        comment: String::new(),
    };
    let denying = dataplane_of(
        vec![deny],
        vec![hook("FORWARD", "twl-FORWARD")],
        vec![clients],
    );
    topology.node.apply(&denying);
    assert!(
        !topology.connects(8080),
        "the DROP rule let a connection through"
    );
    assert!(
        topology.connects(8081),
        "the DROP rule dropped another port"
    );
    topology.node.apply(&Dataplane::default());
    assert!(
        topology.connects(8080),
        "traffic still dropped after removal"
    );
    drop(listeners);
}

#[test]
fn a_change_is_planned_against_the_last_apply_and_a_refresh_reads_the_kernel() {
    let mut node = Node::new(Backend::Nft);
    node.apply(&dataplane(&["10.0.0.1/32", "10.0.0.2/32"]));
    let in_kernel = node.save();
    // A member more: the change writes that member alone, without reading the kernel.
    let stats = node.apply_change(&dataplane(&["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"]));
    assert_eq!(
        (
            stats.members_added,
            stats.members_removed,
            stats.chains_written
        ),
        (1, 0, 0),
        "{stats:?}"
    );
    assert!(node.ipset_save().contains("10.0.0.3"));
    assert_eq!(node.save(), in_kernel, "the chains were not touched");
    // Someone deletes a Twill rule: a change does not see it, the next refresh repairs it.
    node.netns.exec(&[
        &node.backend.save(Family::V4).replace("-save", ""),
        "-D",
        "twl-to-wl-dispatch",
        "1",
    ]);
    let stats = node.apply_change(&dataplane(&["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"]));
    assert!(stats.wrote_nothing(), "{stats:?}");
    let stats = node.apply(&dataplane(&["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"]));
    assert_eq!(stats.chains_written, 1, "{stats:?}");
    assert_eq!(node.save(), in_kernel);
}

/// A run of changes planned against the last apply alone (chains and sets added, rewritten
/// and removed, members in and out) leaves the kernel exactly as desired: a refresh that
/// reads the kernel then finds nothing to write, on both backends.
#[test]
fn changes_planned_against_the_last_apply_leave_the_kernel_exactly_as_desired() {
    both_backends(|backend| {
        let mut node = Node::new(backend);
        node.apply(&dataplane(&MEMBERS));
        let mut steps = vec![dataplane(&["10.0.0.5/32", "10.9.0.0/16"])];
        // No policy chain, no set, the dispatch rule that went to it gone.
        let mut smaller = dataplane(&["10.0.0.5/32"]);
        let filter = smaller.tables.get_mut("filter").expect("filter");
        filter.chains.remove("twl-pi-web");
        filter
            .chains
            .get_mut("twl-to-wl-dispatch")
            .expect("dispatch")
            .rules
            .remove(0);
        smaller.sets.clear();
        steps.push(smaller);
        // And everything back, with other members.
        steps.push(dataplane(&["10.0.0.7/32"]));
        for (index, step) in steps.iter().enumerate() {
            let stats = node.apply_change(step);
            assert!(
                !stats.wrote_nothing(),
                "{backend:?} step {index}: {stats:?}"
            );
            let again = node.apply(step);
            assert!(
                again.wrote_nothing(),
                "{backend:?} step {index}: the kernel differed from the desired state: {again:?}"
            );
        }
    });
}

/// Conntrack entries to and from released addresses go, over ctnetlink, in both families and
/// both directions; entries of other addresses stay (checked with the conntrack tool).
#[test]
fn conntrack_entries_of_released_addresses_are_deleted() {
    let netns = Netns::new();
    // Entries as the kernel would have them for flows through this node.
    for (protocol, source, destination, ports) in [
        (
            "udp",
            "10.65.0.1",
            "10.65.0.2",
            ["--sport", "4000", "--dport", "7777"],
        ),
        (
            "tcp",
            "10.65.0.3",
            "10.65.0.1",
            ["--sport", "4001", "--dport", "80"],
        ),
        (
            "udp",
            "10.65.0.3",
            "10.65.0.4",
            ["--sport", "4002", "--dport", "53"],
        ),
        (
            "udp",
            "fd65::1",
            "fd65::2",
            ["--sport", "4003", "--dport", "7777"],
        ),
        (
            "udp",
            "fd65::3",
            "fd65::4",
            ["--sport", "4004", "--dport", "7777"],
        ),
    ] {
        let mut args = vec![
            "conntrack",
            "-I",
            "-p",
            protocol,
            "-s",
            source,
            "-d",
            destination,
            "--timeout",
            "120",
        ];
        args.extend_from_slice(&ports);
        if protocol == "tcp" {
            args.extend(["--state", "ESTABLISHED"]);
        }
        netns.exec(&args);
    }
    let listed = |family: &str| netns.exec(&["conntrack", "-L", "-f", family]);
    assert_eq!(listed("ipv4").lines().count(), 3, "{}", listed("ipv4"));
    let released = ["10.65.0.1".parse().unwrap(), "fd65::2".parse().unwrap()]
        .into_iter()
        .collect();
    let deleted = netns
        .inside(|| twill_felix::apply::conntrack::delete_flows_of(&released))
        .unwrap();
    let v4 = listed("ipv4");
    let v6 = listed("ipv6");
    assert!(!v4.contains("10.65.0.1 "), "{v4}");
    assert!(v4.contains("src=10.65.0.3 dst=10.65.0.4"), "{v4}");
    assert!(!v6.contains("fd65::2 "), "{v6}");
    assert!(v6.contains("src=fd65::3 dst=fd65::4"), "{v6}");
    assert_eq!(
        deleted, 3,
        "the two IPv4 flows of 10.65.0.1 and the IPv6 one of fd65::2"
    );
}

/// A policy chain the kernel refuses (a multiport match of 16 ports: one more than iptables
/// takes) is set aside as a single DROP and everything else is applied; it stays aside,
/// without a failing attempt per apply, until its rules change.
#[test]
fn a_chain_the_kernel_refuses_is_set_aside_and_the_rest_applied() {
    for backend in [Backend::Nft, Backend::Legacy] {
        let mut node = Node::new(backend);
        let mut desired = dataplane(&["10.0.0.1/32"]);
        let refused = Chain {
            name: "twl-pi-refused".into(),
            rules: vec![rule(
                vec![
                    tcp(),
                    Match::Ports {
                        side: Side::Dst,
                        not: false,
                        ports: Ports((1..=16).map(|p| (p, p)).collect()),
                    },
                ],
                Target::Accept,
                "sixteen ports",
            )],
        };
        // The kernel refuses a jump to a chain that does not exist at COMMIT (iptables-nft
        // names the COMMIT line, legacy the rule's): found by bisection among the others.
        let dangling = Chain {
            name: "twl-pi-dangling".into(),
            rules: vec![rule(vec![], Target::Jump("twl-missing".into()), "nowhere")],
        };
        let table = desired.tables.get_mut("filter").unwrap();
        table.chains.insert(refused.name.clone(), refused);
        table.chains.insert(dangling.name.clone(), dangling);
        for name in ["twl-po-fine1", "twl-po-fine2", "twl-po-fine3"] {
            table.chains.insert(
                name.into(),
                Chain {
                    name: name.into(),
                    rules: vec![rule(vec![tcp()], Target::Return, "fine")],
                },
            );
        }
        let stats = node.apply(&desired);
        assert_eq!(
            stats
                .quarantined
                .iter()
                .map(|q| q.chain.as_str())
                .collect::<std::collections::BTreeSet<_>>(),
            ["twl-pi-dangling", "twl-pi-refused"].into_iter().collect(),
            "{backend:?}"
        );
        let saved = node.save();
        assert!(
            saved.contains("-A twl-pi-web -p tcp -m set --match-set twl-s-frontend src"),
            "{backend:?}: the rest is applied:\n{saved}"
        );
        let refused_rules: Vec<&str> = saved
            .lines()
            .filter(|l| l.starts_with("-A twl-pi-refused"))
            .collect();
        assert_eq!(refused_rules.len(), 1, "{backend:?}:\n{saved}");
        assert!(
            refused_rules[0].ends_with("-j DROP"),
            "{backend:?}:\n{saved}"
        );
        for name in ["twl-po-fine1", "twl-po-fine2", "twl-po-fine3"] {
            assert!(
                saved.contains(&format!("-A {name} -p tcp")),
                "{backend:?}: {name} is applied as desired:\n{saved}"
            );
        }
        // The next change: the chains stay aside, nothing is refused again.
        let stats = node.apply_change(&desired);
        assert_eq!(stats.quarantined.len(), 2);
        assert!(stats.wrote_nothing(), "{backend:?}: {stats:?}");
    }
}
