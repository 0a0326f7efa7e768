//! A pack as one file: the gzipped tar the engine publishes to the packs object store and
//! workers unpack, named by the SHA-256 of its bytes.
//!
//! The archive is reproducible: entries in path order, no timestamps or owners, modes 0644
//! or 0755. The same files give the same digest on every engine, so a reload that changes
//! nothing publishes nothing. `.git`, `__pycache__` and symbolic links are left out.
//!
//! [`extract`] is the one way an archive becomes files, for bundles and for uploaded
//! `.tar.gz` packs alike: only plain files and directories, every path inside the target,
//! and at most [`UNPACKED_LIMIT`] bytes in all.

use std::io::{self, Read as _, Write as _};
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};

/// The most bytes an archive may unpack to.
pub const UNPACKED_LIMIT: u64 = 512 * 1024 * 1024;

/// Directories that are never part of a bundle.
const LEFT_OUT: [&str; 2] = [".git", "__pycache__"];

/// A pack directory as one archive.
pub struct Bundle {
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Bundle {
    /// The files under `dir`, archived.
    pub fn of_dir(dir: &Path) -> io::Result<Self> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        append_dir(&mut builder, dir, Path::new(""))?;
        let bytes = builder.into_inner()?.finish()?;
        Ok(Self {
            digest: digest_of(&bytes),
            bytes,
        })
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn append_dir<W: io::Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    relative: &Path,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        if LEFT_OUT.iter().any(|left| name == *left) {
            continue;
        }
        let path = relative.join(&name);
        let kind = entry.file_type()?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, &path, io::empty())?;
            append_dir(builder, &entry.path(), &path)?;
        } else if kind.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let executable = entry.metadata()?.permissions().mode() & 0o111 != 0;
            let data = std::fs::read(entry.path())?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, &path, data.as_slice())?;
        }
    }
    Ok(())
}

/// Unpacks a bundle into `into`, after checking that its bytes are the ones `digest` names.
pub fn unpack(bytes: &[u8], digest: &str, into: &Path) -> Result<(), String> {
    let found = digest_of(bytes);
    if found != digest {
        return Err(format!(
            "the bundle's bytes hash to {found}, not to the {digest} it is named by"
        ));
    }
    extract(bytes, into)
}

/// Unpacks a gzipped tar into `into` (created): plain files and directories only (links and
/// devices are skipped), no path that leads outside `into`, at most [`UNPACKED_LIMIT`] bytes.
pub fn extract(bytes: &[u8], into: &Path) -> Result<(), String> {
    std::fs::create_dir_all(into).map_err(|e| format!("cannot create {}: {e}", into.display()))?;
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a gzipped tar archive: {e}"))?;
    let mut total: u64 = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a gzipped tar archive: {e}"))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        let raw = entry
            .path()
            .map_err(|e| format!("an entry's path cannot be read: {e}"))?
            .into_owned();
        let relative = confined(&raw)
            .ok_or_else(|| format!("entry {} leads outside the archive", raw.display()))?;
        let target = into.join(&relative);
        if kind.is_dir() {
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
            continue;
        }
        total = total.saturating_add(entry.size());
        if total > UNPACKED_LIMIT {
            return Err(format!(
                "the archive unpacks to more than {} MiB",
                UNPACKED_LIMIT / (1024 * 1024)
            ));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let executable = entry.header().mode().is_ok_and(|mode| mode & 0o111 != 0);
        let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("entry {} cannot be read: {e}", raw.display()))?;
        write_file(&target, &data, executable)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    }
    Ok(())
}

/// `path` as a relative path of plain names, or `None` if it is absolute or climbs out.
fn confined(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn write_file(path: &Path, data: &[u8], executable: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .open(path)?;
    file.write_all(data)
}

/// Copies the pack directory `from` to `to` (created), files and directories only, leaving
/// out what a bundle leaves out.
pub fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if LEFT_OUT.iter().any(|left| name == *left) {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(dir: &Path) {
        std::fs::create_dir_all(dir.join("actions/lib")).unwrap();
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join("pack.yaml"), "name: p\n").unwrap();
        std::fs::write(dir.join("actions/lib/x.py"), "X = 1\n").unwrap();
        std::fs::write(dir.join(".git/HEAD"), "ref\n").unwrap();
        std::fs::write(dir.join("actions/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("actions/run.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
    }

    #[test]
    fn the_same_files_give_the_same_digest_and_unpack_to_the_same_files() {
        let tmp = tempfile::tempdir().unwrap();
        pack(&tmp.path().join("a"));
        pack(&tmp.path().join("b"));
        let a = Bundle::of_dir(&tmp.path().join("a")).unwrap();
        let b = Bundle::of_dir(&tmp.path().join("b")).unwrap();
        assert_eq!(a.digest, b.digest);
        assert!(a.digest.starts_with("sha256:"));

        let out = tmp.path().join("out");
        unpack(&a.bytes, &a.digest, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("actions/lib/x.py")).unwrap(),
            "X = 1\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("actions/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "the script stays executable");
        assert!(!out.join(".git").exists(), ".git is left out");

        std::fs::write(tmp.path().join("b/actions/lib/x.py"), "X = 2\n").unwrap();
        let changed = Bundle::of_dir(&tmp.path().join("b")).unwrap();
        assert_ne!(changed.digest, a.digest);
    }

    #[test]
    fn bytes_that_do_not_match_their_digest_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        pack(&tmp.path().join("a"));
        let a = Bundle::of_dir(&tmp.path().join("a")).unwrap();
        let wrong = digest_of(b"other");
        let err = unpack(&a.bytes, &wrong, &tmp.path().join("out")).unwrap_err();
        assert!(err.contains("not to the"), "{err}");
        assert!(!tmp.path().join("out").exists());
    }

    #[test]
    fn an_entry_leading_outside_the_target_is_refused() {
        // A tar with `../escaped`, written by hand: the builder refuses such paths.
        let mut header = tar::Header::new_gnu();
        let name = b"../escaped";
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_size(2);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut raw = header.as_bytes().to_vec();
        raw.extend_from_slice(b"hi");
        raw.resize(raw.len() + 510 + 1024, 0);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&raw).unwrap();
        let bytes = gz.finish().unwrap();

        let tmp = tempfile::tempdir().unwrap();
        let err = extract(&bytes, &tmp.path().join("in")).unwrap_err();
        assert!(err.contains("leads outside"), "{err}");
        assert!(!tmp.path().join("escaped").exists());
    }
}
