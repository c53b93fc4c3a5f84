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

/// The body of a guest that reads sector 0 of its vhost-user disk `/dev/vda` and prints it
/// (`DISK-READ …`), writes a random token at sector 8 (`DISK-WROTE <token>`, fsync) — both
/// skipped when booted with `nodisk` — then puts a random token in RAM (tmpfs), prints
/// `GUEST-TOKEN <token>` and `GUEST-READY`, and idles. Needs the virtio_blk module.
pub const DISK_AND_TOKEN_GUEST: &str = r#"
if ! grep -qw nodisk /proc/cmdline; then
    for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
    echo "DISK-READ $(head -c 64 /dev/vda | head -n 1)"
    tok="GUEST-DISK-TOKEN-$(rand_hex 8)"
    printf '%s\n' "$tok" | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null && echo "DISK-WROTE $tok" || echo "IO-FAILED"
fi
ram="PAGELESS-TOKEN-$(rand_hex 12)"
echo "$ram" > /run/token
echo "GUEST-TOKEN $ram"
echo GUEST-READY
while true; do sleep 10; done
"#;

/// The token in a `GUEST-TOKEN <token>` console line.
pub fn token_of(line: &str) -> String {
    line.split_whitespace().last().expect("a token").to_string()
}
