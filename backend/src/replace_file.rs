//! Replacing a file whole: written under a staging name next to it, then renamed over it, so a
//! reader sees the old content or the new, never half of it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `content` to `staging` (created anew with `mode`, never through a symlink left there),
/// syncs it and renames it to `path`. The staging file is removed if anything fails.
pub(crate) fn replace_file(path: &Path, staging: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let _ = std::fs::remove_file(staging);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(staging)?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(staging, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(staging);
    }
    result
}
