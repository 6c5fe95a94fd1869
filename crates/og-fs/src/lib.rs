//! The low-level pieces every crate shares: reading user files without trusting them, writing
//! outputs whole, and seeded random streams.
//!
//! - [`read_text`]: a text file of at most a given size, refused before reading when the path
//!   is not a regular file (`/dev/zero`, a FIFO) or is larger than the bound, so a wrong path
//!   costs an error message, never unbounded memory.
//! - [`write_atomic`]: a temporary file in the same folder and a rename, so a crash never
//!   leaves a half-written file under the final name.
//! - [`SplitMix64`]: the one seeded generator (LoRA dropout streams, data orders, the nano
//!   world, the fuzzer), the same on every platform and version.

mod rng;

pub use rng::SplitMix64;

use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// The largest configuration-like side file read (`config.json`, a tokenizer config, a shard
/// index, a run configuration).
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;
/// The largest data file read whole (a LLaVA conversation file, a benchmark's JSON, CSV or TSV
/// with embedded images).
pub const MAX_DATA_BYTES: u64 = 8 << 30;

/// Reads a UTF-8 text file of at most `max` bytes.
pub fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a device, a pipe or a folder)",
        ));
    }
    if meta.len() > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "{} bytes, over the {max} a file of this kind may hold",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("grew past {max} bytes while being read"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::new(
            ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_large_files_and_binary_are_refused_before_reading() {
        let e = read_text(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.json");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let e = read_text(&big, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("1099511627776 bytes"), "{e}");
        let bin = dir.path().join("bin");
        std::fs::write(&bin, [b'a', 0xff]).unwrap();
        assert!(
            read_text(&bin, 10)
                .unwrap_err()
                .to_string()
                .contains("byte 1")
        );
        let ok = dir.path().join("ok.txt");
        write_atomic(&ok, b"hello").unwrap();
        assert_eq!(read_text(&ok, 5).unwrap(), "hello");
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }
}
