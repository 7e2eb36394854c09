//! Which iptables: nft or legacy, chosen as Calico and Kubernetes' iptables-wrapper do, so
//! Twill's rules live in the same backend as kubelet's and kube-proxy's.
//!
//! 1. A configured backend wins (`TWILL_IPTABLES_BACKEND=nft|legacy|auto`).
//! 2. Kubernetes marks its choice with the chains `KUBE-IPTABLES-HINT` and
//!    `KUBE-KUBELET-CANARY` (mangle table): nft first, then legacy.
//! 3. Otherwise the backend with more rules (`-A` lines of `iptables-*-save` and
//!    `ip6tables-*-save`), legacy only if it has at least 10 and more than nft.
//! 4. Otherwise nft, the default of Debian 12 and current distributions.

use std::str::FromStr;

use super::command::run;
use super::ApplyError;
use crate::ir::Family;

/// The environment variable that overrides detection.
pub const BACKEND_ENV: &str = "TWILL_IPTABLES_BACKEND";

/// Chains Kubernetes creates to say which backend it uses.
const HINT_CHAINS: [&str; 2] = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/// Rules legacy must hold to be chosen without a hint (as iptables-wrapper).
const LEGACY_MIN_RULES: usize = 10;

/// An iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft`: the xtables API over nf_tables.
    Nft,
    /// `iptables-legacy`: the old `ip_tables` kernel API.
    Legacy,
}

/// A configured backend, or detection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// Detect (see the module docs).
    #[default]
    Auto,
    /// Always nft.
    Nft,
    /// Always legacy.
    Legacy,
}

impl FromStr for BackendChoice {
    type Err = ApplyError;

    fn from_str(value: &str) -> Result<BackendChoice, ApplyError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(BackendChoice::Auto),
            "nft" => Ok(BackendChoice::Nft),
            "legacy" => Ok(BackendChoice::Legacy),
            _ => Err(ApplyError::UnknownBackend {
                value: value.to_owned(),
            }),
        }
    }
}

impl BackendChoice {
    /// The choice of [`BACKEND_ENV`], `Auto` when unset.
    pub fn from_env() -> Result<BackendChoice, ApplyError> {
        std::env::var(BACKEND_ENV).unwrap_or_default().parse()
    }
}

impl Backend {
    /// Resolve a choice, running the save programs of both backends if it is `Auto`.
    pub fn detect(choice: BackendChoice) -> Backend {
        match choice {
            BackendChoice::Nft => Backend::Nft,
            BackendChoice::Legacy => Backend::Legacy,
            BackendChoice::Auto => {
                let dump = |backend: Backend| {
                    [Family::V4, Family::V6]
                        .into_iter()
                        .map(|family| run(&backend.save(family), &[], None).unwrap_or_default())
                        .collect::<String>()
                };
                let backend = Backend::choose(&dump(Backend::Legacy), &dump(Backend::Nft));
                tracing::info!(?backend, "detected the iptables backend");
                backend
            }
        }
    }

    /// The backend that dumps of each (v4 and v6 `*-save` output, concatenated) point to.
    pub fn choose(legacy_dump: &str, nft_dump: &str) -> Backend {
        let hinted = |dump: &str| {
            dump.lines().any(|line| {
                HINT_CHAINS
                    .iter()
                    .any(|hint| line.starts_with(&format!(":{hint} ")))
            })
        };
        let rules = |dump: &str| dump.lines().filter(|l| l.starts_with("-A ")).count();
        let legacy_rules = rules(legacy_dump);
        let legacy_wins = legacy_rules >= LEGACY_MIN_RULES && legacy_rules > rules(nft_dump);
        if hinted(nft_dump) {
            Backend::Nft
        } else if hinted(legacy_dump) || legacy_wins {
            Backend::Legacy
        } else {
            Backend::Nft
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    fn base(family: Family) -> &'static str {
        match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The dump program of a family, e.g. `iptables-nft-save`.
    pub fn save(self, family: Family) -> String {
        format!("{}-{}-save", Backend::base(family), self.suffix())
    }

    /// The restore program of a family, e.g. `ip6tables-legacy-restore`.
    pub fn restore(self, family: Family) -> String {
        format!("{}-{}-restore", Backend::base(family), self.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(chain: &str, n: usize) -> String {
        (0..n)
            .map(|i| format!("-A {chain} -j RETURN # {i}\n"))
            .collect()
    }

    #[test]
    fn a_kubernetes_hint_decides() {
        let hint = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
        let canary = "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
        assert_eq!(Backend::choose(hint, &rules("X", 50)), Backend::Legacy);
        assert_eq!(Backend::choose(&rules("X", 50), canary), Backend::Nft);
        assert_eq!(Backend::choose(hint, hint), Backend::Nft);
    }

    #[test]
    fn without_a_hint_the_backend_with_more_rules_wins_and_nft_by_default() {
        assert_eq!(Backend::choose("", ""), Backend::Nft);
        assert_eq!(Backend::choose(&rules("X", 9), ""), Backend::Nft);
        assert_eq!(Backend::choose(&rules("X", 10), ""), Backend::Legacy);
        assert_eq!(
            Backend::choose(&rules("X", 10), &rules("Y", 10)),
            Backend::Nft
        );
        assert_eq!(
            Backend::choose(&rules("X", 11), &rules("Y", 10)),
            Backend::Legacy
        );
    }

    #[test]
    fn choices_parse_and_programs_are_named_per_backend_and_family() {
        assert_eq!("".parse::<BackendChoice>().ok(), Some(BackendChoice::Auto));
        assert_eq!(
            "NFT".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Nft)
        );
        assert_eq!(
            "legacy".parse::<BackendChoice>().ok(),
            Some(BackendChoice::Legacy)
        );
        assert!("iptables".parse::<BackendChoice>().is_err());
        assert_eq!(Backend::Nft.save(Family::V4), "iptables-nft-save");
        assert_eq!(
            Backend::Legacy.restore(Family::V6),
            "ip6tables-legacy-restore"
        );
        assert_eq!(Backend::detect(BackendChoice::Legacy), Backend::Legacy);
    }
}
