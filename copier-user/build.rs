//! Builds `copier-ebpf` for the BPF target so the binary embeds its XDP program.
use aya_build::{build_ebpf, Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    // aya-build watches the eBPF crate itself; the shared code lives in `common` and
    // `ebpf-capture`.
    println!("cargo:rerun-if-changed={root}/common/src");
    println!("cargo:rerun-if-changed={root}/ebpf-capture/src");
    build_ebpf(
        [Package {
            name: "copier-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../copier-ebpf"),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
