//! A realistic IPv4 table for the ingest benchmark, generated from a seed (the same seed gives
//! the same bytes): prefix lengths as in today's Internet table, AS paths of 1–10 hops with
//! a skew, communities on about 30% of the attribute sets and MED on about 20%, an origin
//! mix, and as many distinct attribute sets as three prefixes in ten (a few hundred thousand
//! at a million prefixes), few of them shared by many prefixes and most by one or two.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use twill_bgpd::wire::attribute::{AsPath, Origin, PathAttributes};

/// Share of prefixes that get an attribute set of their own before the rest are spread over
/// the sets (tenths).
const SETS_PER_TEN_PREFIXES: u32 = 3;

/// Prefix lengths and their weight (per 100,000 prefixes), after the IPv4 table of 2024:
/// mostly /24, then /22 and /23, then /16–/21, a few shorter.
const LENGTHS: &[(u8, u32)] = &[
    (24, 62_000),
    (23, 10_000),
    (22, 13_000),
    (21, 4_700),
    (20, 4_200),
    (19, 2_300),
    (18, 1_100),
    (17, 700),
    (16, 1_500),
    (15, 150),
    (14, 140),
    (13, 70),
    (12, 30),
    (11, 10),
];

/// AS path lengths (with the sender's AS first) and their weight (percent).
const PATH_LENGTHS: &[(usize, u32)] = &[
    (1, 3),
    (2, 12),
    (3, 25),
    (4, 26),
    (5, 17),
    (6, 9),
    (7, 4),
    (8, 2),
    (9, 1),
    (10, 1),
];

/// splitmix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// One of `choices`, by weight.
    fn weighted<T: Copy>(&mut self, choices: &[(T, u32)]) -> T {
        let total: u32 = choices.iter().map(|c| c.1).sum();
        let mut at = self.below(u64::from(total)) as u32;
        for &(value, weight) in choices {
            if at < weight {
                return value;
            }
            at -= weight;
        }
        choices[choices.len() - 1].0
    }

    /// Skewed towards 0 in `0..n`: index `n·u²`, so a few values are drawn often.
    fn skewed(&mut self, n: u64) -> u64 {
        let u = self.unit();
        ((n as f64 * u * u) as u64).min(n - 1)
    }
}

/// `count` distinct IPv4 prefixes, lengths by [`LENGTHS`], anywhere in 1.0.0.0–223.255.255.255
/// but 127/8 and the benchmark's own 198.18.0.0/15.
fn prefixes(rng: &mut Rng, count: u32) -> Vec<(Ipv4Addr, u8)> {
    let mut seen = HashSet::with_capacity(count as usize);
    let mut out = Vec::with_capacity(count as usize);
    while out.len() < count as usize {
        let length = rng.weighted(LENGTHS);
        let mask = u32::MAX << (32 - u32::from(length));
        let address = (0x0100_0000 + rng.below(0xdf00_0000) as u32) & mask;
        let first_octet = address >> 24;
        let in_benchmark = length >= 15 && address & 0xfffe_0000 == 0xc612_0000;
        if first_octet == 127 || first_octet == 0 || in_benchmark {
            continue;
        }
        if seen.insert((address, length)) {
            out.push((Ipv4Addr::from(address), length));
        }
    }
    out
}

/// The parts of an attribute set that make it distinct.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SetKey {
    path: Vec<u32>,
    communities: Vec<u32>,
    med: Option<u32>,
    origin: Origin,
}

/// An AS path: the sender first, then a neighbour of the sender (from 40, skewed), transit
/// ASes (from 3,000, skewed) and an origin AS (from 80,000); one path in ten prepends its
/// origin one to three more times (within ten hops).
fn path(rng: &mut Rng, sender: u32) -> Vec<u32> {
    let length = rng.weighted(PATH_LENGTHS);
    let mut path = vec![sender];
    if length >= 2 {
        path.push(1_000 + rng.skewed(40) as u32);
    }
    while path.len() + 1 < length {
        path.push(10_000 + rng.skewed(3_000) as u32);
    }
    if length >= 3 {
        path.push(200_000 + rng.below(80_000) as u32);
    }
    if length >= 2 && rng.chance(0.1) {
        let origin = *path.last().expect("at least two hops");
        for _ in 0..(1 + rng.below(3)) {
            if path.len() < 10 {
                path.push(origin);
            }
        }
    }
    path
}

fn set_key(rng: &mut Rng, sender: u32) -> SetKey {
    let path = path(rng, sender);
    let neighbour = path.get(1).copied().unwrap_or(sender) & 0xffff;
    let communities = if rng.chance(0.3) {
        let mut communities: Vec<u32> = (0..1 + rng.below(6))
            .map(|_| (neighbour << 16) | (100 + rng.skewed(2_000) as u32))
            .collect();
        communities.sort_unstable();
        communities.dedup();
        communities
    } else {
        Vec::new()
    };
    let med = rng
        .chance(0.2)
        .then(|| [0, 10, 50, 100, rng.below(1_000) as u32][rng.below(5) as usize]);
    let origin = if rng.chance(0.13) {
        Origin::Incomplete
    } else {
        Origin::Igp
    };
    SetKey {
        path,
        communities,
        med,
        origin,
    }
}

/// The generated table: attribute sets, each with its prefixes, in the order to send them.
#[derive(Debug, Clone)]
pub struct Table {
    /// (attributes, the prefixes that carry them).
    pub sets: Vec<(PathAttributes, Vec<(Ipv4Addr, u8)>)>,
}

/// A realistic table of `count` prefixes from AS `sender` with next hop `next_hop`.
pub fn generate(seed: u64, count: u32, sender: u32, next_hop: Ipv4Addr) -> Table {
    let mut rng = Rng::new(seed);
    let prefixes = prefixes(&mut rng, count);
    let set_count = (count / 10 * SETS_PER_TEN_PREFIXES).max(1);
    let mut seen = HashSet::with_capacity(set_count as usize);
    let mut keys = Vec::with_capacity(set_count as usize);
    while keys.len() < set_count as usize {
        let key = set_key(&mut rng, sender);
        if seen.insert(key.clone()) {
            keys.push(key);
        }
    }
    // Every set carries one prefix; the rest go to sets skewed towards the first ones.
    let mut members: Vec<Vec<(Ipv4Addr, u8)>> = vec![Vec::new(); keys.len()];
    for (at, prefix) in prefixes.into_iter().enumerate() {
        let set = if at < keys.len() {
            at
        } else {
            rng.skewed(keys.len() as u64) as usize
        };
        members[set].push(prefix);
    }
    let mut sets: Vec<_> = keys
        .into_iter()
        .zip(members)
        .map(|(key, prefixes)| {
            let attributes = PathAttributes {
                origin: Some(key.origin),
                as_path: Some(AsPath::sequence(key.path)),
                next_hop: Some(next_hop),
                med: key.med,
                communities: key.communities,
                ..PathAttributes::default()
            };
            (attributes, prefixes)
        })
        .collect();
    // Sent in no particular order, as a real table's sets are (Fisher–Yates).
    for i in (1..sets.len()).rev() {
        sets.swap(i, rng.below(i as u64 + 1) as usize);
    }
    Table { sets }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_table_and_distinct_prefixes() {
        let next_hop = Ipv4Addr::new(198, 18, 0, 2);
        let a = generate(7, 20_000, 65002, next_hop);
        let b = generate(7, 20_000, 65002, next_hop);
        assert_eq!(a.sets.len(), 6_000);
        let prefixes: HashSet<_> = a.sets.iter().flat_map(|s| s.1.iter().copied()).collect();
        assert_eq!(prefixes.len(), 20_000);
        assert!(a.sets.iter().zip(&b.sets).all(|(x, y)| x == y));
    }
}
