//! Import of the released OG-LLaVA mask layout: one folder per image holding `mask_<k>.npy`
//! boolean arrays of shape (H, W).
//!
//! The released code lists the folder in lexicographic order, so `mask_10` comes before
//! `mask_2`. We order by the numeric `k` and record it as [`Mask::source_index`].

use std::path::{Path, PathBuf};

use crate::error::{Result, SegmentError};
use crate::maskset::{Mask, MaskSet};
use crate::rle::{Bitmap, Rle};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads one `.npy` file holding a 2-D (or 1×H×W) array of `bool`, `uint8` or `int8`; any
/// non-zero element is foreground.
pub fn read_npy_mask(path: impl AsRef<Path>) -> Result<Bitmap> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| SegmentError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_npy_mask(&bytes).map_err(|message| SegmentError::Npy {
        path: path.to_path_buf(),
        message,
    })
}

fn parse_npy_mask(bytes: &[u8]) -> std::result::Result<Bitmap, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported format version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if !matches!(descr, "|b1" | "|u1" | "|i1" | "<u1" | "<i1" | "b1" | "u1") {
        return Err(format!(
            "dtype {descr} is not a mask dtype (bool, uint8 or int8)"
        ));
    }
    let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    let fortran = match fortran.trim() {
        "True" => true,
        "False" => false,
        v => return Err(format!("fortran_order is {v}")),
    };
    let shape = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape {shape}")))
        .collect::<std::result::Result<_, _>>()?;
    let (h, w) = match dims.as_slice() {
        [h, w] | [1, h, w] => (*h, *w),
        _ => return Err(format!("shape {shape} is not (H, W)")),
    };
    if h == 0 || w == 0 {
        return Err(format!("zero-sized mask {shape}"));
    }
    let data = &bytes[start + header_len..];
    if data.len() != h * w {
        return Err(format!(
            "{} data bytes for shape {shape} (expected {})",
            data.len(),
            h * w
        ));
    }
    if fortran {
        Ok(Bitmap::from_fn(h, w, |y, x| data[x * h + y] != 0))
    } else {
        Bitmap::from_bytes(h, w, data).map_err(|e| e.to_string())
    }
}

/// The raw text of `'key': value` in a numpy header dict (value up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// Writes a boolean mask as a version-1 `.npy` file (C order), as `numpy.save` does.
pub fn write_npy_mask(path: impl AsRef<Path>, mask: &Bitmap) -> Result<()> {
    let (h, w) = (mask.height(), mask.width());
    let mut header = format!("{{'descr': '|b1', 'fortran_order': False, 'shape': ({h}, {w}), }}");
    // Pad so that the data starts on a 64-byte boundary, ending with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + h * w);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for y in 0..h {
        for x in 0..w {
            out.push(mask.get(y, x) as u8);
        }
    }
    crate::write_atomic(path.as_ref(), &out)
}

/// Reads a folder of `mask_<k>.npy` files in ascending numeric `k`.
pub fn read_npy_folder(dir: impl AsRef<Path>) -> Result<MaskSet> {
    let dir = dir.as_ref();
    let entries = std::fs::read_dir(dir).map_err(|source| SegmentError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<(usize, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SegmentError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(k) = name
            .strip_prefix("mask_")
            .and_then(|s| s.strip_suffix(".npy"))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        files.push((k, entry.path()));
    }
    files.sort();
    let context = dir.display().to_string();
    if files.is_empty() {
        return Err(SegmentError::NoMasks { context });
    }
    let mut masks = Vec::with_capacity(files.len());
    for (k, path) in files {
        let bitmap = read_npy_mask(&path)?;
        masks.push(Mask {
            source_index: k,
            ..Mask::new(Rle::from_bitmap(&bitmap))
        });
    }
    MaskSet::new(masks).map_err(|e| match e {
        SegmentError::InconsistentSize {
            index,
            got_h,
            got_w,
            want_h,
            want_w,
            ..
        } => SegmentError::InconsistentSize {
            context,
            index,
            got_h,
            got_w,
            want_h,
            want_w,
        },
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_is_read_in_numeric_order() {
        let dir = tempfile::tempdir().unwrap();
        for k in [10usize, 2, 1] {
            let m = Bitmap::from_fn(5, 6, |y, x| y == k % 5 && x < 3);
            write_npy_mask(dir.path().join(format!("mask_{k}.npy")), &m).unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let set = read_npy_folder(dir.path()).unwrap();
        let order: Vec<usize> = set.iter().map(|m| m.source_index).collect();
        assert_eq!(order, vec![1, 2, 10]);
        assert!(set.masks()[2].rle.to_bitmap().get(0, 2));
    }

    #[test]
    fn bad_npy_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mask_0.npy");
        std::fs::write(&p, b"not numpy").unwrap();
        assert!(matches!(read_npy_mask(&p), Err(SegmentError::Npy { .. })));
        let m = Bitmap::new(4, 4);
        write_npy_mask(&p, &m).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        let e = read_npy_mask(&p).unwrap_err();
        assert!(e.to_string().contains("mask_0.npy"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_npy_folder(empty.path()),
            Err(SegmentError::NoMasks { .. })
        ));
    }
}
