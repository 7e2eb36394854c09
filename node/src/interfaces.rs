//! This node's interfaces and their addresses, for host endpoints that name `expectedIPs`
//! and no `interfaceName`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;

/// Every interface of this network namespace with its addresses (loopback included).
pub async fn addresses() -> Result<BTreeMap<String, Vec<IpAddr>>, String> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    let task = tokio::spawn(connection);
    let result = async {
        let names = names(&handle).await?;
        let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        let mut addresses = handle.address().get().execute();
        while let Some(message) = addresses
            .try_next()
            .await
            .map_err(|e| format!("listing addresses: {e}"))?
        {
            let Some(name) = names.get(&message.header.index) else {
                continue;
            };
            for attribute in &message.attributes {
                if let AddressAttribute::Address(address) = attribute {
                    out.entry(name.clone()).or_default().push(*address);
                }
            }
        }
        for list in out.values_mut() {
            list.sort();
            list.dedup();
        }
        Ok(out)
    }
    .await;
    task.abort();
    result
}

/// Every interface: index → name.
pub(crate) async fn names(handle: &rtnetlink::Handle) -> Result<BTreeMap<u32, String>, String> {
    let mut names = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links
        .try_next()
        .await
        .map_err(|e| format!("listing links: {e}"))?
    {
        for attribute in &link.attributes {
            if let LinkAttribute::IfName(name) = attribute {
                names.insert(link.header.index, name.clone());
            }
        }
    }
    Ok(names)
}
