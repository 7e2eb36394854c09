//! `twill`: the CNI plugin. Environment and stdin in, a CNI result on stdout.

fn main() {
    std::process::exit(twill_cni::plugin::run(twill_cni::plugin::Plugin::Twill));
}
