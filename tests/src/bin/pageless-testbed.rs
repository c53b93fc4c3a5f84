//! Test-bed helpers for scripts (the demo, benchmarks):
//!
//!   pageless-testbed kernel              print the test kernel's vmlinuz path
//!   pageless-testbed token-guest OUT     build the token guest's initramfs at OUT

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["kernel"] => println!("{}", pageless_tests::kernel::Kernel::get().vmlinuz().display()),
        ["token-guest", out] => pageless_tests::guests::token_guest(&PathBuf::from(out)),
        _ => {
            eprintln!("usage: pageless-testbed kernel | token-guest OUT");
            std::process::exit(2);
        }
    }
}
