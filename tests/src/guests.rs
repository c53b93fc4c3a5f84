//! Ready-made test guests.

use std::path::Path;

use crate::initramfs::Initramfs;

/// Shell snippet: a fresh random token, from the guest's own RNG (never from the host, so
/// that finding it proves the guest wrote it).
pub const NEW_TOKEN: &str = r#"PAGELESS-TOKEN-$(rand_hex 12)"#;

/// A guest that writes a random token into a tmpfs file (guest RAM) and prints
/// `GUEST-TOKEN <token>`, then obeys console commands: `tick` prints `TICK <n>`, `token`
/// writes and prints another (`GUEST-TOKEN <token>`), `quit` powers off.
pub fn token_guest(out: &Path) {
    let body = format!(
        r#"
n=0
new_token() {{ tok="{NEW_TOKEN}"; echo "$tok" > /run/token-$n; echo "GUEST-TOKEN $tok"; }}
new_token
echo GUEST-READY
while read -r cmd; do
    case "$cmd" in
        *tick*) n=$((n + 1)); echo "TICK $n" ;;
        *token*) n=$((n + 1)); new_token ;;
        *quit*) finish ;;
    esac
done
finish
"#
    );
    Initramfs::new().init(&body).build(out).expect("build the token guest's initramfs");
}

/// The token in a `GUEST-TOKEN <token>` console line.
pub fn token_of(line: &str) -> String {
    line.split_whitespace().last().expect("a token").to_string()
}
