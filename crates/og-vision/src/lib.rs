//! The image side of OG-LLaVA.
//!
//! - [`load_rgb`], [`decode_rgb`]: decode PNG/JPEG/WebP/GIF/BMP/TIFF (a file or bytes) into
//!   RGB8 with typed errors.
//! - [`Frame`]: the geometry from an original image to the encoder input (LLaVA's
//!   `expand2square`, shortest-side resize, centre crop), applied to images and — with area or
//!   nearest semantics — to masks, so masks and patch features agree spatially.
//!
//! - [`clip`]: the CLIP ViT encoder (HF configs and checkpoints), features X'.

pub mod clip;
mod error;
mod frame;
mod preprocess;
pub mod resize;

use std::path::Path;

pub use error::{Result, VisionError};
pub use frame::{CLIP_MEAN, CLIP_STD, Frame, FrameConfig, PatchCoverage, mean_color};
pub use image::RgbImage;
pub use preprocess::ImageProcessor;

/// Decodes an image file into RGB8 (alpha dropped, greyscale expanded).
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| VisionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_rgb(&bytes, path)
}

/// Decodes an encoded image held in memory (a benchmark table's image cell, a request body)
/// into RGB8; `name` is what errors call it.
pub fn decode_rgb(bytes: &[u8], name: &Path) -> Result<RgbImage> {
    if image::guess_format(bytes).ok() == Some(image::ImageFormat::Jpeg) && jpeg_truncated(bytes) {
        return Err(VisionError::Decode {
            path: name.to_path_buf(),
            message: "the JPEG is truncated (no end-of-image marker after its last scan); \
                      decoders that accept it fill the missing part with grey"
                .into(),
        });
    }
    let decoded = image::load_from_memory(bytes).map_err(|e| VisionError::Decode {
        path: name.to_path_buf(),
        message: e.to_string(),
    })?;
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err(VisionError::ZeroSize {
            width: decoded.width() as usize,
            height: decoded.height() as usize,
        });
    }
    Ok(decoded.to_rgb8())
}

/// Whether a JPEG stops before the end-of-image marker (`FF D9`) that closes its last scan
/// (`FF DA`), as a cut download does; Pillow refuses such files ("image file is truncated").
/// Inside scan data a literal `FF` is stuffed as `FF 00`, so both markers are unambiguous; an
/// embedded thumbnail's markers come before the main image's last scan.
fn jpeg_truncated(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi < sos,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_and_truncated_files_are_typed_errors() {
        let dir = std::env::temp_dir().join(format!("og-vision-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.png");
        assert!(matches!(load_rgb(&missing), Err(VisionError::Io { .. })));
        let junk = dir.join("junk.png");
        std::fs::write(&junk, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = load_rgb(&junk).unwrap_err();
        assert!(matches!(e, VisionError::Decode { .. }) && e.to_string().contains("junk.png"));
        let img = RgbImage::from_pixel(4, 3, image::Rgb([1, 2, 3]));
        let good = dir.join("good.png");
        img.save(&good).unwrap();
        assert_eq!(load_rgb(&good).unwrap(), img);
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.join("cut.png");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(load_rgb(&cut), Err(VisionError::Decode { .. })));
        let mut jpeg = Vec::new();
        RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        assert!(decode_rgb(&jpeg, Path::new("whole.jpg")).is_ok());
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"trailing bytes after the image");
        assert!(decode_rgb(&trailing, Path::new("trailing.jpg")).is_ok());
        let e = decode_rgb(&jpeg[..jpeg.len() * 2 / 3], Path::new("cut.jpg")).unwrap_err();
        assert!(
            e.to_string()
                .contains("cut.jpg: cannot decode image: the JPEG is truncated"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
