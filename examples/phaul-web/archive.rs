//! A strict tar (ustar) writer and reader for checkpoint archives.
//!
//! The writer puts the regular files of one directory, with plain names,
//! into an archive. The reader accepts only what such an archive holds:
//! regular files with plain names (no `/`, not `.` or `..`, no control
//! characters), each once, and refuses everything else — links, devices,
//! directories, FIFOs, pax or GNU extension headers, absolute names, `..`,
//! a bad checksum, a truncated file. The whole archive is checked before a
//! byte is written; files are then created with `O_EXCL | O_NOFOLLOW` in a
//! directory that did not exist before.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

const BLOCK: usize = 512;
/// ustar's name field.
const NAME_LEN: usize = 100;
/// The most files an archive may hold.
pub const MAX_FILES: usize = 10_000;

/// Why an archive was refused or could not be made.
#[derive(Debug)]
pub enum ArchiveError {
    /// The archive breaks the rules; the text says how.
    Refused(String),
    /// Reading or writing failed.
    Io(String, std::io::Error),
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::Refused(why) => write!(f, "archive refused: {why}"),
            ArchiveError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for ArchiveError {}

fn refused(why: impl Into<String>) -> ArchiveError {
    ArchiveError::Refused(why.into())
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let what = what.into();
    move |e| ArchiveError::Io(what, e)
}

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
pub fn check_plain_name(name: &str) -> Result<(), String> {
    if name.starts_with('/') {
        return Err(format!("{name:?} is an absolute name"));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(format!("{name:?} climbs out with '..'"));
    }
    if name.len() > NAME_LEN {
        return Err(format!("{name:?} is longer than {NAME_LEN} bytes"));
    }
    phaul_transport::images::check_name(name).map_err(|e| e.to_string())
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

/// Writes the regular files of `dir` (sorted by name) into a new archive at
/// `out`. Anything else in `dir` (a directory, a link) is left out; a
/// regular file whose name is not plain is an error. Returns the number of
/// files and the archive's size.
pub fn write_dir(dir: &Path, out: &Path) -> Result<(usize, u64), ArchiveError> {
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
            .map_err(|n| refused(format!("{n:?} is not UTF-8")))?;
        check_plain_name(&name).map_err(refused)?;
        names.push(name);
    }
    names.sort();
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
            return Err(refused(format!("{name} changed size while archived")));
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
        .map_err(|e| ArchiveError::Io("writing the archive".into(), e.into_error()))?;
    file.sync_all().map_err(io("syncing the archive"))?;
    Ok((names.len(), total))
}

fn padding(size: u64) -> usize {
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

// --- reading -----------------------------------------------------------------

fn parse_number(field: &[u8], what: &str) -> Result<u64, ArchiveError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256 (positive only).
        if field[0] & 0x40 != 0 {
            return Err(refused(format!("a negative {what}")));
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or_else(|| refused(format!("a {what} too large")))?;
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
        return Err(refused(format!("a {what} that is not an octal number")));
    }
    let s = std::str::from_utf8(&text).map_err(|_| refused(format!("a bad {what}")))?;
    u64::from_str_radix(s, 8).map_err(|_| refused(format!("a {what} too large")))
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

/// Reads and checks every header of the archive `r`; nothing is written.
pub fn check<R: Read + Seek>(r: &mut R, archive_len: u64) -> Result<Vec<Entry>, ArchiveError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut pos = 0u64;
    let mut h = [0u8; BLOCK];
    loop {
        if pos + BLOCK as u64 > archive_len {
            if entries.is_empty() {
                return Err(refused("not a tar archive (too short)"));
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
        let magic = &h[257..263];
        let gnu = magic == b"ustar " && &h[263..265] == b" \0";
        if magic != b"ustar\0" && !gnu {
            return Err(refused("not a ustar archive"));
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
            return Err(refused(format!(
                "header {} has a bad checksum",
                entries.len() + 1
            )));
        }
        let raw_name = &h[..NAME_LEN];
        let name_bytes = &raw_name[..raw_name.iter().position(|b| *b == 0).unwrap_or(NAME_LEN)];
        let name = String::from_utf8(name_bytes.to_vec())
            .map_err(|_| refused("a file name that is not UTF-8"))?;
        let flag = h[156];
        if flag != b'0' && flag != 0 {
            return Err(refused(format!(
                "{name:?} is {}; only regular files are accepted",
                type_name(flag)
            )));
        }
        // ustar's prefix field would put the name in a directory.
        if !gnu && h[345..500].iter().any(|b| *b != 0) {
            return Err(refused(format!(
                "{name:?} has a directory prefix; only plain names are accepted"
            )));
        }
        check_plain_name(&name).map_err(refused)?;
        if entries.iter().any(|e| e.name == name) {
            return Err(refused(format!("{name:?} appears twice")));
        }
        if entries.len() >= MAX_FILES {
            return Err(refused(format!("more than {MAX_FILES} files")));
        }
        let size = parse_number(&h[124..136], "size")?;
        let offset = pos + BLOCK as u64;
        let end = offset
            .checked_add(size)
            .filter(|e| *e <= archive_len)
            .ok_or_else(|| refused(format!("{name:?} is cut short")))?;
        entries.push(Entry { name, size, offset });
        pos = end + padding(size) as u64;
    }
    if entries.is_empty() {
        return Err(refused("the archive holds no file"));
    }
    Ok(entries)
}

/// Checks the archive at `archive` whole, then extracts its files into
/// `dest`, a directory this call creates (it must not exist). Returns the
/// files written.
pub fn extract(archive: &Path, dest: &Path) -> Result<Vec<Entry>, ArchiveError> {
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
            return Err(refused(format!("{:?} is cut short", e.name)));
        }
        w.flush()
            .map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(entries)
}
