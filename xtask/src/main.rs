//! Project automation. `cargo xtask bench` (or `make bench`) runs the benchmarks and writes
//! docs/benchmarks.md with the machine, the date, medians and ratios.

#![allow(clippy::disallowed_methods)] // Benchmarks read the clock and start processes.

mod bench;
mod bgp;
mod cluster;
mod cni;
mod crds;
mod images;
mod ingest;
mod k8s;
mod kernel_routes;
mod kube_bench;
mod kube_install;
mod policy;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench::run(args.get(1).map(String::as_str)),
        Some("bench-bgp") => {
            // bench-bgp [PREFIXES...] [realistic PREFIXES...]: one run a row.
            let split = args
                .iter()
                .position(|a| a == "realistic")
                .unwrap_or(args.len());
            let sizes = |from: &[String]| -> Vec<u64> {
                from.iter().filter_map(|a| a.parse().ok()).collect()
            };
            let (synthetic, realistic) = (sizes(&args[1..split]), sizes(&args[split..]));
            let synthetic = if synthetic.is_empty() && realistic.is_empty() {
                vec![100_000]
            } else {
                synthetic
            };
            println!("{}", bgp::run(1, &synthetic, &realistic));
            Ok(())
        }
        Some("bench-sqlite-sync") => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            print!("{}", runtime.block_on(bench::synchronous_only())?);
            Ok(())
        }
        Some("crds") => {
            println!("{}", crds::write()?.display());
            Ok(())
        }
        Some("images") => images::run(&args[1..]),
        Some("bench-kube-install") => {
            print!("{}", kube_install::run());
            Ok(())
        }
        Some("k8s-build") => {
            println!("{}", k8s::build()?.display());
            Ok(())
        }
        Some("bench-cluster") => {
            print!("{}", cluster::run());
            Ok(())
        }
        Some("bench-kube") => {
            print!("{}", kube_bench::run_parts(&args[1..]));
            Ok(())
        }
        Some("bench-cni") => {
            print!("{}", cni::run());
            Ok(())
        }
        Some("policy-memory") => {
            policy::memory(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(0))
        }
        Some("policy-calc") => policy::calc_only(),
        Some("bench-policy") => {
            print!("{}", policy::run());
            Ok(())
        }
        Some("bench-ingest") => {
            let sizes: Vec<u32> = args[1..].iter().filter_map(|a| a.parse().ok()).collect();
            print!(
                "{}",
                ingest::run(
                    3,
                    if sizes.is_empty() {
                        &[1_000_000]
                    } else {
                        &sizes
                    },
                    args.iter().any(|a| a == "realistic"),
                )
            );
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask bench [OUTPUT.md] | bench-bgp [PREFIXES...] [realistic PREFIXES...] | bench-sqlite-sync | bench-policy | bench-cni | bench-kube | images [debug|release] [DIR] | bench-kube-install | k8s-build | bench-ingest [realistic] [PREFIXES...]"
            );
            std::process::exit(2);
        }
    }
}
