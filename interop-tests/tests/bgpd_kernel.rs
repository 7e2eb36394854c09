//! twill-bgpd's kernel writer against a real kernel, in a network namespace of its own: which
//! routes go in, through which gateway, which never do (RFC 4271 §5.1.3, §6.3), and that a
//! route waiting for its next hop, or resolved through another gateway, follows the kernel's
//! table as it changes.

#![allow(clippy::disallowed_methods)] // Tests read the clock.

use std::fs::File;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use twill_bgpd::config::KernelConfig;
use twill_bgpd::io::kernel::{spawn, KernelCommand, NextHops, Writer};
use twill_interop_tests::netns::{link, Netns};

/// Starts the writer from a thread inside `netns` (its socket and thread live there).
fn writer_in(netns: &Netns) -> Writer {
    let path = format!("/run/netns/{}", netns.name());
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let file = File::open(&path).expect("the namespace exists");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter the namespace");
                let config = KernelConfig {
                    table: 254,
                    metric: 1024,
                    exclude: Vec::new(),
                };
                spawn(config, false, Arc::new(AtomicU64::new(0)))
                    .expect("the writer starts")
                    .0
            })
            .join()
            .expect("the writer thread starts")
    })
}

fn routes(netns: &Netns) -> String {
    String::from_utf8_lossy(&netns.ip(&["route", "show", "proto", "210"]).stdout).into_owned()
}

fn wait(netns: &Netns, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = routes(netns);
        if check(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the kernel has\n{now}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ip(netns: &Netns, args: &[&str]) {
    let output = netns.ip(args);
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_kernel_writer_installs_only_reachable_next_hops_and_resolves_recursive_ones() {
    let netns = Netns::new("kw");
    let other = Netns::new("kx");
    link(&netns, "198.18.200.1/24", &other, "198.18.200.2/24");
    // An IGP-like route: 10.99.0.0/24 (an iBGP peer's loopbacks) via 198.18.200.2.
    ip(
        &netns,
        &["route", "add", "10.99.0.0/24", "via", "198.18.200.2"],
    );
    let writer = writer_in(&netns);
    let hop = |a: &str| NextHops::One(a.parse().unwrap());
    writer
        .send(KernelCommand::Routes(vec![
            ("10.50.0.0/24".parse().unwrap(), hop("198.18.200.2")),
            ("10.51.0.0/24".parse().unwrap(), hop("10.99.0.7")),
            ("10.52.0.0/24".parse().unwrap(), hop("192.0.2.9")),
            ("10.53.0.0/24".parse().unwrap(), hop("198.18.200.1")),
            ("10.54.0.0/24".parse().unwrap(), hop("0.0.0.0")),
        ]))
        .unwrap();
    wait(&netns, "the reachable routes", |r| {
        r.contains("10.50.0.0/24 via 198.18.200.2") && r.contains("10.51.0.0/24 via 198.18.200.2")
    });
    let now = routes(&netns);
    for never in ["10.52.0.0/24", "10.53.0.0/24", "10.54.0.0/24"] {
        assert!(
            !now.contains(never),
            "{never} must not be installed:\n{now}"
        );
    }
    // 192.0.2.9 becomes reachable: the waiting route goes in at the next retry.
    ip(
        &netns,
        &["route", "add", "192.0.2.0/24", "via", "198.18.200.3"],
    );
    wait(&netns, "the route whose next hop became reachable", |r| {
        r.contains("10.52.0.0/24 via 198.18.200.3")
    });
    // The IGP moves 10.99.0.0/24 to another gateway: the recursive route follows.
    ip(
        &netns,
        &["route", "replace", "10.99.0.0/24", "via", "198.18.200.4"],
    );
    wait(&netns, "the recursive route to follow its next hop", |r| {
        r.contains("10.51.0.0/24 via 198.18.200.4")
    });
    // And when the next hop is gone altogether, so is the route.
    ip(&netns, &["route", "del", "10.99.0.0/24"]);
    wait(&netns, "the route whose next hop became unreachable", |r| {
        !r.contains("10.51.0.0/24")
    });
    let (done, flushed) = mpsc::channel();
    writer.send(KernelCommand::Flush(done)).unwrap();
    flushed
        .recv_timeout(Duration::from_secs(10))
        .expect("the flush ends");
    assert_eq!(routes(&netns), "", "a flush leaves nothing of Twill's");
}
