//! Fails early, with the fix, when the BPF linker is missing.
fn main() {
    if which::which("bpf-linker").is_err() {
        panic!("bpf-linker not found on PATH: run `cargo xtask setup` (README.md says what it installs)");
    }
}
