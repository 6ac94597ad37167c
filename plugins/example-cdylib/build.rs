// A cdylib carries mlx-rs's unmangled error handler; -Bsymbolic binds the library's own references to its own
// copy, so a host that exports its symbols cannot interpose it. Every plugin library needs this line.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-Bsymbolic");
}
