//! Where the binaries under test are.

use std::path::PathBuf;

/// `copier` or `intercept`, built in release mode by `cargo xtask test` (or `build --release`).
///
/// `XDPCOPY_BIN_DIR` overrides the directory.
pub fn xdpcopy(name: &str) -> PathBuf {
    let dir = std::env::var_os("XDPCOPY_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release")));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo xtask build --release`, or run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// The small Rust test server of this crate, built beside the library.
pub fn testbed_server() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // Test binaries live in target/<profile>/deps, xtask in target/<profile>.
    let candidates = exe.ancestors().skip(1).take(2).map(|d| d.join("testbed-server")).collect::<Vec<_>>();
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!("testbed-server not built (looked at {candidates:?}): build the xdpcopy-testbed package's binaries")
    })
}
