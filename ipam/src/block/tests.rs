use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn attrs() -> BTreeMap<String, String> {
    BTreeMap::from([("pod".to_string(), "a".to_string())])
}

fn request<'a>(
    handle: &'a str,
    count: usize,
    attributes: &'a BTreeMap<String, String>,
    reserved: &'a [IpNet],
) -> Request<'a> {
    Request {
        count,
        handle,
        attributes,
        reserved,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn a_new_block_hands_out_addresses_in_order() {
    let block = new_block("10.90.0.64/26".parse().unwrap(), None, None);
    let a = attrs();
    let (block, first) = assign(&block, &request("h1", 2, &a, &[])).unwrap();
    assert_eq!(first, [ip("10.90.0.64"), ip("10.90.0.65")]);
    let (_, second) = assign(&block, &request("h2", 1, &a, &[])).unwrap();
    assert_eq!(second, [ip("10.90.0.66")]);
}

#[test]
fn reserved_addresses_are_skipped_and_stay_free() {
    let block = new_block("10.90.0.0/30".parse().unwrap(), None, None);
    let a = attrs();
    let reserved: Vec<IpNet> = vec!["10.90.0.0/31".parse().unwrap()];
    let (block, got) = assign(&block, &request("h", 4, &a, &reserved)).unwrap();
    assert_eq!(got, [ip("10.90.0.2"), ip("10.90.0.3")]);
    assert_eq!(free_count(&block), 2, "the reserved two are still free");
    let err = assign_specific(&block, ip("10.90.0.1"), &request("x", 1, &a, &reserved));
    assert_eq!(
        err,
        Err(BlockError::Reserved {
            ip: ip("10.90.0.1")
        })
    );
}

#[test]
fn a_full_block_gives_nothing() {
    let block = new_block("10.90.0.0/31".parse().unwrap(), None, None);
    let a = attrs();
    let (block, got) = assign(&block, &request("h", 5, &a, &[])).unwrap();
    assert_eq!(got.len(), 2);
    let (_, none) = assign(&block, &request("h2", 1, &a, &[])).unwrap();
    assert!(none.is_empty());
}

#[test]
fn a_released_address_is_the_last_handed_out_again() {
    let block = new_block("10.90.0.0/30".parse().unwrap(), None, None);
    let a = attrs();
    let (block, _) = assign(&block, &request("h1", 1, &a, &[])).unwrap();
    let (block, released) = release_handle(&block, "h1").unwrap();
    assert_eq!(released, [ip("10.90.0.0")]);
    let (block, got) = assign(&block, &request("h2", 3, &a, &[])).unwrap();
    assert_eq!(got, [ip("10.90.0.1"), ip("10.90.0.2"), ip("10.90.0.3")]);
    let (_, last) = assign(&block, &request("h3", 1, &a, &[])).unwrap();
    assert_eq!(last, [ip("10.90.0.0")]);
}

#[test]
fn specific_addresses_and_their_holders() {
    let block = new_block("fd00:90::/122".parse().unwrap(), None, None);
    let a = attrs();
    let block = assign_specific(&block, ip("fd00:90::7"), &request("h1", 1, &a, &[])).unwrap();
    assert_eq!(holder(&block, 7), Some("h1"));
    assert_eq!(
        assign_specific(&block, ip("fd00:90::7"), &request("h2", 1, &a, &[])),
        Err(BlockError::InUse {
            ip: ip("fd00:90::7"),
            handle: "h1".into()
        })
    );
    assert!(matches!(
        assign_specific(&block, ip("fd00:91::7"), &request("h2", 1, &a, &[])),
        Err(BlockError::NotInBlock { .. })
    ));
    let (block, released) = release_ips(&block, &[ip("fd00:90::7"), ip("fd00:90::8")]).unwrap();
    assert_eq!(released, [(ip("fd00:90::7"), Some("h1".to_string()))]);
    assert!(is_empty(&block));
    assert!(block.attributes.is_empty(), "unused attributes are dropped");
}

#[test]
fn a_corrupt_block_is_refused_not_trusted() {
    let mut block = new_block("10.90.0.0/30".parse().unwrap(), None, None);
    block.allocations.pop();
    let a = attrs();
    assert!(matches!(
        assign(&block, &request("h", 1, &a, &[])),
        Err(BlockError::Corrupt { .. })
    ));
}

#[derive(Debug, Clone)]
enum Step {
    Assign { handle: u8, count: usize },
    Specific { handle: u8, ordinal: u32 },
    ReleaseHandle { handle: u8 },
    ReleaseIp { ordinal: u32 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..6, 1usize..5).prop_map(|(handle, count)| Step::Assign { handle, count }),
        (0u8..6, 0u32..20).prop_map(|(handle, ordinal)| Step::Specific { handle, ordinal }),
        (0u8..6).prop_map(|handle| Step::ReleaseHandle { handle }),
        (0u32..20).prop_map(|ordinal| Step::ReleaseIp { ordinal }),
    ]
}

proptest! {
    /// Against a model that is only a map address → handle: the block never hands out an
    /// address twice, never one outside the block or reserved, and releases exactly what the
    /// model holds.
    #[test]
    fn the_block_agrees_with_a_map_of_addresses(steps in prop::collection::vec(step(), 1..60)) {
        let cidr: IpNet = "10.90.0.16/28".parse().unwrap();
        let reserved: Vec<IpNet> = vec!["10.90.0.20/31".parse().unwrap()];
        let a = attrs();
        let mut block = new_block(cidr, None, None);
        let mut model: BTreeMap<IpAddr, String> = BTreeMap::new();
        let in_block = |ordinal: u32| -> IpAddr {
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 90, 0, 16)) + ordinal).into()
        };
        let is_reserved = |ip: IpAddr| reserved[0].contains(&ip);
        for step in steps {
            match step {
                Step::Assign { handle, count } => {
                    let handle = format!("h{handle}");
                    let (next, got) = assign(&block, &request(&handle, count, &a, &reserved)).unwrap();
                    let free = (0..16).map(in_block).filter(|ip| !model.contains_key(ip) && !is_reserved(*ip)).count();
                    prop_assert_eq!(got.len(), count.min(free));
                    for ip in got {
                        prop_assert!(cidr.contains(&ip));
                        prop_assert!(!is_reserved(ip), "reserved {} handed out", ip);
                        prop_assert!(model.insert(ip, handle.clone()).is_none(), "{} handed out twice", ip);
                    }
                    block = next;
                }
                Step::Specific { handle, ordinal } => {
                    let handle = format!("h{handle}");
                    let ip = in_block(ordinal);
                    let result = assign_specific(&block, ip, &request(&handle, 1, &a, &reserved));
                    let allowed = ordinal < 16 && !model.contains_key(&ip) && !is_reserved(ip);
                    prop_assert_eq!(result.is_ok(), allowed, "specific {}", ip);
                    if let Ok(next) = result {
                        model.insert(ip, handle);
                        block = next;
                    }
                }
                Step::ReleaseHandle { handle } => {
                    let handle = format!("h{handle}");
                    let (next, released) = release_handle(&block, &handle).unwrap();
                    let expected: BTreeSet<IpAddr> = model.iter().filter(|(_, h)| **h == handle).map(|(ip, _)| *ip).collect();
                    prop_assert_eq!(released.into_iter().collect::<BTreeSet<_>>(), expected);
                    model.retain(|_, h| *h != handle);
                    block = next;
                }
                Step::ReleaseIp { ordinal } => {
                    let ip = in_block(ordinal);
                    let (next, released) = release_ips(&block, &[ip]).unwrap();
                    let expected: Vec<(IpAddr, Option<String>)> = model.remove(&ip).map(|h| (ip, Some(h))).into_iter().collect();
                    prop_assert_eq!(released, expected);
                    block = next;
                }
            }
            let held: BTreeMap<IpAddr, String> = allocated(&block)
                .into_iter()
                .map(|(ip, attribute)| (ip, attribute.handle_id.clone().unwrap()))
                .collect();
            prop_assert_eq!(&held, &model);
            prop_assert_eq!(free_count(&block), 16 - model.len());
        }
    }
}
