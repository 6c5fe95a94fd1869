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
        let hf: HfPreprocessorConfig = og_weights::mirror(&v).map_err(bad)?;
        hf.apply(&mut p).map_err(bad)?;
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

/// transformers' `CLIPImageProcessor` as `preprocessor_config.json` spells it (the fields
/// that change what the encoder sees; others are ignored).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct HfPreprocessorConfig {
    pub image_mean: Option<[f32; 3]>,
    pub image_std: Option<[f32; 3]>,
    pub size: Option<HfSize>,
    pub crop_size: Option<HfCropSize>,
    pub do_center_crop: Option<bool>,
    pub rescale_factor: Option<f32>,
    pub do_rescale: Option<bool>,
    pub do_normalize: Option<bool>,
    pub resample: Option<u64>,
}

/// `size`: `{"shortest_edge": n}` (newer) or a bare integer (older).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum HfSize {
    Edge(usize),
    ShortestEdge { shortest_edge: usize },
}

/// `crop_size`: `{"height": h, "width": w}` (newer) or a bare integer (older).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum HfCropSize {
    Side(usize),
    HeightWidth { height: usize, width: usize },
}

impl HfPreprocessorConfig {
    /// Overrides `p`'s settings with the file's; a setting this pipeline cannot follow
    /// (another resampling filter, no centre crop, a non-positive std) is an error.
    fn apply(self, p: &mut ImageProcessor) -> std::result::Result<(), String> {
        p.image_mean = self.image_mean.unwrap_or(CLIP_MEAN);
        p.image_std = self.image_std.unwrap_or(CLIP_STD);
        if p.image_std.iter().any(|&s| s <= 0.0) {
            return Err("image_std must be positive".into());
        }
        p.frame.pad_color = mean_color(p.image_mean);
        match self.size {
            Some(HfSize::Edge(n) | HfSize::ShortestEdge { shortest_edge: n }) => {
                p.frame.shortest_edge = n;
            }
            None => {}
        }
        match self.crop_size {
            Some(HfCropSize::Side(n)) => (p.frame.crop_height, p.frame.crop_width) = (n, n),
            Some(HfCropSize::HeightWidth { height, width }) => {
                (p.frame.crop_height, p.frame.crop_width) = (height, width);
            }
            None => {}
        }
        if self.do_center_crop == Some(false) {
            return Err(
                "do_center_crop = false is not supported (the encoder needs a square input)".into(),
            );
        }
        if let Some(r) = self.rescale_factor {
            p.rescale_factor = r;
        }
        if self.do_rescale == Some(false) {
            p.rescale_factor = 1.0;
        }
        p.do_normalize = self.do_normalize.unwrap_or(true);
        if let Some(r) = self.resample.filter(|&r| r != 3) {
            return Err(format!(
                "resample = {r} is not supported (only 3, bicubic, as CLIP uses)"
            ));
        }
        Ok(())
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
        for (json, needle) in [
            (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
            (r#"{"size": {"longest_edge": 224}}"#, "size"),
            (r#"{"crop_size": {"height": 224}}"#, "crop_size"),
            (r#"{"image_std": [0.5, 0.0, 0.5]}"#, "image_std"),
        ] {
            std::fs::write(dir.path().join("preprocessor_config.json"), json).unwrap();
            let e = ImageProcessor::from_hf_dir(dir.path(), 336, 14, false)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let none = tempfile::tempdir().unwrap();
        assert_eq!(
            ImageProcessor::from_hf_dir(none.path(), 336, 14, false).unwrap(),
            ImageProcessor::clip_336()
        );
    }
}
