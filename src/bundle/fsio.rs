//! Durable, checked file operations for bundles: synced writes, verified
//! reads, directory fsync and atomic renames.
//!
//! Owns: how bytes reach the disk and come back checked against a manifest
//! entry. Must not touch: what the bytes mean (that is the other bundle
//! modules).

use super::error::{BundleError, Result};
use super::manifest::FileEntry;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Lower-case hex blake3 of `bytes`.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Writes `bytes` to `dir/rel` (creating parent directories), fsyncs the
/// file, and returns its manifest entry.
pub fn write_synced(dir: &Path, rel: &str, bytes: &[u8]) -> Result<FileEntry> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| BundleError::io("create directory", parent, e))?;
    }
    let mut f = File::create(&path).map_err(|e| BundleError::io("create", &path, e))?;
    f.write_all(bytes)
        .map_err(|e| BundleError::io("write", &path, e))?;
    f.sync_all()
        .map_err(|e| BundleError::io("fsync", &path, e))?;
    Ok(FileEntry {
        path: rel.to_owned(),
        bytes: bytes.len() as u64,
        blake3: blake3_hex(bytes),
    })
}

/// Fsyncs a directory so that the names created in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    // Directories can be opened read-only and fsynced on Unix; elsewhere
    // this is not possible and the rename is as durable as it gets.
    #[cfg(unix)]
    {
        let f = File::open(dir).map_err(|e| BundleError::io("open directory", dir, e))?;
        f.sync_all()
            .map_err(|e| BundleError::io("fsync directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Compares the on-disk size of `path` with the manifest, without reading it.
fn check_size(path: &Path, entry: &FileEntry) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::MissingFile {
                file: path.to_path_buf(),
            })
        }
        Err(e) => return Err(BundleError::io("read metadata of", path, e)),
    };
    if !meta.is_file() {
        return Err(BundleError::decode(path, "expected a regular file"));
    }
    let actual = meta.len();
    if actual < entry.bytes {
        return Err(BundleError::Truncated {
            file: path.to_path_buf(),
            expected: entry.bytes,
            actual,
        });
    }
    if actual > entry.bytes {
        return Err(BundleError::Oversized {
            file: path.to_path_buf(),
            expected: entry.bytes,
            actual,
        });
    }
    Ok(())
}

fn checksum_error(path: &Path, entry: &FileEntry, actual: String) -> BundleError {
    BundleError::Checksum {
        file: path.to_path_buf(),
        expected: entry.blake3.clone(),
        actual,
    }
}

/// Reads `dir/entry.path` whole and returns the bytes only if size and
/// blake3 match the manifest. Decoding always starts from these bytes, so
/// what is decoded is exactly what was verified.
pub fn read_verified(dir: &Path, entry: &FileEntry) -> Result<Vec<u8>> {
    let path = dir.join(&entry.path);
    check_size(&path, entry)?;
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::MissingFile { file: path })
        }
        Err(e) => return Err(BundleError::io("read", &path, e)),
    };
    // The file may have changed between the size check and the read.
    if bytes.len() as u64 != entry.bytes {
        check_size(&path, entry)?;
        return Err(BundleError::Truncated {
            file: path,
            expected: entry.bytes,
            actual: bytes.len() as u64,
        });
    }
    let actual = blake3_hex(&bytes);
    if actual != entry.blake3 {
        return Err(checksum_error(&path, entry, actual));
    }
    Ok(bytes)
}

/// Verifies size and blake3 of `dir/entry.path` by streaming it, for files
/// that are checked now but decoded later (or never).
pub fn verify_streaming(dir: &Path, entry: &FileEntry) -> Result<()> {
    let path = dir.join(&entry.path);
    check_size(&path, entry)?;
    let mut f = File::open(&path).map_err(|e| BundleError::io("open", &path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| BundleError::io("read", &path, e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    if total != entry.bytes {
        return Err(BundleError::Truncated {
            file: path,
            expected: entry.bytes,
            actual: total,
        });
    }
    let actual = hasher.finalize().to_hex().to_string();
    if actual != entry.blake3 {
        return Err(checksum_error(&path, entry, actual));
    }
    Ok(())
}

/// Renames `from` to `to` only if `to` does not exist. On Linux this is one
/// atomic `renameat2(RENAME_NOREPLACE)`; elsewhere (or on filesystems that
/// lack it) a check followed by a rename, which is racy only against another
/// writer choosing the same output at the same instant.
pub fn rename_no_replace(from: &Path, to: &Path) -> Result<()> {
    #[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
    {
        match renameat2(from, to, libc::RENAME_NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(BundleError::Exists {
                    dir: to.to_path_buf(),
                })
            }
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(BundleError::io("rename bundle into", to, e)),
        }
    }
    if to.symlink_metadata().is_ok() {
        return Err(BundleError::Exists {
            dir: to.to_path_buf(),
        });
    }
    std::fs::rename(from, to).map_err(|e| BundleError::io("rename bundle into", to, e))
}

/// Puts `new` at `target` where a directory already exists, and returns the
/// path the old directory now lives at (the caller removes it). On Linux the
/// two are swapped atomically (`RENAME_EXCHANGE`), so `target` is never
/// absent; elsewhere the old one is renamed aside first.
pub fn swap_into_place(new: &Path, target: &Path, aside: &Path) -> Result<PathBuf> {
    #[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
    {
        match renameat2(new, target, libc::RENAME_EXCHANGE) {
            // After the exchange the old bundle lives at `new`'s path.
            Ok(()) => return Ok(new.to_path_buf()),
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(BundleError::io("swap bundle into", target, e)),
        }
    }
    std::fs::rename(target, aside)
        .map_err(|e| BundleError::io("move the old bundle aside from", target, e))?;
    if let Err(e) = std::fs::rename(new, target) {
        // Put the old bundle back so a failed replace changes nothing.
        let _ = std::fs::rename(aside, target);
        return Err(BundleError::io("rename bundle into", target, e));
    }
    Ok(aside.to_path_buf())
}

#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_from = CString::new(from.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let c_to = CString::new(to.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the
    // call; AT_FDCWD makes relative paths resolve like std::fs::rename.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
