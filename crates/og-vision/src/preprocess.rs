//! `CLIPImageProcessor` for our encoder: the [`Frame`] geometry (optionally LLaVA's
//! `expand2square`), Pillow-exact bicubic resize, centre crop, rescale by 1/255, normalise with
//! the CLIP mean/std — read from `preprocessor_config.json` when a checkpoint has one.

use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use serde_json::Value;

use crate::error::{Result, VisionError};
use crate::frame::{CLIP_MEAN, CLIP_STD, Frame, FrameConfig, mean_color};

/// Everything between an RGB image and `pixel_values`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub frame: FrameConfig,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f32,
    pub do_normalize: bool,
}

impl ImageProcessor {
    /// `openai/clip-vit-large-patch14-336`'s processor.
    pub fn clip_336() -> Self {
        Self {
            frame: FrameConfig::clip_336(),
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
        }
    }

    /// LLaVA-1.5 (training and evaluation): `expand2square` with the mean colour first.
    pub fn llava_1_5() -> Self {
        Self {
            frame: FrameConfig::llava_1_5(),
            ..Self::clip_336()
        }
    }

    /// From a checkpoint directory: `preprocessor_config.json` when present, otherwise CLIP's
    /// defaults at the tower's `image_size`. `patch_size` comes from the vision config;
    /// `pad_to_square` selects LLaVA's `expand2square`.
    pub fn from_hf_dir(
        dir: impl AsRef<Path>,
        image_size: usize,
        patch_size: usize,
        pad_to_square: bool,
    ) -> Result<Self> {
        let path = dir.as_ref().join("preprocessor_config.json");
        let mut p = Self {
            frame: FrameConfig {
                pad_to_square,
                pad_color: mean_color(CLIP_MEAN),
                shortest_edge: image_size,
                crop_height: image_size,
                crop_width: image_size,
                patch_size,
            },
            ..Self::clip_336()
        };
        if !path.is_file() {
            return Ok(p);
        }
        let text =
            og_fs::read_text(&path, og_fs::MAX_CONFIG_BYTES).map_err(|source| VisionError::Io {
                path: path.clone(),
                source,
            })?;
        let bad = |m: String| VisionError::Config(format!("{}: {m}", path.display()));
        let v: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.get(key) {
                None => Ok(default),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(a) {
                        *o = x.as_f64().ok_or_else(|| bad(format!("{key} holds {x}")))? as f32;
                    }
                    Ok(out)
                }
                Some(x) => Err(bad(format!("{key} is {x}, expected three numbers"))),
            }
        };
        p.image_mean = triple("image_mean", CLIP_MEAN)?;
        p.image_std = triple("image_std", CLIP_STD)?;
        if p.image_std.iter().any(|&s| s <= 0.0) {
            return Err(bad("image_std must be positive".into()));
        }
        p.frame.pad_color = mean_color(p.image_mean);
        // `size`: {"shortest_edge": n} (newer) or a bare integer (older).
        match v.get("size") {
            Some(Value::Number(n)) => p.frame.shortest_edge = n.as_u64().unwrap_or(0) as usize,
            Some(Value::Object(o)) => {
                if let Some(n) = o.get("shortest_edge").and_then(Value::as_u64) {
                    p.frame.shortest_edge = n as usize;
                } else {
                    return Err(bad(format!("size {o:?} has no shortest_edge")));
                }
            }
            _ => {}
        }
        let center_crop = v
            .get("do_center_crop")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        match v.get("crop_size") {
            Some(Value::Number(n)) => {
                let n = n.as_u64().unwrap_or(0) as usize;
                (p.frame.crop_height, p.frame.crop_width) = (n, n);
            }
            Some(Value::Object(o)) => {
                let get = |k: &str| o.get(k).and_then(Value::as_u64).map(|n| n as usize);
                match (get("height"), get("width")) {
                    (Some(h), Some(w)) => (p.frame.crop_height, p.frame.crop_width) = (h, w),
                    _ => return Err(bad(format!("crop_size {o:?} needs height and width"))),
                }
            }
            _ => {}
        }
        if !center_crop {
            return Err(bad(
                "do_center_crop = false is not supported (the encoder needs a square input)".into(),
            ));
        }
        if let Some(r) = v.get("rescale_factor").and_then(Value::as_f64) {
            p.rescale_factor = r as f32;
        }
        if v.get("do_rescale").and_then(Value::as_bool) == Some(false) {
            p.rescale_factor = 1.0;
        }
        p.do_normalize = v
            .get("do_normalize")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if let Some(r) = v
            .get("resample")
            .and_then(Value::as_u64)
            .filter(|&r| r != 3)
        {
            return Err(bad(format!(
                "resample = {r} is not supported (only 3, bicubic, as CLIP uses)"
            )));
        }
        Ok(p)
    }

    /// The frame an image of `width`×`height` goes through.
    pub fn frame(&self, width: usize, height: usize) -> Result<Frame> {
        self.frame.frame(width, height)
    }

    /// `pixel_values` `[1, 3, S, S]` of one image, and its frame (for mapping masks).
    pub fn pixel_values<B: Backend>(
        &self,
        image: &RgbImage,
        device: &B::Device,
    ) -> Result<(Tensor<B, 4>, Frame)> {
        let (data, frame) = self.pixel_data(image)?;
        Ok((Tensor::from_data(data, device), frame))
    }

    /// As [`ImageProcessor::pixel_values`], on the host (for data-loader threads).
    pub fn pixel_data(&self, image: &RgbImage) -> Result<(TensorData, Frame)> {
        let frame = self.frame(image.width() as usize, image.height() as usize)?;
        let framed = frame.apply_image(image)?;
        let (w, h) = (framed.width() as usize, framed.height() as usize);
        let mut data = vec![0f32; 3 * h * w];
        for (i, p) in framed.pixels().enumerate() {
            for c in 0..3 {
                let mut v = p.0[c] as f32 * self.rescale_factor;
                if self.do_normalize {
                    v = (v - self.image_mean[c]) / self.image_std[c];
                }
                data[c * h * w + i] = v;
            }
        }
        Ok((TensorData::new(data, [1, 3, h, w]), frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn config_spellings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("preprocessor_config.json"),
            r#"{"crop_size": 224, "size": 224, "do_center_crop": true, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "resample": 3, "rescale_factor": 0.00392156862745098}"#,
        )
        .unwrap();
        let p = ImageProcessor::from_hf_dir(dir.path(), 336, 14, true).unwrap();
        assert_eq!((p.frame.shortest_edge, p.frame.crop_width), (224, 224));
        assert_eq!(p.frame.pad_color, [127, 127, 127]);
        let img = RgbImage::from_pixel(50, 40, image::Rgb([255, 0, 127]));
        let (pv, frame) = p
            .pixel_values::<NdArray<f32>>(&img, &Default::default())
            .unwrap();
        assert_eq!(pv.dims(), [1, 3, 224, 224]);
        assert_eq!(frame.grid(), (16, 16));
        let v: Vec<f32> = pv.into_data().to_vec().unwrap();
        // Centre pixel: red channel (255/255 − 0.5)/0.5 = 1.
        assert!((v[112 * 224 + 112] - 1.0).abs() < 1e-5);
        std::fs::write(
            dir.path().join("preprocessor_config.json"),
            r#"{"resample": 2}"#,
        )
        .unwrap();
        assert!(ImageProcessor::from_hf_dir(dir.path(), 336, 14, false).is_err());
        let none = tempfile::tempdir().unwrap();
        assert_eq!(
            ImageProcessor::from_hf_dir(none.path(), 336, 14, false).unwrap(),
            ImageProcessor::clip_336()
        );
    }
}
