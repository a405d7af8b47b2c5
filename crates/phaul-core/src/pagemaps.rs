//! The pre-dumps' pagemaps, copied back from the target to the source.
//!
//! A pre-dump's pages and pagemaps go through CRIU's page server, so both
//! are written on the target only. A later lazy dump (hybrid's final
//! phase) runs on the source with the last pre-dump as its parent, and
//! CRIU marks a clean page "in the parent" only after finding it in the
//! parent's pagemaps, which it reads from the source's image directories.
//! Without them it leaves every page for post-copy and the pre-dumps were
//! for nothing. So the source asks for each pre-dump's pagemaps
//! (`PagemapsOf`, protocol version 4): the target [`collect`]s them, the
//! source [`keep`]s them, each next to an empty pages image: CRIU opens
//! the pages image a pagemap names but reads no page from it while
//! dumping; the pages themselves stay on the target, where the restore
//! reads them.

use std::io::Write;
use std::path::Path;

use criu_rpc::image::{ImageFile, ImageType};
use criu_rpc::proto::PagemapHead;
use phaul_transport::proto::ImageCopy;

use crate::error::{Error, Result};

/// The most pagemap bytes one answer carries, well inside a frame: a
/// pagemap entry is about a dozen bytes, so this is over a million
/// separate runs of pages.
pub const MAX_BYTES: usize = 12 << 20;

/// Whether `name` is a pagemap image's: `pagemap-<id>.img` or
/// `pagemap-shmem-<id>.img`, nothing else (no directory, no `..`).
fn is_pagemap(name: &str) -> bool {
    let Some(id) = name
        .strip_prefix("pagemap-")
        .and_then(|n| n.strip_suffix(".img"))
    else {
        return false;
    };
    let id = id.strip_prefix("shmem-").unwrap_or(id);
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Every pagemap image directly in `dir` (regular files only, a symlink is
/// not followed), sorted by name. More than [`MAX_BYTES`] in all is an
/// error rather than a partial answer.
pub fn collect(dir: &Path) -> Result<Vec<ImageCopy>> {
    let listing = std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))?;
    let mut names = Vec::new();
    for e in listing {
        let e = e.map_err(io(format!("listing {}", dir.display())))?;
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        match e.file_name().into_string() {
            Ok(n) if regular && is_pagemap(&n) => names.push(n),
            _ => {}
        }
    }
    names.sort();
    let mut total = 0usize;
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let data = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        total += data.len();
        if total > MAX_BYTES {
            return Err(Error::Protocol(format!(
                "the pagemaps of {} exceed {MAX_BYTES} bytes",
                dir.display()
            )));
        }
        files.push(ImageCopy { name, data });
    }
    Ok(files)
}

/// Writes `files` (pagemaps from [`collect`]) into `dir`, each with the
/// empty pages image its head names. A name that is not a pagemap's, or a
/// file that exists already, is refused before anything is written.
pub fn keep(dir: &Path, files: &[ImageCopy]) -> Result<()> {
    if let Some(f) = files.iter().find(|f| !is_pagemap(&f.name)) {
        return Err(Error::Protocol(format!(
            "the target sent {:?} as a pagemap",
            f.name
        )));
    }
    for f in files {
        let path = dir.join(&f.name);
        // create_new: never through a symlink, never over a file.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        out.write_all(&f.data)
            .map_err(io(format!("writing {}", path.display())))?;
        let pages = pages_image(&path)?;
        let stub = dir.join(&pages);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&stub)
        {
            Ok(_) => {}
            // Two pagemaps may share a pages image.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating {}", stub.display()))(e)),
        }
    }
    Ok(())
}

/// The name of the pages image the pagemap at `path` names in its head.
fn pages_image(path: &Path) -> Result<String> {
    let bad = |why: String| Error::Protocol(format!("pagemap {}: {why}", path.display()));
    let mut f = ImageFile::open(path, ImageType::Pagemap).map_err(|e| bad(e.to_string()))?;
    let head = f
        .next_entry::<PagemapHead>()
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("no head".into()))?;
    Ok(format!("pages-{}.img", head.pages_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pagemap_names_pass() {
        for ok in ["pagemap-1.img", "pagemap-4242.img", "pagemap-shmem-77.img"] {
            assert!(is_pagemap(ok), "{ok}");
        }
        for bad in [
            "pagemap-.img",
            "pagemap-1.img.tmp",
            "../pagemap-1.img",
            "pagemap-1/../../x.img",
            "pages-1.img",
            "pagemap-shmem-.img",
            "pagemap-1;rm.img",
            "",
        ] {
            assert!(!is_pagemap(bad), "{bad}");
        }
    }

    #[test]
    fn a_name_outside_the_directory_is_refused_with_nothing_written() {
        let d = tempfile::tempdir().unwrap();
        let files = [
            ImageCopy {
                name: "pagemap-1.img".into(),
                data: vec![1, 2, 3],
            },
            ImageCopy {
                name: "../pagemap-2.img".into(),
                data: vec![],
            },
        ];
        let e = keep(&d.path().join("sub"), &files).unwrap_err();
        assert!(e.to_string().contains("../pagemap-2.img"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    /// A pagemap image as CRIU writes one: its magics, then the head
    /// naming pages image `pages_id`, then one entry.
    fn pagemap(pages_id: u32) -> Vec<u8> {
        use prost::Message;
        let ty = ImageType::Pagemap;
        let mut out = Vec::new();
        if let Some(m) = ty.head_magic() {
            out.extend_from_slice(&m.to_ne_bytes());
        }
        out.extend_from_slice(&ty.type_magic().to_ne_bytes());
        let head = PagemapHead { pages_id }.encode_to_vec();
        let entry = criu_rpc::proto::PagemapEntry {
            vaddr: 0x7000_0000,
            nr_pages: 4,
            ..Default::default()
        }
        .encode_to_vec();
        for e in [head, entry] {
            out.extend_from_slice(&u32::try_from(e.len()).unwrap().to_ne_bytes());
            out.extend_from_slice(&e);
        }
        out
    }

    #[test]
    fn pagemaps_travel_with_an_empty_pages_image_each() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(from.path().join("pagemap-12.img"), pagemap(3)).unwrap();
        std::fs::write(from.path().join("pagemap-shmem-9.img"), pagemap(4)).unwrap();
        std::fs::write(from.path().join("pages-3.img"), vec![7u8; 16384]).unwrap();
        std::fs::write(from.path().join("core-12.img"), b"not a pagemap").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", from.path().join("pagemap-13.img")).unwrap();
        let files = collect(from.path()).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["pagemap-12.img", "pagemap-shmem-9.img"]);
        keep(to.path(), &files).unwrap();
        let read = |n: &str| std::fs::read(to.path().join(n)).unwrap();
        assert_eq!(read("pagemap-12.img"), pagemap(3));
        assert_eq!(read("pages-3.img"), b"", "pages stay on the target");
        assert_eq!(read("pages-4.img"), b"");
        let totals = criu_rpc::image::read_pagemaps(to.path()).unwrap();
        assert_eq!(totals.pages, 4, "{totals:?}");
        // Kept once: a second copy would overwrite, and is refused.
        assert!(keep(to.path(), &files).is_err());
    }
}
