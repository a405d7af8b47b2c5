//! How fast this host writes image pages into a restored process's memory,
//! measured once, for a source's first downtime prediction.
//!
//! A pre-copy's final dump sends only the last dirty set, but the restore
//! that follows reads every page of the tree from the images into fresh
//! memory. Under emulation that is most of the downtime (a guest restored
//! 256 MiB in 6 s, 4.4 of them this same copy), and no pre-dump measures it.
//! Until the target has learned what its switch-overs cost (`overheads`),
//! the source adds the tree's size at the rate measured here. CRIU's
//! restorer reads each private mapping's pages from the image files, which
//! the page server has just written and the page cache holds, into
//! anonymous memory it has just mapped; [`measure`] does the same with a
//! file of its own in the work directory, so first-touch faults and the
//! copy are both in the figure.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use crate::error::{Error, Result};

/// The size measured: large enough to time on a fast host (milliseconds),
/// small enough for an emulated one (about 0.3 s in the guest).
const SAMPLE: usize = 16 << 20;

/// Fresh private anonymous memory, unmapped on drop.
struct Fresh {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Fresh {
    fn map(len: usize) -> Result<Self> {
        // SAFETY: a new private anonymous mapping at an address the kernel
        // picks; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Io {
                what: format!("mapping {len} bytes for the page-in probe"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, zero
        // filled by the kernel, and only this value refers to it; the
        // borrow of `self` keeps it mapped for the slice's life.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made, which no slice
        // outlives (they borrow `self`).
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The rate, in bytes per second, at which a file in `dir` that the page
/// cache holds is read into memory just mapped. The file is removed before
/// the timing starts.
pub(crate) fn measure(dir: &Path) -> Result<f64> {
    let path = dir.join(".page-in-probe");
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| Error::Io { what, source }
    };
    // Not zeroes, which a file system might keep as holes.
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 + 1).collect();
    // Left by a measure that died between creating and removing it (the
    // service holds the directory's lock, so no other measure runs).
    let _ = std::fs::remove_file(&path);
    let file = {
        let mut f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io("creating"))?;
        let written = (0..SAMPLE / chunk.len()).try_for_each(|_| f.write_all(&chunk));
        std::fs::remove_file(&path).map_err(io("removing"))?;
        written.map_err(io("writing"))?;
        f
    };
    let mut fresh = Fresh::map(SAMPLE)?;
    let t0 = Instant::now();
    file.read_exact_at(fresh.bytes(), 0)
        .map_err(io("reading"))?;
    let took = t0.elapsed().as_secs_f64().max(1e-6);
    Ok(SAMPLE as f64 / took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_rate_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rate = measure(dir.path()).unwrap();
        // Any host copies at least 10 MiB/s (the guest under emulation:
        // 57), and none a terabyte a second.
        assert!(rate > 10.0 * f64::from(1 << 20) && rate < 1e12, "{rate}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_left_by_a_dead_measure_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".page-in-probe"), b"stale").unwrap();
        assert!(measure(dir.path()).unwrap() > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let e = measure(Path::new("/nonexistent/phaul")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/phaul"), "{e}");
    }
}
