//! Readers for CRIU's image files: the statistics CRIU writes after a dump or
//! restore (`stats-dump`, `stats-restore`), `inventory.img`, and the other
//! images that are plain streams of protobuf entries.
//!
//! phaul reads these after CRIU has finished, without a CRIU process: the
//! statistics measure an iteration (how long the task was frozen, how many
//! pages were written) and the inventory says what a dump is. The files can
//! come from another machine or from a dump that failed half-way, so every
//! length in them is treated as hostile: the [`Limits`] are checked before
//! anything is allocated, a short file is [`ImageError::Truncated`], and no
//! input makes the reader panic.
//!
//! # Layout of an image
//!
//! An image starts with a head of magic numbers (see [`magic`]):
//! - regular images: [`magic::IMG_COMMON`], then the type's magic;
//! - service images, CRIU's own files such as the statistics and the irmap
//!   cache: [`magic::IMG_SERVICE`], then the type's magic;
//! - `inventory.img`: only [`magic::INVENTORY`].
//!
//! Entries follow, each a `u32` byte count and that many bytes of protobuf.
//! Integers are in the byte order of the host that wrote the image; a
//! migration's two ends share an architecture, so this reader uses its own.
//! Some image types carry extra data between or after their entries; this
//! module reads only the types listed in [`ImageType`], none of which do.
//!
//! A missing file is [`Error::ImageIo`] whose source has kind
//! [`std::io::ErrorKind::NotFound`], so a caller can tell an absent image
//! (CRIU writes no `stats-dump` after a failed dump) from a corrupt one
//! ([`Error::Image`]).

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};
use crate::proto::{
    DumpStatsEntry, InventoryEntry, PagemapEntry, PagemapHead, RestoreStatsEntry, StatsEntry,
};

/// File name of the statistics CRIU writes after a dump or pre-dump.
pub const STATS_DUMP_FILE: &str = "stats-dump";
/// File name of the statistics CRIU writes after a restore.
pub const STATS_RESTORE_FILE: &str = "stats-restore";
/// File name of the inventory, the image that describes a whole dump.
pub const INVENTORY_FILE: &str = "inventory.img";

pub mod magic {
    //! The magic numbers that open CRIU images.
    //!
    //! Only the magics this crate reads or has to recognise are listed, and
    //! only values known for certain: a wrong one would make a valid image
    //! look corrupt.

    /// First magic of a regular image; the type's magic follows.
    pub const IMG_COMMON: u32 = 0x5456_4319;
    /// First magic of a service image (statistics, irmap cache); the type's
    /// magic follows.
    pub const IMG_SERVICE: u32 = 0x5510_5940;
    /// `inventory.img`, the only image with no first magic.
    pub const INVENTORY: u32 = 0x5831_3116;
    /// `pagemap-<id>.img`, where the dumped memory lies in `pages-<n>.img`.
    pub const PAGEMAP: u32 = 0x5608_4025;
    /// `stats-dump` and `stats-restore`.
    pub const STATS: u32 = 0x5709_3306;
    /// `irmap-cache`, CRIU's cache of inotify paths.
    pub const IRMAP_CACHE: u32 = 0x5700_4059;

    /// The name of a known magic, for messages; `None` for any other value.
    #[must_use]
    pub const fn name(magic: u32) -> Option<&'static str> {
        Some(match magic {
            IMG_COMMON => "IMG_COMMON",
            IMG_SERVICE => "IMG_SERVICE",
            INVENTORY => "INVENTORY",
            PAGEMAP => "PAGEMAP",
            STATS => "STATS",
            IRMAP_CACHE => "IRMAP_CACHE",
            _ => return None,
        })
    }
}

/// The image types this module can read: those whose body is only entries.
///
/// The set is closed on purpose: reading an image with data between its
/// entries as if it had none would misread that data as entry sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageType {
    /// `inventory.img`: one [`InventoryEntry`].
    Inventory,
    /// `stats-dump` or `stats-restore`: one [`StatsEntry`].
    Stats,
    /// `pagemap-<id>.img`: a [`PagemapHead`](crate::proto::PagemapHead),
    /// then one [`PagemapEntry`](crate::proto::PagemapEntry) per run of
    /// pages ([`read_pagemaps`] sums them).
    Pagemap,
    /// `irmap-cache`: one entry per cached inotify path, read with
    /// [`ImageFile::next_raw`].
    IrmapCache,
}

impl ImageType {
    /// The magic that names this type.
    #[must_use]
    pub const fn type_magic(self) -> u32 {
        match self {
            Self::Inventory => magic::INVENTORY,
            Self::Stats => magic::STATS,
            Self::Pagemap => magic::PAGEMAP,
            Self::IrmapCache => magic::IRMAP_CACHE,
        }
    }

    /// The magic before the type's magic, `None` for the inventory.
    #[must_use]
    pub const fn head_magic(self) -> Option<u32> {
        match self {
            Self::Inventory => None,
            Self::Stats | Self::IrmapCache => Some(magic::IMG_SERVICE),
            Self::Pagemap => Some(magic::IMG_COMMON),
        }
    }
}

/// Size limits applied while reading an image, before allocating.
///
/// The defaults are far above what CRIU writes for the images this module
/// reads (a statistics or inventory entry is well under a kilobyte) and
/// low enough that a corrupt or hostile file cannot exhaust memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Largest file accepted, in bytes.
    pub max_file: u64,
    /// Largest single entry accepted, in bytes (not counting its size field).
    pub max_entry: u32,
}

impl Limits {
    /// 64 MiB per file, 16 MiB per entry.
    pub const DEFAULT: Self = Self {
        max_file: 64 << 20,
        max_entry: 16 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What is wrong with an image file; carried by [`Error::Image`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The head is not the one of the expected image type.
    #[error("bad magic {}, expected {}", Magic(*found), Magic(*expected))]
    BadMagic {
        /// The magic the image type has at that place.
        expected: u32,
        /// The value in the file.
        found: u32,
    },

    /// The file ends inside its head, a size field or an entry.
    #[error("truncated: {needed} bytes needed at offset {offset}")]
    Truncated {
        /// Where the incomplete part starts.
        offset: u64,
        /// The length of the incomplete part.
        needed: u64,
    },

    /// An entry's size field is above [`Limits::max_entry`].
    #[error("entry of {size} bytes exceeds the {max}-byte limit")]
    EntryTooLarge {
        /// The size the file gives.
        size: u32,
        /// The limit.
        max: u32,
    },

    /// The file is larger than [`Limits::max_file`].
    #[error("file of {size} bytes exceeds the {max}-byte limit")]
    FileTooLarge {
        /// The file's length; for a file whose length is not known up front
        /// (a pipe), the length its entries reached.
        size: u64,
        /// The limit.
        max: u64,
    },

    /// An entry is not a valid protobuf message of the expected type.
    // Not a `#[source]`: `Error::Image` does not expose its kind as a source,
    // so the decode error would drop out of the chain unless shown here.
    #[error("malformed entry: {0}")]
    Decode(prost::DecodeError),

    /// The image has a head but no entry where one was expected.
    #[error("no entry")]
    Empty,

    /// More follows the single entry an image type has.
    #[error("unexpected data after the entry, at offset {offset}")]
    TrailingData {
        /// Where the unexpected data starts.
        offset: u64,
    },

    /// A statistics image lacks the section asked for (`"dump"` or
    /// `"restore"`).
    #[error("no {0} section")]
    MissingSection(&'static str),
}

/// Shows a magic as hex, with its name when it is a known one.
struct Magic(u32);

impl fmt::Display for Magic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)?;
        match magic::name(self.0) {
            Some(name) => write!(f, " ({name})"),
            None => Ok(()),
        }
    }
}

/// A failure before the file's path is attached.
#[derive(Debug)]
enum Fault {
    Io(io::Error),
    Image(ImageError),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ImageError> for Fault {
    fn from(e: ImageError) -> Self {
        Self::Image(e)
    }
}

impl Fault {
    fn at(self, path: &Path) -> Error {
        let path = path.to_path_buf();
        match self {
            Self::Io(source) => Error::ImageIo { path, source },
            Self::Image(kind) => Error::Image { path, kind },
        }
    }
}

/// The format itself, over any reader, so the tests can feed it bytes.
#[derive(Debug)]
struct Stream<R> {
    reader: R,
    limits: Limits,
    /// The input's length when known (a regular file), to reject an entry
    /// that runs past the end without allocating for it.
    len: Option<u64>,
    /// Bytes consumed so far.
    offset: u64,
    /// Set at the end and after any error, so iteration stops instead of
    /// reading the rest of a corrupt file as entries.
    done: bool,
}

impl<R: Read> Stream<R> {
    /// Checks the length against the limit and reads the head.
    fn new(reader: R, ty: ImageType, limits: Limits, len: Option<u64>) -> Result<Self, Fault> {
        if let Some(size) = len.filter(|&size| size > limits.max_file) {
            return Err(ImageError::FileTooLarge {
                size,
                max: limits.max_file,
            }
            .into());
        }
        let mut stream = Self {
            reader,
            limits,
            len,
            offset: 0,
            done: false,
        };
        if let Some(head) = ty.head_magic() {
            stream.expect_magic(head)?;
        }
        stream.expect_magic(ty.type_magic())?;
        Ok(stream)
    }

    fn expect_magic(&mut self, expected: u32) -> Result<(), Fault> {
        let mut word = [0; 4];
        if read_full(&mut self.reader, &mut word)? < word.len() {
            return Err(ImageError::Truncated {
                offset: self.offset,
                needed: 4,
            }
            .into());
        }
        self.offset += 4;
        let found = u32::from_ne_bytes(word);
        if found != expected {
            return Err(ImageError::BadMagic { expected, found }.into());
        }
        Ok(())
    }

    fn next_raw(&mut self) -> Result<Option<Vec<u8>>, Fault> {
        if self.done {
            return Ok(None);
        }
        let next = self.read_entry();
        if !matches!(next, Ok(Some(_))) {
            self.done = true;
        }
        next
    }

    fn read_entry(&mut self) -> Result<Option<Vec<u8>>, Fault> {
        let start = self.offset;
        let mut word = [0; 4];
        match read_full(&mut self.reader, &mut word)? {
            0 => return Ok(None),
            4 => {}
            _ => {
                return Err(ImageError::Truncated {
                    offset: start,
                    needed: 4,
                }
                .into());
            }
        }
        let size = u32::from_ne_bytes(word);
        if size > self.limits.max_entry {
            return Err(ImageError::EntryTooLarge {
                size,
                max: self.limits.max_entry,
            }
            .into());
        }
        let body = start.saturating_add(4);
        let needed = u64::from(size);
        let end = body.saturating_add(needed);
        if self.len.is_some_and(|len| end > len) {
            return Err(ImageError::Truncated {
                offset: body,
                needed,
            }
            .into());
        }
        // Also for inputs of unknown length: an endless stream of empty
        // entries must stop somewhere.
        if end > self.limits.max_file {
            return Err(ImageError::FileTooLarge {
                size: end,
                max: self.limits.max_file,
            }
            .into());
        }
        // With the length known the entry is in the file and can be
        // allocated at once; otherwise the buffer grows only as data comes.
        let capacity = if self.len.is_some() {
            size
        } else {
            size.min(64 << 10)
        };
        let mut buf = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        (&mut self.reader).take(needed).read_to_end(&mut buf)?;
        if (buf.len() as u64) < needed {
            return Err(ImageError::Truncated {
                offset: body,
                needed,
            }
            .into());
        }
        self.offset = end;
        Ok(Some(buf))
    }

    fn next_entry<M: Message + Default>(&mut self) -> Result<Option<M>, Fault> {
        let Some(buf) = self.next_raw()? else {
            return Ok(None);
        };
        match M::decode(buf.as_slice()) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                self.done = true;
                Err(ImageError::Decode(e).into())
            }
        }
    }
}

/// Reads into `buf` until it is full or the input ends; returns the count.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// An open image file whose head has been checked, read entry by entry.
///
/// After the end or any error, no further entries are returned.
#[derive(Debug)]
pub struct ImageFile {
    path: PathBuf,
    ty: ImageType,
    stream: Stream<BufReader<File>>,
}

impl ImageFile {
    /// Opens `path` as an image of type `ty` with the default [`Limits`].
    ///
    /// # Errors
    /// [`Error::ImageIo`] when the file cannot be opened or read (kind
    /// `NotFound` when it does not exist), [`Error::Image`] when it is too
    /// large or its head is not that of `ty`.
    pub fn open(path: impl AsRef<Path>, ty: ImageType) -> Result<Self> {
        Self::open_with_limits(path, ty, Limits::default())
    }

    /// Opens `path` as an image of type `ty` with the given limits.
    ///
    /// # Errors
    /// As [`ImageFile::open`].
    pub fn open_with_limits(path: impl AsRef<Path>, ty: ImageType, limits: Limits) -> Result<Self> {
        let path = path.as_ref();
        let opened = File::open(path).and_then(|file| {
            let meta = file.metadata()?;
            Ok((file, meta.is_file().then_some(meta.len())))
        });
        let (file, len) = opened.map_err(|e| Fault::Io(e).at(path))?;
        let stream = Stream::new(BufReader::new(file), ty, limits, len).map_err(|f| f.at(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            ty,
            stream,
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The type the file was opened as.
    #[must_use]
    pub fn image_type(&self) -> ImageType {
        self.ty
    }

    /// How many bytes have been read: the head and the entries returned.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.stream.offset
    }

    /// The next entry's undecoded bytes, `None` at the end of the file.
    ///
    /// # Errors
    /// [`Error::ImageIo`] when reading fails, [`Error::Image`] when the
    /// entry is truncated or above a limit.
    pub fn next_raw(&mut self) -> Result<Option<Vec<u8>>> {
        self.stream.next_raw().map_err(|f| f.at(&self.path))
    }

    /// The next entry decoded as `M`, `None` at the end of the file.
    ///
    /// # Errors
    /// As [`ImageFile::next_raw`], and [`ImageError::Decode`] when the
    /// entry is not an `M`.
    pub fn next_entry<M: Message + Default>(&mut self) -> Result<Option<M>> {
        self.stream.next_entry().map_err(|f| f.at(&self.path))
    }

    /// The remaining entries decoded as `M`; iteration ends after an error.
    pub fn entries<M: Message + Default>(&mut self) -> Entries<'_, M> {
        Entries {
            file: self,
            _entry: PhantomData,
        }
    }

    fn error(&self, kind: ImageError) -> Error {
        Error::Image {
            path: self.path.clone(),
            kind,
        }
    }
}

/// Iterator over an image's entries, from [`ImageFile::entries`].
#[derive(Debug)]
pub struct Entries<'a, M> {
    file: &'a mut ImageFile,
    _entry: PhantomData<fn() -> M>,
}

impl<M: Message + Default> Iterator for Entries<'_, M> {
    type Item = Result<M>;

    fn next(&mut self) -> Option<Self::Item> {
        self.file.next_entry().transpose()
    }
}

impl<M: Message + Default> FusedIterator for Entries<'_, M> {}

/// Reads every entry of an image as `M`.
///
/// The memory used is bounded by the limits, but a small entry can decode
/// into a larger struct; use [`ImageFile::entries`] to process entries one
/// at a time instead of collecting them.
///
/// # Errors
/// As [`ImageFile::open`] and [`ImageFile::next_entry`].
pub fn decode_entries<M: Message + Default>(
    path: impl AsRef<Path>,
    ty: ImageType,
    limits: Limits,
) -> Result<Vec<M>> {
    ImageFile::open_with_limits(path, ty, limits)?
        .entries()
        .collect()
}

/// Reads an image that holds exactly one entry, as `M`.
///
/// # Errors
/// As [`ImageFile::open`] and [`ImageFile::next_entry`];
/// [`ImageError::Empty`] when there is no entry and
/// [`ImageError::TrailingData`] when more than one.
pub fn read_single_entry<M: Message + Default>(
    path: impl AsRef<Path>,
    ty: ImageType,
    limits: Limits,
) -> Result<M> {
    let mut file = ImageFile::open_with_limits(path, ty, limits)?;
    let Some(entry) = file.next_entry()? else {
        return Err(file.error(ImageError::Empty));
    };
    let offset = file.offset();
    if file.next_raw()?.is_some() {
        return Err(file.error(ImageError::TrailingData { offset }));
    }
    Ok(entry)
}

/// Reads a statistics image (`stats-dump` or `stats-restore`) at `path`.
///
/// # Errors
/// As [`read_single_entry`].
pub fn read_stats_file(path: impl AsRef<Path>) -> Result<StatsEntry> {
    read_single_entry(path, ImageType::Stats, Limits::default())
}

/// Reads the statistics of the last dump or pre-dump into `dir`
/// (`dir/stats-dump`).
///
/// # Errors
/// As [`read_stats_file`]; [`ImageError::MissingSection`] when the file has
/// no dump section. A missing file is [`Error::ImageIo`] with kind
/// `NotFound`, which is what a failed dump leaves.
pub fn read_dump_stats(dir: impl AsRef<Path>) -> Result<DumpStatsEntry> {
    let path = dir.as_ref().join(STATS_DUMP_FILE);
    read_stats_file(&path)?.dump.ok_or(Error::Image {
        path,
        kind: ImageError::MissingSection("dump"),
    })
}

/// Reads the statistics of the last restore from `dir`
/// (`dir/stats-restore`).
///
/// # Errors
/// As [`read_stats_file`]; [`ImageError::MissingSection`] when the file has
/// no restore section. A missing file is [`Error::ImageIo`] with kind
/// `NotFound`.
pub fn read_restore_stats(dir: impl AsRef<Path>) -> Result<RestoreStatsEntry> {
    let path = dir.as_ref().join(STATS_RESTORE_FILE);
    read_stats_file(&path)?.restore.ok_or(Error::Image {
        path,
        kind: ImageError::MissingSection("restore"),
    })
}

/// Reads the inventory of the dump in `dir` (`dir/inventory.img`).
///
/// # Errors
/// As [`read_single_entry`]. A missing file is [`Error::ImageIo`] with kind
/// `NotFound`.
pub fn read_inventory(dir: impl AsRef<Path>) -> Result<InventoryEntry> {
    read_single_entry(
        dir.as_ref().join(INVENTORY_FILE),
        ImageType::Inventory,
        Limits::default(),
    )
}

/// A pagemap entry's flag: the pages are in the parent (pre-dump) images.
pub const PE_PARENT: u32 = 1 << 0;
/// A pagemap entry's flag: the pages may be restored lazily.
pub const PE_LAZY: u32 = 1 << 1;
/// A pagemap entry's flag: the pages are in this dump's pages image.
pub const PE_PRESENT: u32 = 1 << 2;

/// What the pagemaps of a dump say about its tasks' memory, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagemapTotals {
    /// Pagemap images read (one per task with memory).
    pub images: u32,
    /// Every page the pagemaps name.
    pub pages: u64,
    /// Pages in this dump's pages images.
    pub present: u64,
    /// Pages left for lazy restore (served by the page server later).
    pub lazy: u64,
    /// Pages found in the parent (pre-dump) images.
    pub in_parent: u64,
}

/// Sums the private-memory pagemaps (`pagemap-<id>.img`) of the dump in
/// `dir`. CRIU's own `stats-dump` counts nothing after a lazy dump; this is
/// how many pages it left for the page server.
///
/// # Errors
/// [`Error::ImageIo`] when `dir` cannot be listed; any error of a pagemap
/// image, as [`ImageFile::next_entry`].
pub fn read_pagemaps(dir: impl AsRef<Path>) -> Result<PagemapTotals> {
    let dir = dir.as_ref();
    let listing = std::fs::read_dir(dir).map_err(|source| Error::ImageIo {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut t = PagemapTotals::default();
    for e in listing {
        let e = e.map_err(|source| Error::ImageIo {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pagemap-"))
            .and_then(|n| n.strip_suffix(".img"))
        else {
            continue;
        };
        // `pagemap-shmem-<ino>.img` maps shared memory, not a task's.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let mut f = ImageFile::open(e.path(), ImageType::Pagemap)?;
        if f.next_entry::<PagemapHead>()?.is_none() {
            continue;
        }
        t.images += 1;
        while let Some(pe) = f.next_entry::<PagemapEntry>()? {
            let n = pe.nr_pages_64.unwrap_or(u64::from(pe.nr_pages));
            let flags = pe.flags.unwrap_or(0);
            t.pages += n;
            if flags & PE_PRESENT != 0 {
                t.present += n;
            }
            if flags & PE_LAZY != 0 {
                t.lazy += n;
            }
            if flags & PE_PARENT != 0 || pe.in_parent == Some(true) {
                t.in_parent += n;
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(ty: ImageType) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(m) = ty.head_magic() {
            out.extend_from_slice(&m.to_ne_bytes());
        }
        out.extend_from_slice(&ty.type_magic().to_ne_bytes());
        out
    }

    fn push_entry(out: &mut Vec<u8>, payload: &[u8]) {
        let size = u32::try_from(payload.len()).unwrap();
        out.extend_from_slice(&size.to_ne_bytes());
        out.extend_from_slice(payload);
    }

    fn image(ty: ImageType, entries: &[&[u8]]) -> Vec<u8> {
        let mut out = head(ty);
        for e in entries {
            push_entry(&mut out, e);
        }
        out
    }

    fn dump_stats() -> DumpStatsEntry {
        DumpStatsEntry {
            freezing_time: 1_234,
            frozen_time: 56_789,
            memdump_time: 4_000,
            memwrite_time: 3_000,
            pages_scanned: 10_000,
            pages_skipped_parent: 9_000,
            pages_written: 1_000,
            irmap_resolve: None,
            pages_lazy: 0,
            page_pipes: Some(2),
            page_pipe_bufs: Some(3),
            shpages_scanned: None,
            shpages_skipped_parent: None,
            shpages_written: None,
        }
    }

    fn restore_stats() -> RestoreStatsEntry {
        RestoreStatsEntry {
            pages_compared: 7,
            pages_skipped_cow: 8,
            forking_time: 900,
            restore_time: 12_345,
            pages_restored: Some(1_000),
        }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Writes `bytes` as a stats file and reads it with `limits`.
    fn read_stats_bytes(bytes: &[u8], limits: Limits) -> Result<StatsEntry> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), STATS_DUMP_FILE, bytes);
        read_single_entry(path, ImageType::Stats, limits)
    }

    fn image_kind(r: Result<impl fmt::Debug>) -> ImageError {
        match r {
            Err(Error::Image { kind, .. }) => kind,
            other => panic!("expected an image error, got {other:?}"),
        }
    }

    #[test]
    fn reads_back_dump_stats_written_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let entry = StatsEntry {
            dump: Some(dump_stats()),
            restore: None,
        };
        write(
            dir.path(),
            STATS_DUMP_FILE,
            &image(ImageType::Stats, &[&entry.encode_to_vec()]),
        );
        assert_eq!(read_dump_stats(dir.path()).unwrap(), dump_stats());
    }

    #[test]
    fn reads_back_restore_stats_written_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let entry = StatsEntry {
            dump: None,
            restore: Some(restore_stats()),
        };
        write(
            dir.path(),
            STATS_RESTORE_FILE,
            &image(ImageType::Stats, &[&entry.encode_to_vec()]),
        );
        assert_eq!(read_restore_stats(dir.path()).unwrap(), restore_stats());
    }

    #[test]
    fn reads_back_inventory_which_has_only_its_type_magic() {
        let dir = tempfile::tempdir().unwrap();
        let inv = InventoryEntry {
            img_version: 2,
            fdinfo_per_id: Some(true),
            ns_per_id: Some(true),
            root_cg_set: Some(1),
            lsmtype: Some(crate::proto::Lsmtype::Apparmor as i32),
            dump_uptime: Some(123_456_789),
            pre_dump_mode: Some(1),
            tcp_close: None,
            network_lock_method: Some(1),
            dump_criu_run_id: Some("run-42".to_owned()),
        };
        let bytes = image(ImageType::Inventory, &[&inv.encode_to_vec()]);
        assert_eq!(&bytes[..4], &magic::INVENTORY.to_ne_bytes());
        write(dir.path(), INVENTORY_FILE, &bytes);
        assert_eq!(read_inventory(dir.path()).unwrap(), inv);
    }

    #[test]
    fn iterates_raw_entries_in_order_and_stops_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "pagemap-1.img",
            &image(ImageType::Pagemap, &[b"one", b"", b"three"]),
        );
        let mut file = ImageFile::open(&path, ImageType::Pagemap).unwrap();
        assert_eq!(file.offset(), 8);
        assert_eq!(file.next_raw().unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(file.next_raw().unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(file.next_raw().unwrap().as_deref(), Some(&b"three"[..]));
        assert_eq!(file.next_raw().unwrap(), None);
        assert_eq!(file.next_raw().unwrap(), None);
        assert_eq!(file.offset(), 8 + 4 + 3 + 4 + 4 + 5);
    }

    #[test]
    fn decodes_every_entry_of_a_multi_entry_image() {
        let dir = tempfile::tempdir().unwrap();
        let a = StatsEntry {
            dump: Some(dump_stats()),
            restore: None,
        };
        let b = StatsEntry {
            dump: None,
            restore: Some(restore_stats()),
        };
        let path = write(
            dir.path(),
            "irmap-cache",
            &image(
                ImageType::IrmapCache,
                &[&a.encode_to_vec(), &b.encode_to_vec()],
            ),
        );
        let all: Vec<StatsEntry> =
            decode_entries(&path, ImageType::IrmapCache, Limits::default()).unwrap();
        assert_eq!(all, vec![a, b]);
    }

    #[test]
    fn missing_stats_file_is_io_not_found() {
        let dir = tempfile::tempdir().unwrap();
        for r in [
            read_dump_stats(dir.path()).map(drop),
            read_restore_stats(dir.path()).map(drop),
            read_inventory(dir.path()).map(drop),
        ] {
            match r {
                Err(Error::ImageIo { source, .. }) => {
                    assert_eq!(source.kind(), io::ErrorKind::NotFound);
                }
                other => panic!("expected ImageIo NotFound, got {other:?}"),
            }
        }
    }

    #[test]
    fn stats_without_the_asked_section_is_missing_section() {
        let dir = tempfile::tempdir().unwrap();
        let only_restore = StatsEntry {
            dump: None,
            restore: Some(restore_stats()),
        };
        write(
            dir.path(),
            STATS_DUMP_FILE,
            &image(ImageType::Stats, &[&only_restore.encode_to_vec()]),
        );
        let kind = image_kind(read_dump_stats(dir.path()));
        assert!(
            matches!(kind, ImageError::MissingSection("dump")),
            "{kind:?}"
        );
    }

    #[test]
    fn rejects_wrong_type_magic() {
        let mut bytes = magic::IMG_SERVICE.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&magic::IRMAP_CACHE.to_ne_bytes());
        push_entry(&mut bytes, &[]);
        let kind = image_kind(read_stats_bytes(&bytes, Limits::default()));
        assert!(
            matches!(
                kind,
                ImageError::BadMagic {
                    expected: magic::STATS,
                    found: magic::IRMAP_CACHE
                }
            ),
            "{kind:?}"
        );
    }

    #[test]
    fn rejects_inventory_where_stats_expected() {
        let inv = InventoryEntry {
            img_version: 2,
            ..Default::default()
        };
        let bytes = image(ImageType::Inventory, &[&inv.encode_to_vec()]);
        let kind = image_kind(read_stats_bytes(&bytes, Limits::default()));
        assert!(
            matches!(
                kind,
                ImageError::BadMagic {
                    expected: magic::IMG_SERVICE,
                    found: magic::INVENTORY
                }
            ),
            "{kind:?}"
        );
    }

    #[test]
    fn rejects_regular_head_on_a_service_image() {
        let mut bytes = magic::IMG_COMMON.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&magic::STATS.to_ne_bytes());
        let kind = image_kind(read_stats_bytes(&bytes, Limits::default()));
        assert!(matches!(kind, ImageError::BadMagic { .. }), "{kind:?}");
    }

    #[test]
    fn bad_magic_message_shows_hex_and_names() {
        let e = ImageError::BadMagic {
            expected: magic::STATS,
            found: 0xdead_beef,
        };
        assert_eq!(
            e.to_string(),
            "bad magic 0xdeadbeef, expected 0x57093306 (STATS)"
        );
    }

    #[test]
    fn magic_names_cover_the_known_magics_only() {
        assert_eq!(magic::name(magic::INVENTORY), Some("INVENTORY"));
        assert_eq!(magic::name(magic::PAGEMAP), Some("PAGEMAP"));
        assert_eq!(magic::name(magic::STATS), Some("STATS"));
        assert_eq!(magic::name(magic::IRMAP_CACHE), Some("IRMAP_CACHE"));
        assert_eq!(magic::name(magic::IMG_COMMON), Some("IMG_COMMON"));
        assert_eq!(magic::name(magic::IMG_SERVICE), Some("IMG_SERVICE"));
        assert_eq!(magic::name(0), None);
    }

    #[test]
    fn empty_file_is_a_truncated_head() {
        let kind = image_kind(read_stats_bytes(&[], Limits::default()));
        assert!(
            matches!(
                kind,
                ImageError::Truncated {
                    offset: 0,
                    needed: 4
                }
            ),
            "{kind:?}"
        );
    }

    #[test]
    fn rejects_truncated_head() {
        let full = head(ImageType::Stats);
        for cut in [3, 4, 7] {
            let kind = image_kind(read_stats_bytes(&full[..cut], Limits::default()));
            let at = if cut < 4 { 0 } else { 4 };
            assert!(
                matches!(kind, ImageError::Truncated { offset, needed: 4 } if offset == at),
                "cut at {cut}: {kind:?}"
            );
        }
    }

    #[test]
    fn rejects_truncated_size_field() {
        let mut bytes = head(ImageType::Stats);
        bytes.extend_from_slice(&[5, 0]);
        let kind = image_kind(read_stats_bytes(&bytes, Limits::default()));
        assert!(
            matches!(
                kind,
                ImageError::Truncated {
                    offset: 8,
                    needed: 4
                }
            ),
            "{kind:?}"
        );
    }

    #[test]
    fn rejects_truncated_payload() {
        let entry = StatsEntry {
            dump: Some(dump_stats()),
            restore: None,
        }
        .encode_to_vec();
        let mut bytes = image(ImageType::Stats, &[&entry]);
        bytes.pop();
        let kind = image_kind(read_stats_bytes(&bytes, Limits::default()));
        assert!(
            matches!(kind, ImageError::Truncated { offset: 12, needed } if needed == entry.len() as u64),
            "{kind:?}"
        );
    }

    #[test]
    fn rejects_hostile_size_before_allocating() {
        let mut bytes = head(ImageType::Stats);
        bytes.extend_from_slice(&u32::MAX.to_ne_bytes());
        bytes.extend_from_slice(b"tiny");

        let kind = image_kind(read_stats_bytes(&bytes, Limits::default()));
        assert!(
            matches!(kind, ImageError::EntryTooLarge { size: u32::MAX, max } if max == Limits::DEFAULT.max_entry),
            "{kind:?}"
        );

        // With no limits the file's length still stops it before allocating.
        let open = Limits {
            max_file: u64::MAX,
            max_entry: u32::MAX,
        };
        let kind = image_kind(read_stats_bytes(&bytes, open));
        assert!(
            matches!(kind, ImageError::Truncated { offset: 12, needed } if needed == u64::from(u32::MAX)),
            "{kind:?}"
        );

        // Of unknown length (a pipe), it reads only what is there.
        let mut s = Stream::new(&bytes[..], ImageType::Stats, open, None).unwrap();
        match s.next_raw() {
            Err(Fault::Image(ImageError::Truncated { offset: 12, .. })) => {}
            other => panic!("expected truncated, got {other:?}"),
        }
    }

    #[test]
    fn rejects_file_larger_than_the_limit() {
        let bytes = image(ImageType::Stats, &[&[0; 100]]);
        let limits = Limits {
            max_file: 64,
            max_entry: 1024,
        };
        let kind = image_kind(read_stats_bytes(&bytes, limits));
        assert!(
            matches!(kind, ImageError::FileTooLarge { size, max: 64 } if size == bytes.len() as u64),
            "{kind:?}"
        );
    }

    #[test]
    fn endless_stream_of_empty_entries_stops_at_the_file_limit() {
        let limits = Limits {
            max_file: 1 << 10,
            max_entry: 16,
        };
        let input = head(ImageType::Stats)
            .into_iter()
            .chain(std::iter::repeat(0));
        let reader = IterReader(input);
        let mut s = Stream::new(reader, ImageType::Stats, limits, None).unwrap();
        let mut n = 0;
        let err = loop {
            match s.next_raw() {
                Ok(Some(_)) => n += 1,
                Ok(None) => panic!("an endless stream ended"),
                Err(e) => break e,
            }
        };
        assert_eq!(n, (1024 - 8) / 4);
        assert!(
            matches!(
                err,
                Fault::Image(ImageError::FileTooLarge { max: 1024, .. })
            ),
            "{err:?}"
        );
        assert!(s.next_raw().unwrap().is_none(), "stops after an error");
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        // Every byte has its continuation bit set: an over-long varint.
        let garbage = [
            0xde, 0xad, 0xbe, 0xef, 0xfe, 0xed, 0xfa, 0xce, 0xca, 0xfe, 0xba,
        ];
        let bytes = image(ImageType::Stats, &[&garbage]);
        let kind = image_kind(read_stats_bytes(&bytes, Limits::default()));
        assert!(matches!(kind, ImageError::Decode(_)), "{kind:?}");
        assert!(kind.to_string().starts_with("malformed entry: "), "{kind}");
    }

    #[test]
    fn head_without_entries_is_empty() {
        let kind = image_kind(read_stats_bytes(&head(ImageType::Stats), Limits::default()));
        assert!(matches!(kind, ImageError::Empty), "{kind:?}");
    }

    #[test]
    fn second_entry_in_a_single_entry_image_is_trailing_data() {
        let entry = StatsEntry::default().encode_to_vec();
        let bytes = image(ImageType::Stats, &[&entry, &entry]);
        let kind = image_kind(read_stats_bytes(&bytes, Limits::default()));
        let first_end = 8 + 4 + entry.len() as u64;
        assert!(
            matches!(kind, ImageError::TrailingData { offset } if offset == first_end),
            "{kind:?}"
        );
    }

    #[test]
    fn error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), STATS_DUMP_FILE, b"");
        let e = read_stats_file(&path).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(STATS_DUMP_FILE), "{msg}");
        assert!(msg.contains("truncated"), "{msg}");
    }

    /// A reader over an iterator of bytes, for inputs with no end.
    struct IterReader<I>(I);

    impl<I: Iterator<Item = u8>> Read for IterReader<I> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut n = 0;
            for (slot, b) in buf.iter_mut().zip(&mut self.0) {
                *slot = b;
                n += 1;
            }
            Ok(n)
        }
    }

    /// Knuth's MMIX linear congruential generator: enough variety for
    /// feeding the parser, no extra crate.
    struct Lcg(u64);

    impl Lcg {
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next_u64() as u8).collect()
        }
    }

    /// Parses `bytes` fully as every type and message; only the absence of
    /// a panic (and of a runaway) is checked.
    fn parse_everything(bytes: &[u8], limits: Limits) {
        let types = [
            ImageType::Inventory,
            ImageType::Stats,
            ImageType::Pagemap,
            ImageType::IrmapCache,
        ];
        for ty in types {
            for len in [Some(bytes.len() as u64), None] {
                let Ok(mut s) = Stream::new(bytes, ty, limits, len) else {
                    continue;
                };
                let mut n = 0;
                while let Ok(Some(_)) = s.next_entry::<StatsEntry>() {
                    n += 1;
                    assert!(n <= bytes.len(), "more entries than bytes");
                }
                if let Ok(mut s) = Stream::new(bytes, ty, limits, len) {
                    while let Ok(Some(_)) = s.next_entry::<InventoryEntry>() {}
                }
            }
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = Lcg(0x5eed);
        let valid = image(
            ImageType::Stats,
            &[&StatsEntry {
                dump: Some(dump_stats()),
                restore: Some(restore_stats()),
            }
            .encode_to_vec()],
        );
        let small = Limits {
            max_file: 256,
            max_entry: 64,
        };
        for round in 0..4_000 {
            let limits = if round % 2 == 0 {
                Limits::DEFAULT
            } else {
                small
            };
            let len = rng.below(300) as usize;
            // Pure noise rarely passes the magic, so most rounds start with
            // a valid head and many are mutations of a valid image.
            let bytes = match round % 4 {
                0 => rng.bytes(len),
                1 => {
                    let ty = [ImageType::Stats, ImageType::Inventory, ImageType::Pagemap]
                        [rng.below(3) as usize];
                    let mut b = head(ty);
                    b.extend(rng.bytes(len));
                    b
                }
                _ => {
                    let mut b = valid.clone();
                    for _ in 0..=rng.below(4) {
                        let i = rng.below(b.len() as u64) as usize;
                        b[i] = rng.next_u64() as u8;
                    }
                    b.truncate(rng.below(b.len() as u64 + 1) as usize);
                    b
                }
            };
            parse_everything(&bytes, limits);
        }

        // A few through real files, as callers use it.
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..50 {
            let mut b = valid.clone();
            let i = rng.below(b.len() as u64) as usize;
            b[i] = rng.next_u64() as u8;
            let path = write(dir.path(), STATS_DUMP_FILE, &b);
            let _ = read_stats_file(&path);
            let _ = read_dump_stats(dir.path());
        }
    }

    #[test]
    fn pagemaps_are_summed_by_flag_and_shared_memory_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let e = |vaddr: u64, nr_pages: u32, flags: u32| {
            PagemapEntry {
                vaddr,
                nr_pages,
                in_parent: None,
                flags: Some(flags),
                nr_pages_64: None,
            }
            .encode_to_vec()
        };
        let h = PagemapHead { pages_id: 1 }.encode_to_vec();
        let (a, b, c) = (
            e(0x1000, 10, PE_PRESENT),
            e(0x20000, 300, PE_LAZY),
            e(0x90000, 7, PE_PARENT),
        );
        std::fs::write(
            dir.path().join("pagemap-1.img"),
            image(ImageType::Pagemap, &[&h, &a, &b, &c]),
        )
        .unwrap();
        let old = PagemapEntry {
            vaddr: 0x5000,
            nr_pages: 4,
            in_parent: Some(true),
            flags: None,
            nr_pages_64: None,
        }
        .encode_to_vec();
        std::fs::write(
            dir.path().join("pagemap-12.img"),
            image(ImageType::Pagemap, &[&h, &old]),
        )
        .unwrap();
        // CRIU 4.2 writes the length in field 5 and 0 in the old field.
        let wide = PagemapEntry {
            vaddr: 0x7000,
            nr_pages: 0,
            in_parent: None,
            flags: Some(PE_LAZY),
            nr_pages_64: Some(5000),
        }
        .encode_to_vec();
        std::fs::write(
            dir.path().join("pagemap-13.img"),
            image(ImageType::Pagemap, &[&h, &wide]),
        )
        .unwrap();
        let shmem = e(0, 1000, PE_PRESENT);
        std::fs::write(
            dir.path().join("pagemap-shmem-77.img"),
            image(ImageType::Pagemap, &[&h, &shmem]),
        )
        .unwrap();
        std::fs::write(dir.path().join("pages-1.img"), b"not a pagemap").unwrap();
        assert_eq!(
            read_pagemaps(dir.path()).unwrap(),
            PagemapTotals {
                images: 3,
                pages: 5321,
                present: 10,
                lazy: 5300,
                in_parent: 11,
            }
        );
        // A damaged pagemap is an error, not a wrong count.
        let mut bad = image(ImageType::Pagemap, &[&h, &a]);
        bad.truncate(bad.len() - 3);
        std::fs::write(dir.path().join("pagemap-2.img"), bad).unwrap();
        assert!(read_pagemaps(dir.path()).is_err());
    }
}
