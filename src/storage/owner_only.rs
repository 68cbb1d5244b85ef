//! Owner-only creation of everything under a data directory: files `0600`,
//! directories `0700` (before the umask, which can only narrow them).
//!
//! A data directory holds every value in clear; other local users have no
//! reason to read it. Every file and directory the storage engine and the
//! node create goes through these functions, never through
//! `File::create`, `OpenOptions::new` or `fs::create_dir*` directly.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every file created.
pub const FILE_MODE: u32 = 0o600;

/// Mode of every directory created.
pub const DIR_MODE: u32 = 0o700;

/// `OpenOptions` that create files with [`FILE_MODE`].
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Creates (or truncates) `path` for writing, as `File::create` does.
pub fn create(path: &Path) -> io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// Creates `path` and its missing parents with [`DIR_MODE`].
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates the directory `path` (its parent must exist) with [`DIR_MODE`].
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Narrows an existing directory `path` to [`DIR_MODE`] if group or others
/// have any access to it (a data directory created by an older version, or
/// by hand); returns the mode it had when it changed it. Narrowing the top
/// directory makes everything below it private, whatever the files' modes.
pub fn restrict_dir(path: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))?;
    Ok(Some(mode))
}
