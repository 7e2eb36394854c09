//! One [`Rule`] as `iptables-restore` text, with the hash comment that makes it Twill's.
//!
//! A rendered rule is the text after `-A CHAIN `: the matches in order (protocol matches
//! first, because `multiport` and `icmp` need one before them), then
//! `-m comment --comment "twl:<hash> <why>"`, then the target. The hash is
//! `base64url-nopad(SHA-256(chain ‖ "\0" ‖ text without the comment))[..16]`: it names the
//! rule's meaning in its chain, so reading back only the comments of `iptables-save` tells
//! which rules are still what Twill wrote, whatever the backend prints for the rest
//! (iptables-nft adds `-m tcp`, reorders options, prints protocol numbers as names).
//!
//! The comment is sanitised so it survives `iptables-save` byte for byte: printable ASCII
//! without quotes or backslashes (which iptables-save escapes), at most
//! [`MAX_COMMENT_BYTES`] bytes (the kernel allows 255).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::ir::{Family, Hook, Match, Ports, Rule, Side, Target};

/// What starts every Twill rule comment.
pub const HASH_PREFIX: &str = "twl:";
/// Characters of the rule hash.
pub const HASH_LEN: usize = 16;
/// Longest rule comment, hash included.
pub const MAX_COMMENT_BYTES: usize = 200;
/// Longest NFLOG prefix (the kernel's 64 bytes less the terminating NUL).
pub const MAX_NFLOG_PREFIX_BYTES: usize = 63;
/// The human part of a hook's comment.
pub const HOOK_COMMENT: &str = "Twill hook";

/// One rule as it follows `-A CHAIN ` (or `-I CHAIN N `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedRule {
    /// Its hash, [`HASH_LEN`] characters of base64url.
    pub hash: String,
    /// The rule specification, comment included.
    pub text: String,
}

/// Render `rule` of `chain` for `family`.
pub fn render_rule(family: Family, chain: &str, rule: &Rule) -> RenderedRule {
    let mut parts = matches_text(family, &rule.matches);
    let target = target_text(&rule.target);
    let mut bare = parts.clone();
    bare.push(target.clone());
    let hash = rule_hash(chain, &bare.join(" "));
    parts.push(format!(
        "-m comment --comment \"{}\"",
        comment(&hash, &rule.comment)
    ));
    parts.push(target);
    RenderedRule {
        hash,
        text: parts.join(" "),
    }
}

/// Render every rule of a chain, in order.
pub fn render_chain(family: Family, chain: &crate::ir::Chain) -> Vec<RenderedRule> {
    chain
        .rules
        .iter()
        .map(|rule| render_rule(family, &chain.name, rule))
        .collect()
}

/// Render the jump a hook inserts into its built-in chain.
pub fn render_hook(family: Family, hook: &Hook) -> RenderedRule {
    let rule = Rule {
        matches: Vec::new(),
        target: Target::Jump(hook.target.clone()),
        comment: HOOK_COMMENT.to_owned(),
    };
    render_rule(family, &hook.chain, &rule)
}

/// The hash of a rule: `chain`, a NUL, and the rule text without its comment.
pub fn rule_hash(chain: &str, bare_text: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(chain.as_bytes());
    digest.update([0u8]);
    digest.update(bare_text.as_bytes());
    let mut hash = URL_SAFE_NO_PAD.encode(digest.finalize());
    hash.truncate(HASH_LEN);
    hash
}

/// The comment of a rule: `twl:<hash>`, a space and the sanitised `why` (if any), at most
/// [`MAX_COMMENT_BYTES`] bytes.
pub fn comment(hash: &str, why: &str) -> String {
    let head = format!("{HASH_PREFIX}{hash}");
    let room = MAX_COMMENT_BYTES.saturating_sub(head.len() + 1);
    let why = sanitise(why, room);
    if why.is_empty() {
        head
    } else {
        format!("{head} {why}")
    }
}

/// `text` as printable ASCII without `"`, `'` or `\` (which iptables-save would escape),
/// other characters as `?`, trimmed, at most `max_bytes` long.
pub fn sanitise(text: &str, max_bytes: usize) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !matches!(c, '"' | '\'' | '\\'))
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    out = out.trim().to_owned();
    out.truncate(max_bytes);
    out.trim_end().to_owned()
}

/// The matches of a rule, protocol matches first, each as its option text.
fn matches_text(family: Family, matches: &[Match]) -> Vec<String> {
    let (protocols, others): (Vec<&Match>, Vec<&Match>) = matches
        .iter()
        .partition(|m| matches!(m, Match::Protocol { .. }));
    protocols
        .into_iter()
        .chain(others)
        .map(|m| match_text(family, m))
        .collect()
}

fn bang(not: bool) -> &'static str {
    if not {
        "! "
    } else {
        ""
    }
}

fn side_word(side: Side) -> &'static str {
    match side {
        Side::Src => "src",
        Side::Dst => "dst",
    }
}

/// One match as iptables options.
pub fn match_text(family: Family, m: &Match) -> String {
    match m {
        Match::InInterface(name) => format!("-i {name}"),
        Match::OutInterface(name) => format!("-o {name}"),
        Match::Protocol { not, number } => format!("{}-p {}", bang(*not), protocol(*number)),
        Match::Net { side, not, net } => {
            let flag = if *side == Side::Src { "-s" } else { "-d" };
            format!("{}{flag} {}", bang(*not), net.trunc())
        }
        Match::Set { side, not, set } => format!(
            "-m set {}--match-set {set} {}",
            bang(*not),
            side_word(*side)
        ),
        Match::SetIpPort { side, not, set } => {
            let side = side_word(*side);
            format!("-m set {}--match-set {set} {side},{side}", bang(*not))
        }
        // For hash:net,iface, `src,src` is the source address and the incoming interface.
        Match::SetSourceIface { not, set } => {
            format!("-m set {}--match-set {set} src,src", bang(*not))
        }
        Match::Ports { side, not, ports } => {
            let flag = if *side == Side::Src {
                "--sports"
            } else {
                "--dports"
            };
            format!("-m multiport {}{flag} {}", bang(*not), ports_text(ports))
        }
        Match::Icmp {
            not,
            icmp_type,
            code,
        } => {
            let (module, flag) = match family {
                Family::V4 => ("icmp", "--icmp-type"),
                Family::V6 => ("icmp6", "--icmpv6-type"),
            };
            let code = code.map(|c| format!("/{c}")).unwrap_or_default();
            format!("-m {module} {}{flag} {icmp_type}{code}", bang(*not))
        }
        Match::ConntrackState(states) => format!("-m conntrack --ctstate {states}"),
        Match::Mark { value, mask } => format!("-m mark --mark {value:#x}/{mask:#x}"),
    }
}

/// A protocol as `-p` takes it: a name for the common ones, the number otherwise.
pub fn protocol(number: u8) -> String {
    match number {
        1 => "icmp".to_owned(),
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        58 => "ipv6-icmp".to_owned(),
        132 => "sctp".to_owned(),
        other => other.to_string(),
    }
}

/// Ports as multiport takes them: `80,8000:8010`.
pub fn ports_text(ports: &Ports) -> String {
    ports
        .0
        .iter()
        .map(|&(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}:{last}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A target as iptables options.
pub fn target_text(target: &Target) -> String {
    match target {
        Target::Accept => "-j ACCEPT".to_owned(),
        Target::Drop => "-j DROP".to_owned(),
        Target::Return => "-j RETURN".to_owned(),
        Target::NoTrack => "-j CT --notrack".to_owned(),
        Target::Masquerade => "-j MASQUERADE --random-fully".to_owned(),
        Target::Jump(chain) => format!("-j {chain}"),
        Target::Goto(chain) => format!("-g {chain}"),
        Target::SetMark { value, mask } => format!("-j MARK --set-xmark {value:#x}/{mask:#x}"),
        Target::Nflog { group, prefix } => format!(
            "-j NFLOG --nflog-group {group} --nflog-prefix \"{}\"",
            sanitise(prefix, MAX_NFLOG_PREFIX_BYTES)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Chain, MARK_ACCEPT, MARK_MASK};

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

    #[test]
    fn a_policy_rule_renders_like_felix() {
        let rule = rule(
            vec![
                Match::Set {
                    side: Side::Src,
                    not: false,
                    set: "twl-s-abc".into(),
                },
                Match::Ports {
                    side: Side::Dst,
                    not: false,
                    ports: Ports(vec![(80, 80), (8000, 8010)]),
                },
                tcp(),
            ],
            Target::SetMark {
                value: MARK_ACCEPT,
                mask: MARK_MASK,
            },
            "allow frontend",
        );
        let rendered = render_rule(Family::V4, "twl-pi-XXXX", &rule);
        let bare = "-p tcp -m set --match-set twl-s-abc src -m multiport --dports 80,8000:8010 \
                    -j MARK --set-xmark 0x10000/0x30000";
        let hash = rule_hash("twl-pi-XXXX", bare);
        assert_eq!(hash.len(), HASH_LEN);
        assert_eq!(rendered.hash, hash);
        assert_eq!(
            rendered.text,
            format!(
                "-p tcp -m set --match-set twl-s-abc src -m multiport --dports 80,8000:8010 \
                 -m comment --comment \"twl:{hash} allow frontend\" \
                 -j MARK --set-xmark 0x10000/0x30000"
            )
        );
    }

    #[test]
    fn the_hash_is_sha256_base64url_of_chain_nul_text() {
        // printf 'twl-A\0-j ACCEPT' | sha256sum | xxd -r -p | basenc --base64url
        assert_eq!(rule_hash("twl-A", "-j ACCEPT"), "SHhygG3O831dw9-P");
        // The chain is part of the hash; the comment is not.
        let accept = |why: &str| rule(vec![], Target::Accept, why);
        let a = render_rule(Family::V4, "twl-A", &accept("one"));
        assert_eq!(
            a.hash,
            render_rule(Family::V4, "twl-A", &accept("two")).hash
        );
        assert_ne!(
            a.hash,
            render_rule(Family::V4, "twl-B", &accept("one")).hash
        );
    }

    #[test]
    fn every_match_is_spelled_as_iptables_takes_it() {
        let v4 = |m: Match| match_text(Family::V4, &m);
        let net = "10.1.2.3/16".parse().expect("net");
        assert_eq!(v4(Match::InInterface("twl+".into())), "-i twl+");
        assert_eq!(v4(Match::OutInterface("eth0".into())), "-o eth0");
        let not_udp = Match::Protocol {
            not: true,
            number: 17,
        };
        assert_eq!(v4(not_udp), "! -p udp");
        let gre = Match::Protocol {
            not: false,
            number: 47,
        };
        assert_eq!(v4(gre), "-p 47");
        for (number, name) in [(1, "icmp"), (58, "ipv6-icmp"), (132, "sctp"), (6, "tcp")] {
            assert_eq!(protocol(number), name);
        }
        let src = Match::Net {
            side: Side::Src,
            not: false,
            net,
        };
        assert_eq!(v4(src), "-s 10.1.0.0/16");
        let not_dst = Match::Net {
            side: Side::Dst,
            not: true,
            net,
        };
        assert_eq!(v4(not_dst), "! -d 10.1.0.0/16");
        let not_set = Match::Set {
            side: Side::Dst,
            not: true,
            set: "twl-s-x".into(),
        };
        assert_eq!(v4(not_set), "-m set ! --match-set twl-s-x dst");
        let ip_port = Match::SetIpPort {
            side: Side::Dst,
            not: false,
            set: "twl-n-x".into(),
        };
        assert_eq!(v4(ip_port), "-m set --match-set twl-n-x dst,dst");
        let not_sports = Match::Ports {
            side: Side::Src,
            not: true,
            ports: Ports(vec![(53, 53)]),
        };
        assert_eq!(v4(not_sports), "-m multiport ! --sports 53");
        let echo = Match::Icmp {
            not: false,
            icmp_type: 8,
            code: Some(0),
        };
        assert_eq!(v4(echo), "-m icmp --icmp-type 8/0");
        let not_echo6 = Match::Icmp {
            not: true,
            icmp_type: 128,
            code: None,
        };
        assert_eq!(
            match_text(Family::V6, &not_echo6),
            "-m icmp6 ! --icmpv6-type 128"
        );
        assert_eq!(
            v4(Match::ConntrackState("RELATED,ESTABLISHED".into())),
            "-m conntrack --ctstate RELATED,ESTABLISHED"
        );
        let mark = Match::Mark {
            value: 0,
            mask: MARK_ACCEPT,
        };
        assert_eq!(v4(mark), "-m mark --mark 0x0/0x10000");
    }

    #[test]
    fn every_target_is_spelled_as_iptables_takes_it() {
        assert_eq!(target_text(&Target::Accept), "-j ACCEPT");
        assert_eq!(target_text(&Target::Drop), "-j DROP");
        assert_eq!(target_text(&Target::Return), "-j RETURN");
        assert_eq!(target_text(&Target::Jump("twl-x".into())), "-j twl-x");
        assert_eq!(target_text(&Target::Goto("twl-x".into())), "-g twl-x");
        let nflog = Target::Nflog {
            group: 1,
            prefix: "API0|\"default\".x".into(),
        };
        assert_eq!(
            target_text(&nflog),
            "-j NFLOG --nflog-group 1 --nflog-prefix \"API0|default.x\""
        );
    }

    #[test]
    fn comments_are_sanitised_and_bounded() {
        let hash = "0123456789abcdef";
        assert_eq!(comment(hash, ""), "twl:0123456789abcdef");
        assert_eq!(
            comment(hash, " it's \"quoted\" \\ ns/é\n"),
            "twl:0123456789abcdef its quoted  ns/??"
        );
        let long = comment(hash, &"x".repeat(500));
        assert_eq!(long.len(), MAX_COMMENT_BYTES);
        let nflog = Target::Nflog {
            group: 2,
            prefix: "p".repeat(100),
        };
        assert!(target_text(&nflog).ends_with(&format!("\"{}\"", "p".repeat(63))));
    }

    #[test]
    fn a_hook_is_a_commented_jump() {
        let hook = Hook {
            table: "filter".into(),
            chain: "FORWARD".into(),
            target: "twl-FORWARD".into(),
        };
        let rendered = render_hook(Family::V4, &hook);
        assert_eq!(rendered.hash, rule_hash("FORWARD", "-j twl-FORWARD"));
        assert_eq!(
            rendered.text,
            format!(
                "-m comment --comment \"twl:{} Twill hook\" -j twl-FORWARD",
                rendered.hash
            )
        );
        let chain = Chain {
            name: "twl-x".into(),
            rules: vec![
                rule(vec![], Target::Drop, "a"),
                rule(vec![], Target::Drop, "b"),
            ],
        };
        let rules = render_chain(Family::V4, &chain);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].hash, rules[1].hash);
    }
}
