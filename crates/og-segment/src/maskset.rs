//! [`MaskSet`]: the N binary masks of one image, at the image's original resolution.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, SegmentError};
use crate::rle::{Bitmap, Rle};

/// One mask and the per-mask metadata segmenters report.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub rle: Rle,
    /// SAM's `predicted_iou` (or any segmenter's confidence).
    pub score: Option<f32>,
    /// SAM's `stability_score`.
    pub stability: Option<f32>,
    /// Position of this mask in its source (JSON array index, or `k` of `mask_<k>.npy`).
    pub source_index: usize,
    /// Fields of the source record this crate does not interpret (kept on write).
    pub extra: Map<String, Value>,
}

impl Mask {
    pub fn new(rle: Rle) -> Self {
        Self {
            rle,
            score: None,
            stability: None,
            source_index: 0,
            extra: Map::new(),
        }
    }

    /// Foreground pixel count.
    pub fn area(&self) -> u64 {
        self.rle.area()
    }
}

/// N ≥ 1 binary masks of one image, all of the image's original size H×W, stored run-length
/// encoded (a 2000×2000 image with 200 typical SAM masks takes well under a megabyte).
///
/// "No masks" is not an empty `MaskSet`: it is the mask-free path (`Option<&MaskSet>::None`).
#[derive(Debug, Clone, PartialEq)]
pub struct MaskSet {
    height: usize,
    width: usize,
    masks: Vec<Mask>,
}

/// The record SAM's automatic mask generator writes with `output_mode="coco_rle"`.
#[derive(Serialize, Deserialize)]
struct CocoRecord {
    segmentation: CocoSegmentation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    predicted_iou: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stability_score: Option<f32>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Serialize, Deserialize)]
struct CocoSegmentation {
    size: [usize; 2],
    counts: CocoCounts,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CocoCounts {
    Compressed(String),
    Uncompressed(Vec<u64>),
}

/// The most masks one image's COCO RLE file may hold (SAM's automatic mask generator gives
/// about a hundred; every mask costs a pass of Φ).
pub const MAX_MASKS_PER_IMAGE: usize = 10_000;

/// Names what is wrong with a record's `segmentation` in COCO's words, before serde would (its
/// messages name this crate's internals).
fn check_record_shape(item: &Value) -> std::result::Result<(), &'static str> {
    let seg = item
        .get("segmentation")
        .ok_or("a record without \"segmentation\"")?;
    if seg.is_array() {
        return Err(
            "a polygon segmentation: only RLE masks are read (convert polygons with \
                    pycocotools' mask.frPyObjects)",
        );
    }
    let counts = seg
        .get("counts")
        .ok_or("segmentation without \"counts\" (an RLE string or a list of run lengths)")?;
    let list_of_counts = counts
        .as_array()
        .is_some_and(|c| c.iter().all(|v| v.as_u64().is_some()));
    if !counts.is_string() && !list_of_counts {
        return Err(
            "segmentation.counts is neither an RLE string nor a list of non-negative \
                    integers",
        );
    }
    let size_ok = seg
        .get("size")
        .and_then(Value::as_array)
        .is_some_and(|s| s.len() == 2 && s.iter().all(|v| v.as_u64().is_some()));
    if !size_ok {
        return Err("segmentation.size is not [height, width]");
    }
    Ok(())
}

/// How [`MaskSet::to_coco_json`] writes run lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CountsFormat {
    /// The compressed string pycocotools writes (`mask.encode`); what SAM tools write.
    #[default]
    Compressed,
    /// A plain list of integers (the "uncompressed RLE" of COCO annotation files).
    Uncompressed,
}

impl MaskSet {
    /// Builds a set; fails on zero masks or masks of differing sizes.
    pub fn new(masks: Vec<Mask>) -> Result<Self> {
        Self::with_context(masks, "mask set")
    }

    fn with_context(masks: Vec<Mask>, context: &str) -> Result<Self> {
        let first = masks.first().ok_or_else(|| SegmentError::NoMasks {
            context: context.to_string(),
        })?;
        let (height, width) = (first.rle.height(), first.rle.width());
        if height == 0 || width == 0 {
            return Err(SegmentError::BadMask {
                context: context.to_string(),
                index: 0,
                message: format!("zero-sized mask ({height}x{width})"),
            });
        }
        for (index, m) in masks.iter().enumerate() {
            if (m.rle.height(), m.rle.width()) != (height, width) {
                return Err(SegmentError::InconsistentSize {
                    context: context.to_string(),
                    index,
                    got_h: m.rle.height(),
                    got_w: m.rle.width(),
                    want_h: height,
                    want_w: width,
                });
            }
        }
        Ok(Self {
            height,
            width,
            masks,
        })
    }

    /// From row-major bitmaps, in the given order.
    pub fn from_bitmaps(bitmaps: &[Bitmap]) -> Result<Self> {
        Self::new(
            bitmaps
                .iter()
                .enumerate()
                .map(|(i, b)| Mask {
                    source_index: i,
                    ..Mask::new(Rle::from_bitmap(b))
                })
                .collect(),
        )
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn len(&self) -> usize {
        self.masks.len()
    }

    /// Always false: a `MaskSet` holds at least one mask.
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }

    pub fn masks(&self) -> &[Mask] {
        &self.masks
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Mask> {
        self.masks.iter()
    }

    /// Checks the masks were made for an image of `width`×`height`.
    pub fn expect_size(&self, width: usize, height: usize) -> Result<()> {
        if (self.height, self.width) != (height, width) {
            return Err(SegmentError::SizeMismatch {
                mask_h: self.height,
                mask_w: self.width,
                image_h: height,
                image_w: width,
            });
        }
        Ok(())
    }

    /// Heap bytes of the run-length storage.
    pub fn heap_bytes(&self) -> usize {
        self.masks.iter().map(|m| m.rle.heap_bytes()).sum::<usize>()
            + self.masks.capacity() * std::mem::size_of::<Mask>()
    }

    /// Parses the COCO RLE JSON list SAM's automatic mask generator writes. Both compressed
    /// string counts and uncompressed integer lists are accepted.
    pub fn from_coco_json_str(text: &str, context: &str) -> Result<Self> {
        let json_err = |message: String| SegmentError::Json {
            path: context.into(),
            message,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| json_err(e.to_string()))?;
        let list = match value {
            Value::Array(list) => list,
            Value::Object(mut obj) => match obj.remove("annotations") {
                Some(Value::Array(list)) => list,
                _ => {
                    return Err(json_err(
                        "expected a list of mask records (or an object with \"annotations\")"
                            .into(),
                    ));
                }
            },
            _ => return Err(json_err("expected a list of mask records".into())),
        };
        if list.len() > MAX_MASKS_PER_IMAGE {
            return Err(json_err(format!(
                "{} mask records; at most {MAX_MASKS_PER_IMAGE} per image are read",
                list.len()
            )));
        }
        let mut masks = Vec::with_capacity(list.len());
        for (index, item) in list.into_iter().enumerate() {
            let bad = |message: String| SegmentError::BadMask {
                context: context.to_string(),
                index,
                message,
            };
            check_record_shape(&item).map_err(|m| bad(m.into()))?;
            let rec: CocoRecord =
                serde_json::from_value(item).map_err(|e| bad(format!("malformed record: {e}")))?;
            let [h, w] = rec.segmentation.size;
            let rle = match rec.segmentation.counts {
                CocoCounts::Compressed(s) => Rle::from_compressed(h, w, &s),
                CocoCounts::Uncompressed(c) => {
                    let counts = c
                        .into_iter()
                        .map(|v| {
                            u32::try_from(v).map_err(|_| {
                                SegmentError::CorruptRle(format!("count {v} too large"))
                            })
                        })
                        .collect::<Result<Vec<_>>>();
                    counts.and_then(|c| Rle::from_counts(h, w, c))
                }
            }
            .map_err(|e| bad(e.to_string()))?;
            for (name, v) in [
                ("predicted_iou", rec.predicted_iou),
                ("stability_score", rec.stability_score),
            ] {
                if v.is_some_and(|v| !v.is_finite()) {
                    return Err(bad(format!("{name} is not finite")));
                }
            }
            masks.push(Mask {
                rle,
                score: rec.predicted_iou,
                stability: rec.stability_score,
                source_index: index,
                extra: rec.extra,
            });
        }
        Self::with_context(masks, context)
    }

    /// Reads a COCO RLE JSON file (see [`MaskSet::from_coco_json_str`]).
    pub fn read_coco_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = og_fs::read_text(path, crate::MAX_MASKS_JSON_BYTES).map_err(|source| {
            SegmentError::Io {
                path: path.to_path_buf(),
                source,
            }
        })?;
        if text.trim().is_empty() {
            return Err(SegmentError::Json {
                path: path.to_path_buf(),
                message: "the file is empty".into(),
            });
        }
        Self::from_coco_json_str(&text, &path.display().to_string())
    }

    /// Serialises as a COCO RLE JSON list: `segmentation`, `area`, `bbox`, and the scores and
    /// extra fields the masks carry.
    pub fn to_coco_json(&self, format: CountsFormat) -> String {
        let records: Vec<Value> = self
            .masks
            .iter()
            .map(|m| {
                let counts = match format {
                    CountsFormat::Compressed => CocoCounts::Compressed(m.rle.to_compressed()),
                    CountsFormat::Uncompressed => {
                        CocoCounts::Uncompressed(m.rle.counts().iter().map(|&c| c as u64).collect())
                    }
                };
                let mut extra = m.extra.clone();
                extra.insert("area".into(), Value::from(m.area()));
                extra.insert(
                    "bbox".into(),
                    Value::from(
                        m.rle
                            .bbox()
                            .iter()
                            .map(|&v| Value::from(v))
                            .collect::<Vec<_>>(),
                    ),
                );
                serde_json::to_value(CocoRecord {
                    segmentation: CocoSegmentation {
                        size: [m.rle.height(), m.rle.width()],
                        counts,
                    },
                    predicted_iou: m.score,
                    stability_score: m.stability,
                    extra,
                })
                .expect("mask records serialise")
            })
            .collect();
        serde_json::to_string(&records).expect("mask records serialise")
    }

    /// Writes [`MaskSet::to_coco_json`] atomically (temporary file, then rename).
    pub fn write_coco_json(&self, path: impl AsRef<Path>, format: CountsFormat) -> Result<()> {
        crate::write_atomic(path.as_ref(), self.to_coco_json(format).as_bytes())
    }
}

impl<'a> IntoIterator for &'a MaskSet {
    type Item = &'a Mask;
    type IntoIter = std::slice::Iter<'a, Mask>;
    fn into_iter(self) -> Self::IntoIter {
        self.masks.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(h: usize, w: usize, y0: usize, x0: usize, s: usize) -> Bitmap {
        Bitmap::from_fn(h, w, |y, x| {
            (y0..y0 + s).contains(&y) && (x0..x0 + s).contains(&x)
        })
    }

    /// The RLE of a square, built column by column without a dense intermediate.
    fn square_rle(h: usize, w: usize, y0: usize, x0: usize, s: usize) -> Rle {
        let mut counts = vec![0u32];
        let mut push = |v: bool, n: usize| {
            if n == 0 {
                return;
            }
            let want_odd = v;
            if (counts.len() % 2 == 0) != want_odd {
                counts.push(0);
            }
            *counts.last_mut().unwrap() += n as u32;
        };
        for x in 0..w {
            if (x0..x0 + s).contains(&x) {
                push(false, y0);
                push(true, s);
                push(false, h - y0 - s);
            } else {
                push(false, h);
            }
        }
        Rle::from_counts(h, w, counts).unwrap()
    }

    #[test]
    fn square_rle_matches_bitmap() {
        assert_eq!(
            square_rle(9, 7, 2, 3, 4),
            Rle::from_bitmap(&square(9, 7, 2, 3, 4))
        );
    }

    #[test]
    fn json_round_trip_both_formats() {
        let set =
            MaskSet::from_bitmaps(&[square(30, 40, 2, 3, 5), square(30, 40, 10, 20, 8)]).unwrap();
        for f in [CountsFormat::Compressed, CountsFormat::Uncompressed] {
            let text = set.to_coco_json(f);
            let back = MaskSet::from_coco_json_str(&text, "mem").unwrap();
            assert_eq!(back.len(), 2);
            for (a, b) in back.iter().zip(set.iter()) {
                assert_eq!(a.rle, b.rle);
            }
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v[1]["area"], 64);
            assert_eq!(v[1]["bbox"], serde_json::json!([20.0, 10.0, 8.0, 8.0]));
        }
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let e = MaskSet::from_coco_json_str("[]", "x.json").unwrap_err();
        assert!(matches!(e, SegmentError::NoMasks { .. }), "{e}");
        let e = MaskSet::from_coco_json_str("{", "x.json").unwrap_err();
        assert!(matches!(e, SegmentError::Json { .. }), "{e}");
        let e = MaskSet::from_coco_json_str(
            r#"[{"segmentation": {"size": [3, 4], "counts": "4~"}}]"#,
            "x.json",
        )
        .unwrap_err();
        assert!(e.to_string().contains("x.json: mask 0"), "{e}");
        let e = MaskSet::from_coco_json_str(
            r#"[{"segmentation": {"size": [3, 4], "counts": [12]}},
                {"segmentation": {"size": [4, 3], "counts": [12]}}]"#,
            "x.json",
        )
        .unwrap_err();
        assert!(
            matches!(e, SegmentError::InconsistentSize { index: 1, .. }),
            "{e}"
        );
        let e = MaskSet::from_coco_json_str(r#"[{"segmentation": 3}]"#, "x.json").unwrap_err();
        assert!(matches!(e, SegmentError::BadMask { index: 0, .. }), "{e}");
        let set = MaskSet::from_coco_json_str(
            r#"[{"segmentation": {"size": [3, 4], "counts": [12]}, "predicted_iou": 0.9}]"#,
            "x.json",
        )
        .unwrap();
        assert!(set.expect_size(4, 3).is_ok());
        assert!(matches!(
            set.expect_size(3, 4).unwrap_err(),
            SegmentError::SizeMismatch { .. }
        ));
    }

    #[test]
    fn large_sets_stay_small() {
        // 200 blob-shaped masks on a 2000x2000 image: RLE keeps this in a few MB at most,
        // where dense bytes would take 800 MB.
        let masks: Vec<Mask> = (0..200)
            .map(|i| {
                let (y0, x0, s) = ((i * 37) % 1500, (i * 91) % 1500, 100 + (i % 5) * 80);
                Mask::new(square_rle(2000, 2000, y0, x0, s))
            })
            .collect();
        let set = MaskSet::new(masks).unwrap();
        assert!(set.heap_bytes() < 4 << 20, "{} bytes", set.heap_bytes());
    }
}
