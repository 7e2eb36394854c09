//! Transport rules against a BIRD two hops away (twill — router — BIRD): GTSM (RFC 5082)
//! admits the peer at the configured distance and no farther, the multihop TTL decides
//! whether an eBGP session reaches it at all, and the source address is the one BIRD knows.

#![allow(clippy::disallowed_methods)] // Tests start processes and read the clock.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use twill_interop_tests::bgp::{birdc, spawn_bird, spawn_twill, wait_for};
use twill_interop_tests::netns::{link, Daemon, Netns};

/// twill (198.18.160.1, and 198.18.160.5 on the same link; fd00:160::1) — router — BIRD
/// (198.18.161.2, fd00:161::2), routed both ways in both families.
struct TwoHops {
    twill: Netns,
    bird: Netns,
    _router: Netns,
    dir: TempDir,
}

impl TwoHops {
    fn new(tag: &str) -> TwoHops {
        let twill = Netns::new(&format!("{tag}t"));
        let router = Netns::new(&format!("{tag}r"));
        let bird = Netns::new(&format!("{tag}b"));
        let (twill_if, router_left) = link(&twill, "198.18.160.1/24", &router, "198.18.160.2/24");
        twill.ip(&["addr", "add", "198.18.160.5/24", "dev", &twill_if]);
        let (router_right, bird_if) = link(&router, "198.18.161.1/24", &bird, "198.18.161.2/24");
        for (ns, address, dev) in [
            (&twill, "fd00:160::1/64", &twill_if),
            (&router, "fd00:160::2/64", &router_left),
            (&router, "fd00:161::1/64", &router_right),
            (&bird, "fd00:161::2/64", &bird_if),
        ] {
            ns.ip(&["-6", "addr", "add", address, "dev", dev, "nodad"]);
        }
        for setting in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let forwarding = router.output("sysctl", &["-qw", setting]);
            assert!(forwarding.status.success(), "{forwarding:?}");
        }
        twill.ip(&["route", "add", "198.18.161.0/24", "via", "198.18.160.2"]);
        bird.ip(&["route", "add", "198.18.160.0/24", "via", "198.18.161.1"]);
        twill.ip(&["-6", "route", "add", "fd00:161::/64", "via", "fd00:160::2"]);
        bird.ip(&["-6", "route", "add", "fd00:160::/64", "via", "fd00:161::1"]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("twill-{tag}-"))
            .tempdir()
            .unwrap();
        TwoHops {
            twill,
            bird,
            _router: router,
            dir,
        }
    }

    /// BIRD, eBGP to twill at 198.18.160.1 with `transport` lines (multihop, ttl security),
    /// announcing 10.61.0.0/24.
    fn start_bird(&self, transport: &str) -> (Daemon, PathBuf) {
        self.start_bird_for("198.18.160.1", transport)
    }

    /// The same, expecting twill at `twill` (IPv4, or IPv6 with BIRD at fd00:161::2).
    fn start_bird_for(&self, twill: &str, transport: &str) -> (Daemon, PathBuf) {
        let (local, channel) = if twill.contains(':') {
            ("fd00:161::2", "ipv6")
        } else {
            ("198.18.161.2", "ipv4")
        };
        spawn_bird(
            &self.bird,
            self.dir.path(),
            &format!(
                "router id 198.18.161.2;\nprotocol device {{ }}\n\
                 protocol static {{ ipv4; route 10.61.0.0/24 blackhole; }}\n\
                 protocol bgp twill {{\n  local {local} as 65002;\n  neighbor {twill} as 65001;\n  \
                 {transport}\n  connect retry time 1;\n  error wait time 1, 2;\n  \
                 {channel} {{ import none; export all; }};\n}}\n"
            ),
        )
    }

    /// twill-bgpd with one neighbour, BIRD, and the neighbour keys in `transport`.
    fn start_twill(&self, transport: &str) -> Daemon {
        self.start_twill_for("198.18.161.2", transport)
    }

    /// The same, with BIRD at `bird`.
    fn start_twill_for(&self, bird: &str, transport: &str) -> Daemon {
        spawn_twill(
            &self.twill,
            self.dir.path(),
            &format!(
                "[global]\nasn = 65001\nrouter_id = \"198.18.160.1\"\nlisten = [\"0.0.0.0:179\", \"[::]:179\"]\n\
                 [[neighbor]]\naddress = \"{bird}\"\nremote_asn = 65002\nconnect_retry = 1\nimport = [\"all\"]\nexport = [\"all\"]\n{transport}\n"
            ),
        )
    }

    fn logs(&self) -> [PathBuf; 2] {
        [
            self.dir.path().join("twill.log"),
            self.dir.path().join("bird.log"),
        ]
    }

    /// BIRD's view of the session is Established.
    fn established(&self, socket: &Path) -> bool {
        let out = birdc(&self.bird, socket, &["show", "protocols", "twill"]);
        String::from_utf8_lossy(&out.stdout).contains("Established")
    }

    fn wait_until(&self, socket: &Path, established: bool, what: &str) {
        let logs = self.logs();
        let refs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
        wait_for(
            Duration::from_secs(30),
            what,
            || (self.established(socket) == established).then(String::new),
            &refs,
        );
    }

    /// The session stays down for `window` while both sides keep trying (connect retry 1 s).
    fn assert_never_established(&self, socket: &Path, window: Duration, why: &str) {
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            assert!(
                !self.established(socket),
                "{why}, yet the session came up:\n{}",
                std::fs::read_to_string(&self.logs()[0]).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// GTSM with the peer two hops away, Twill at `twill` and BIRD at `bird`: `multihop = 2`
/// admits TTL (hop limit) 254 and the session comes up; with the distance left at one hop
/// (255 only) BIRD's connections are refused on their SYN and it never does.
fn gtsm_admits_the_peer_at_its_distance_and_no_farther(tag: &str, twill: &str, bird: &str) {
    let lab = TwoHops::new(tag);
    let (_bird, socket) = lab.start_bird_for(twill, "multihop 2;\n  ttl security on;");
    let first = lab.start_twill_for(bird, "ttl_security = true\nmultihop = 2");
    lab.wait_until(&socket, true, "the GTSM session at the right distance");
    drop(first);
    lab.wait_until(&socket, false, "BIRD to see Twill gone");
    let _twill = lab.start_twill_for(bird, "ttl_security = true");
    lab.assert_never_established(
        &socket,
        Duration::from_secs(8),
        "GTSM expects the peer one hop away and it is two",
    );
    // BIRD's own connections were refused on their SYN, before anything they carried was read.
    let log = std::fs::read_to_string(&lab.logs()[0]).unwrap_or_default();
    assert!(log.contains("SYN arrived with TTL 254, below 255"), "{log}");
}

#[test]
fn gtsm_over_ipv4_admits_the_peer_at_its_distance_and_no_farther() {
    gtsm_admits_the_peer_at_its_distance_and_no_farther("gtsm", "198.18.160.1", "198.18.161.2");
}

/// IPv6: the hop limit (IPV6_MINHOPCOUNT, and the saved SYN's IPv6 header).
#[test]
fn gtsm_over_ipv6_admits_the_peer_at_its_distance_and_no_farther() {
    gtsm_admits_the_peer_at_its_distance_and_no_farther("gtsm6", "fd00:160::1", "fd00:161::2");
}

/// eBGP to a peer two hops away: `multihop = 2` reaches it; the eBGP default (TTL 1) does
/// not, since Twill's packets die at the router.
#[test]
fn the_multihop_ttl_decides_whether_a_distant_peer_is_reached() {
    let lab = TwoHops::new("mhop");
    let (_bird, socket) = lab.start_bird("multihop 2;");
    let twill = lab.start_twill("multihop = 2");
    lab.wait_until(&socket, true, "the multihop session");
    drop(twill);
    lab.wait_until(&socket, false, "BIRD to see Twill gone");
    let _twill = lab.start_twill("");
    lab.assert_never_established(
        &socket,
        Duration::from_secs(8),
        "Twill sends with TTL 1 to a peer two hops away",
    );
}

/// BIRD waits (passive) for Twill at its second address: with `source_address` Twill's
/// connection comes from there and the session comes up; without it the connection comes
/// from the interface's first address, which BIRD does not know.
#[test]
fn the_source_address_is_the_one_the_peer_expects() {
    let lab = TwoHops::new("srca");
    let (_bird, socket) = lab.start_bird_for("198.18.160.5", "multihop 2;\n  passive on;");
    let twill = lab.start_twill("multihop = 2\nsource_address = \"198.18.160.5\"");
    lab.wait_until(&socket, true, "the session from the source address");
    drop(twill);
    lab.wait_until(&socket, false, "BIRD to see Twill gone");
    let _twill = lab.start_twill("multihop = 2");
    lab.assert_never_established(
        &socket,
        Duration::from_secs(6),
        "Twill connects from 198.18.160.1, an address BIRD does not peer with",
    );
}
