//! A strict tar (ustar) writer and reader for checkpoint archives.
//!
//! The writer puts the regular files of one directory, with plain names,
//! into an archive. The reader accepts only what such an archive holds:
//! regular files with plain names (no `/`, not `.` or `..`, no control
//! characters), each once, and refuses everything else — links, devices,
//! directories, FIFOs, pax or GNU extension headers, absolute names, `..`,
//! a bad checksum, a truncated file. The whole archive is checked before a
//! byte is written; files are then created with `O_EXCL | O_NOFOLLOW` in a
//! directory that did not exist before, so nothing lands outside it.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Refusal, Result, io};

const BLOCK: usize = 512;
/// ustar's name field.
const NAME_LEN: usize = 100;
/// The most files an archive may hold.
pub const MAX_FILES: usize = 10_000;

/// One file of an archive, as checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its plain name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where its data starts in the archive.
    offset: u64,
}

/// A name the reader accepts and the writer writes: one path component
/// that is a plain file name.
pub fn check_plain_name(name: &str) -> Result<(), Refusal> {
    let bad = |why: String| Refusal::BadName {
        name: name.to_string(),
        why,
    };
    if name.starts_with('/') {
        return Err(bad("is an absolute name".into()));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(bad("climbs out with '..'".into()));
    }
    if name.len() > NAME_LEN {
        return Err(bad(format!("is longer than {NAME_LEN} bytes")));
    }
    phaul_transport::images::check_name(name).map_err(|e| match e {
        phaul_transport::Error::BadName { reason, .. } => {
            bad(format!("is not a plain name: {reason}"))
        }
        other => bad(other.to_string()),
    })
}

// --- writing -----------------------------------------------------------------

fn octal(field: &mut [u8], value: u64) {
    // digits, then NUL; leading zeros fill the field.
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

fn header(name: &str, size: u64, mtime: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o600);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size < 0o777_7777_7777 {
        octal(&mut h[124..136], size);
    } else {
        // GNU base-256: the high bit of the first byte, then big-endian.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime.min(0o777_7777_7777));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The regular files of `dir` (sorted by name); anything else (a
/// directory, a link) is left out, and a regular file whose name is not
/// plain is an error.
fn regular_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
        let e = e.map_err(io(format!("reading {}", dir.display())))?;
        let meta = std::fs::symlink_metadata(e.path()).map_err(io("a file's metadata"))?;
        if !meta.file_type().is_file() {
            continue;
        }
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| Error::Unarchivable {
                name: n.to_string_lossy().into_owned(),
                why: "not UTF-8".into(),
            })?;
        check_plain_name(&name).map_err(|r| Error::Unarchivable {
            name: name.clone(),
            why: r.to_string(),
        })?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Writes the regular files of `dir` (sorted by name) into a new archive at
/// `out`. Anything else in `dir` (a directory, a link) is left out; a
/// regular file whose name is not plain is an error. Returns the number of
/// files and the archive's size.
pub fn write_dir(dir: &Path, out: &Path) -> Result<(usize, u64)> {
    let names = regular_files(dir)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(out)
        .map_err(io(format!("creating {}", out.display())))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut total = 0u64;
    for name in &names {
        let path = dir.join(name);
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let meta = f.metadata().map_err(io("a file's metadata"))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let size = meta.len();
        w.write_all(&header(name, size, mtime))
            .map_err(io("writing the archive"))?;
        let copied = std::io::copy(&mut (&mut f).take(size), &mut w)
            .map_err(io(format!("copying {}", path.display())))?;
        if copied != size {
            return Err(Error::Unarchivable {
                name: name.clone(),
                why: "it changed size while archived".into(),
            });
        }
        let pad = padding(size);
        w.write_all(&[0u8; BLOCK][..pad])
            .map_err(io("writing the archive"))?;
        total += BLOCK as u64 + size + pad as u64;
    }
    w.write_all(&[0u8; 2 * BLOCK])
        .map_err(io("writing the archive"))?;
    total += 2 * BLOCK as u64;
    let file = w
        .into_inner()
        .map_err(|e| io("writing the archive")(e.into_error()))?;
    file.sync_all().map_err(io("syncing the archive"))?;
    Ok((names.len(), total))
}

fn padding(size: u64) -> usize {
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

// --- reading -----------------------------------------------------------------

fn parse_number(field: &[u8], what: &'static str) -> Result<u64, Refusal> {
    let bad = |why| Refusal::BadNumber { field: what, why };
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256 (positive only).
        if field[0] & 0x40 != 0 {
            return Err(bad("negative"));
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or(bad("too large"))?;
        }
        return Ok(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|b| *b != 0)
        .filter(|b| *b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    if !text.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(bad("not an octal number"));
    }
    let s = std::str::from_utf8(&text).map_err(|_| bad("not an octal number"))?;
    u64::from_str_radix(s, 8).map_err(|_| bad("too large"))
}

fn type_name(flag: u8) -> String {
    match flag {
        b'1' => "a hard link".into(),
        b'2' => "a symbolic link".into(),
        b'3' => "a character device".into(),
        b'4' => "a block device".into(),
        b'5' => "a directory".into(),
        b'6' => "a FIFO".into(),
        b'7' => "a contiguous file".into(),
        b'x' | b'g' => "a pax extended header".into(),
        b'L' | b'K' => "a GNU long-name header".into(),
        other => format!("an entry of type {:?}", char::from(other)),
    }
}

/// Checks one header block (the `n`th, from 0) and returns its file's name
/// and size.
fn check_header(h: &[u8; BLOCK], n: usize) -> Result<(String, u64), Refusal> {
    let magic = &h[257..263];
    let gnu = magic == b"ustar " && &h[263..265] == b" \0";
    if magic != b"ustar\0" && !gnu {
        return Err(Refusal::NotUstar);
    }
    let stored = parse_number(&h[148..156], "checksum")?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if stored != sum {
        return Err(Refusal::BadChecksum(n + 1));
    }
    let raw_name = &h[..NAME_LEN];
    let name_bytes = &raw_name[..raw_name.iter().position(|b| *b == 0).unwrap_or(NAME_LEN)];
    let name = String::from_utf8(name_bytes.to_vec()).map_err(|_| Refusal::NameNotUtf8)?;
    let flag = h[156];
    if flag != b'0' && flag != 0 {
        let kind = type_name(flag);
        return Err(Refusal::NotRegular { name, kind });
    }
    // ustar's prefix field would put the name in a directory.
    if !gnu && h[345..500].iter().any(|b| *b != 0) {
        return Err(Refusal::BadName {
            name,
            why: "has a directory prefix; only plain names are accepted".into(),
        });
    }
    check_plain_name(&name)?;
    Ok((name, parse_number(&h[124..136], "size")?))
}

/// Reads and checks every header of the archive `r`; nothing is written.
pub fn check<R: Read + Seek>(r: &mut R, archive_len: u64) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut pos = 0u64;
    let mut h = [0u8; BLOCK];
    loop {
        if pos + BLOCK as u64 > archive_len {
            if entries.is_empty() {
                return Err(Refusal::TooShort.into());
            }
            // No end-of-archive blocks: accepted when the last file is whole.
            break;
        }
        r.seek(SeekFrom::Start(pos))
            .map_err(io("reading the archive"))?;
        r.read_exact(&mut h).map_err(io("reading the archive"))?;
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let (name, size) = check_header(&h, entries.len())?;
        if entries.iter().any(|e| e.name == name) {
            return Err(Refusal::Duplicate(name).into());
        }
        if entries.len() >= MAX_FILES {
            return Err(Refusal::TooManyFiles.into());
        }
        let offset = pos + BLOCK as u64;
        let Some(end) = offset.checked_add(size).filter(|e| *e <= archive_len) else {
            return Err(Refusal::CutShort(name).into());
        };
        entries.push(Entry { name, size, offset });
        pos = end + padding(size) as u64;
    }
    if entries.is_empty() {
        return Err(Refusal::Empty.into());
    }
    Ok(entries)
}

/// Checks the archive at `archive` whole, then extracts its files into
/// `dest`, a directory this call creates (it must not exist). Returns the
/// files written.
pub fn extract(archive: &Path, dest: &Path) -> Result<Vec<Entry>> {
    let file = File::open(archive).map_err(io(format!("opening {}", archive.display())))?;
    let len = file.metadata().map_err(io("the archive's size"))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let entries = check(&mut r, len)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(io(format!("creating {}", dest.display())))?;
    for e in &entries {
        r.seek(SeekFrom::Start(e.offset))
            .map_err(io("reading the archive"))?;
        let path = dest.join(&e.name);
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let copied = std::io::copy(&mut (&mut r).take(e.size), &mut w)
            .map_err(io(format!("writing {}", path.display())))?;
        if copied != e.size {
            return Err(Refusal::CutShort(e.name.clone()).into());
        }
        w.flush()
            .map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry as a hostile archive would carry it: any name and type.
    fn entry(name: &str, flag: u8, data: &[u8]) -> Vec<u8> {
        let mut h = header("x", data.len() as u64, 0);
        h[..NAME_LEN].fill(0);
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[156] = flag;
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out.resize(out.len() + padding(data.len() as u64), 0);
        out
    }

    fn refusal(bytes: &[u8]) -> Refusal {
        let mut r = std::io::Cursor::new(bytes);
        match check(&mut r, bytes.len() as u64) {
            Err(Error::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_written_directory_extracts_to_the_same_files() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("inventory.img"), b"inv").unwrap();
        std::fs::write(src.path().join("pages-1.img"), vec![9u8; 5000]).unwrap();
        std::fs::create_dir(src.path().join("subdir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let tar = out.path().join("a.tar");
        let (files, bytes) = write_dir(src.path(), &tar).unwrap();
        assert_eq!(files, 2, "only the regular files");
        assert_eq!(bytes, std::fs::metadata(&tar).unwrap().len());
        let dest = out.path().join("x");
        let entries = extract(&tar, &dest).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["inventory.img", "pages-1.img"]);
        assert_eq!(std::fs::read(dest.join("inventory.img")).unwrap(), b"inv");
        assert_eq!(
            std::fs::read(dest.join("pages-1.img")).unwrap(),
            vec![9u8; 5000]
        );
        // Only into a directory that did not exist.
        assert!(matches!(extract(&tar, &dest), Err(Error::Io { .. })));
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        for name in ["../evil", "/tmp/evil", "sub/evil", "..", "a\x07b"] {
            let why = refusal(&entry(name, b'0', b"x"));
            assert!(
                matches!(&why, Refusal::BadName { name: n, .. } if n == name),
                "{name}: {why}"
            );
        }
    }

    #[test]
    fn links_devices_directories_and_pax_headers_are_refused() {
        for flag in [b'1', b'2', b'3', b'5', b'x', b'L'] {
            let why = refusal(&entry("inventory.img", flag, b""));
            assert!(matches!(why, Refusal::NotRegular { .. }), "{why}");
        }
    }

    #[test]
    fn cut_short_duplicated_or_garbled_archives_are_refused() {
        let mut cut = entry("pages-1.img", b'0', &[7u8; 4096]);
        cut.truncate(1024);
        assert!(matches!(refusal(&cut), Refusal::CutShort(n) if n == "pages-1.img"));
        let one = entry("inventory.img", b'0', b"i");
        assert!(matches!(
            refusal(&[one.clone(), one.clone()].concat()),
            Refusal::Duplicate(_)
        ));
        let mut bad_sum = one.clone();
        bad_sum[0] = b'j';
        assert!(matches!(refusal(&bad_sum), Refusal::BadChecksum(1)));
        assert!(matches!(refusal(b"just bytes"), Refusal::TooShort));
        assert!(matches!(refusal(&[1u8; 1024]), Refusal::NotUstar));
        assert!(matches!(refusal(&[0u8; 1024]), Refusal::Empty));
    }
}
