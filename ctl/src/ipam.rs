//! `twillctl ipam`: usage like `calicoctl ipam show`, the consistency check, and release.

use std::net::IpAddr;

use clap::Subcommand;
use ipnet::IpNet;
use twill_ipam::block;
use twill_ipam::gc::{inventory, report};
use twill_ipam::runtime::Ipam;
use twill_shared::client::Client;
use twill_shared::datastore::connect;
use twill_shared::resource::{Kind, Resource};

use crate::table::layout;
use crate::{usage, Failure};

#[derive(Debug, clap::Args)]
pub struct IpamArgs {
    #[command(subcommand)]
    command: IpamCommand,
}

#[derive(Debug, Subcommand)]
enum IpamCommand {
    /// Addresses in use per pool (and per block).
    Show {
        /// One row per block too.
        #[arg(long)]
        show_blocks: bool,
    },
    /// Allocations without a workload endpoint (leaks), endpoints whose address is not
    /// allocated, handles with no address; exit 1 when anything is wrong.
    Check,
    /// Release addresses: one address, or every address of a handle.
    Release {
        /// The address.
        #[arg(long, conflicts_with = "handle", required_unless_present = "handle")]
        ip: Option<IpAddr>,
        /// The handle (`<network>.<containerID>`).
        #[arg(long)]
        handle: Option<String>,
    },
}

/// Runs `twillctl ipam …`.
pub async fn run(args: IpamArgs, datastore: &str) -> Result<(), Failure> {
    let store = connect(datastore).await?;
    match args.command {
        IpamCommand::Show { show_blocks } => show(store, show_blocks).await,
        IpamCommand::Check => check(store).await,
        IpamCommand::Release { ip, handle } => {
            let ipam = Ipam::new(store, "twillctl", None);
            match (ip, handle) {
                (Some(ip), None) => {
                    let released = ipam.release_ips(&[ip]).await?;
                    if released.is_empty() {
                        return Err(anyhow::anyhow!("{ip} is not allocated").into());
                    }
                    for (ip, handle) in released {
                        println!("released {ip} (handle {})", handle.unwrap_or_default());
                    }
                }
                (None, Some(handle)) => {
                    let released = ipam.release_handle(&handle).await?;
                    if released.is_empty() {
                        return Err(anyhow::anyhow!("handle {handle:?} holds no address").into());
                    }
                    for ip in released {
                        println!("released {ip} (handle {handle})");
                    }
                }
                _ => return Err(usage("ipam release needs --ip or --handle".into())),
            }
            Ok(())
        }
    }
}

fn percent(part: u128, whole: u128) -> String {
    if whole == 0 {
        return "0%".into();
    }
    format!("{}%", part * 100 / whole)
}

fn size(net: &IpNet) -> u128 {
    1u128 << (net.max_prefix_len() - net.prefix_len()).min(127)
}

async fn show(
    store: std::sync::Arc<dyn twill_shared::datastore::Datastore>,
    show_blocks: bool,
) -> Result<(), Failure> {
    let pools = Client::new(store.clone()).list(Kind::IpPool, None).await?;
    let inventory = inventory(store.as_ref()).await?;
    let mut rows = vec![["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]
        .map(String::from)
        .to_vec()];
    for pool in &pools {
        let Resource::IpPool(pool) = pool else {
            continue;
        };
        let Some(cidr) = pool.spec.cidr.map(|c| c.0) else {
            continue;
        };
        let blocks: Vec<_> = inventory
            .blocks
            .iter()
            .filter(|b| b.cidr.is_some_and(|c| cidr.contains(&c.0)))
            .collect();
        let used: u128 = blocks
            .iter()
            .map(|b| block::allocated(b).len() as u128)
            .sum();
        let total = size(&cidr);
        rows.push(vec![
            "IP Pool".into(),
            cidr.to_string(),
            total.to_string(),
            format!("{used} ({})", percent(used, total)),
            format!("{} ({})", total - used, percent(total - used, total)),
        ]);
        if show_blocks {
            for spec in blocks {
                let block_cidr = spec.cidr.map(|c| c.0).expect("filtered on cidr");
                let used = block::allocated(spec).len() as u128;
                let total = size(&block_cidr);
                rows.push(vec![
                    "Block".into(),
                    block_cidr.to_string(),
                    total.to_string(),
                    format!("{used} ({})", percent(used, total)),
                    format!("{} ({})", total - used, percent(total - used, total)),
                ]);
            }
        }
    }
    print!("{}", layout(&rows));
    Ok(())
}

async fn check(
    store: std::sync::Arc<dyn twill_shared::datastore::Datastore>,
) -> Result<(), Failure> {
    let report = report(store.as_ref()).await?;
    println!("{} allocations checked.", report.allocations);
    println!(
        "{} leaked (no workload endpoint holds their handle):",
        report.leaked.len()
    );
    for leak in &report.leaked {
        let who: Vec<String> = leak
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "  {}  handle {}  block {}  {}",
            leak.ip,
            leak.handle,
            leak.block,
            who.join(" ")
        );
    }
    println!(
        "{} endpoint addresses not allocated:",
        report.unallocated.len()
    );
    for (endpoint, ip) in &report.unallocated {
        println!("  {ip}  endpoint {endpoint}");
    }
    println!("{} handles with no address:", report.empty_handles.len());
    for handle in &report.empty_handles {
        println!("  {handle}");
    }
    if !report.orphaned_blocks.is_empty() {
        println!(
            "{} blocks affine to nodes that do not exist:",
            report.orphaned_blocks.len()
        );
        for (cidr, node) in &report.orphaned_blocks {
            println!("  {cidr}  node {node}");
        }
    }
    if report.is_clean() {
        println!("IPAM is consistent.");
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "IPAM has problems (listed above); free leaks with `twillctl ipam release --handle H`"
        )
        .into())
    }
}
