//! `twill-ipam`: the CNI IPAM plugin, usable under `twill` or any other main plugin.

fn main() {
    std::process::exit(twill_cni::plugin::run(twill_cni::plugin::Plugin::TwillIpam));
}
