//! Project automation. `cargo xtask bench` (or `make bench`) runs the benchmarks and writes
//! docs/benchmarks.md with the machine, the date, medians and ratios.

#![allow(clippy::disallowed_methods)] // Benchmarks read the clock and start processes.

mod bench;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("bench") => bench::run(args.get(1).map(String::as_str)),
        _ => {
            eprintln!("usage: cargo xtask bench [OUTPUT.md]");
            std::process::exit(2);
        }
    }
}
