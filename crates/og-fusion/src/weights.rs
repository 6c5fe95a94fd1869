//! Connector weights in safetensors: loaded from the layouts users have (llava-hf
//! `multi_modal_projector.linear_{1,2}`, original LLaVA `model.mm_projector.{0,2}`, a bare
//! projector file) and saved in llava-hf naming with PyTorch's `[out, in]` layout.
//!
//! Tensors may be f32, f16 or bf16 and are converted to the backend's float type. The file is
//! memory-mapped, so a connector inside a large checkpoint shard is read without copying the
//! shard.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::connector::OgFusion;
use crate::error::FusionError;

type R<T> = std::result::Result<T, FusionError>;

const LINEAR_1: &[&str] = &[
    "multi_modal_projector.linear_1",
    "model.multi_modal_projector.linear_1",
    "linear_1",
    "model.mm_projector.0",
    "mm_projector.0",
];
const LINEAR_2: &[&str] = &[
    "multi_modal_projector.linear_2",
    "model.multi_modal_projector.linear_2",
    "linear_2",
    "model.mm_projector.2",
    "mm_projector.2",
];
const DELIMITER: &[&str] = &[
    "multi_modal_projector.delimiter",
    "delimiter",
    "model.mm_bom_mask_token.mm_bom_mask_token",
    "mm_bom_mask_token",
];
const SEGMENT_EMBEDDING: &[&str] = &[
    "multi_modal_projector.segment_embedding",
    "segment_embedding",
];

fn weight_error(path: &Path, message: String) -> FusionError {
    FusionError::Weights {
        path: path.to_path_buf(),
        message,
    }
}

/// A tensor view as f32 values and its shape.
fn to_f32(path: &Path, name: &str, view: &TensorView<'_>) -> R<(Vec<f32>, Vec<usize>)> {
    let bytes = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => {
            return Err(weight_error(
                path,
                format!("tensor {name} has dtype {d:?}; expected F32, F16 or BF16"),
            ));
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(weight_error(
            path,
            format!("tensor {name} holds a non-finite value at flat index {i}"),
        ));
    }
    Ok((values, view.shape().to_vec()))
}

fn find<'a>(
    st: &'a SafeTensors<'a>,
    prefixes: &[&str],
    suffix: &str,
) -> Option<(String, TensorView<'a>)> {
    prefixes.iter().find_map(|p| {
        let name = if suffix.is_empty() {
            p.to_string()
        } else {
            format!("{p}.{suffix}")
        };
        st.tensor(&name).ok().map(|v| (name, v))
    })
}

fn expect_shape(path: &Path, name: &str, got: &[usize], want: &[usize]) -> R<()> {
    if got != want {
        return Err(weight_error(
            path,
            format!("tensor {name} has shape {got:?}, the connector expects {want:?}"),
        ));
    }
    Ok(())
}

impl<B: Backend> OgFusion<B> {
    /// Loads the connector's weights from a safetensors file (see the module docs for the key
    /// layouts accepted). Missing or mis-shaped tensors are errors naming the tensor and both
    /// shapes; a configured delimiter or learned PE without weights in the file is an error.
    pub fn load_safetensors(mut self, path: impl AsRef<Path>) -> R<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| weight_error(path, e.to_string()))?;
        // SAFETY: the map is read-only and dropped before this function returns; a concurrent
        // truncation of the file by another process is outside what we guard against.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| weight_error(path, e.to_string()))?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| weight_error(path, format!("not a safetensors file: {e}")))?;
        let device = self.linear_1.weight.device();
        let (f, d) = (self.vision_hidden_size(), self.text_hidden_size());

        let linear =
            |keys: &[&str], d_in: usize, d_out: usize| -> R<(Tensor<B, 2>, Tensor<B, 1>)> {
                let (wname, w) = find(&st, keys, "weight").ok_or_else(|| {
                    weight_error(
                        path,
                        format!(
                            "missing tensor {}.weight (also tried {:?})",
                            keys[0],
                            &keys[1..]
                        ),
                    )
                })?;
                let (wv, ws) = to_f32(path, &wname, &w)?;
                expect_shape(path, &wname, &ws, &[d_out, d_in])?;
                let (bname, b) = find(&st, keys, "bias").ok_or_else(|| {
                    weight_error(path, format!("missing tensor {}.bias", keys[0]))
                })?;
                let (bv, bs) = to_f32(path, &bname, &b)?;
                expect_shape(path, &bname, &bs, &[d_out])?;
                // PyTorch stores [out, in]; burn's Linear holds [in, out].
                let w = Tensor::<B, 2>::from_data(TensorData::new(wv, [d_out, d_in]), &device)
                    .transpose();
                Ok((w, Tensor::from_data(TensorData::new(bv, [d_out]), &device)))
            };
        let (w1, b1) = linear(LINEAR_1, f, d)?;
        let (w2, b2) = linear(LINEAR_2, d, d)?;
        self.linear_1.weight = Param::from_tensor(w1);
        self.linear_1.bias = Some(Param::from_tensor(b1));
        self.linear_2.weight = Param::from_tensor(w2);
        self.linear_2.bias = Some(Param::from_tensor(b2));

        if self.delimiter.is_some() {
            let (name, v) = find(&st, DELIMITER, "").ok_or_else(|| {
                weight_error(
                    path,
                    format!(
                        "the connector has a delimiter token but the file has none of {DELIMITER:?}"
                    ),
                )
            })?;
            let (values, shape) = to_f32(path, &name, &v)?;
            if shape != [f] && shape != [1, f] {
                return Err(weight_error(
                    path,
                    format!("tensor {name} has shape {shape:?}, expected [{f}] or [1, {f}]"),
                ));
            }
            self.delimiter = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [f]),
                &device,
            )));
        }
        if let Some(table) = &self.segment_embedding {
            let rows = table.dims()[0];
            let (name, v) = find(&st, SEGMENT_EMBEDDING, "").ok_or_else(|| {
                weight_error(path, format!("the connector has a learned positional table but the file has none of {SEGMENT_EMBEDDING:?}"))
            })?;
            let (values, shape) = to_f32(path, &name, &v)?;
            expect_shape(path, &name, &shape, &[rows, d])?;
            self.segment_embedding = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [rows, d]),
                &device,
            )));
        }
        Ok(self)
    }

    /// Saves the connector in llava-hf naming (`multi_modal_projector.linear_1.weight` as
    /// `[out, in]` f32, …), atomically.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> R<()> {
        let path = path.as_ref();
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut push = |name: &str, t: Tensor<B, 2>| {
            let dims = t.dims().to_vec();
            let values: Vec<f32> = t.into_data().convert::<f32>().to_vec().expect("f32 data");
            tensors.push((
                name.to_string(),
                dims,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        };
        for (prefix, lin) in [
            ("multi_modal_projector.linear_1", &self.linear_1),
            ("multi_modal_projector.linear_2", &self.linear_2),
        ] {
            push(&format!("{prefix}.weight"), lin.weight.val().transpose());
            if let Some(b) = &lin.bias {
                push(&format!("{prefix}.bias"), b.val().unsqueeze::<2>());
            }
        }
        if let Some(d) = &self.delimiter {
            push("multi_modal_projector.delimiter", d.val().unsqueeze::<2>());
        }
        if let Some(t) = &self.segment_embedding {
            push("multi_modal_projector.segment_embedding", t.val());
        }
        // Biases and the delimiter are 1-D in PyTorch: drop the unsqueezed axis.
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dims, bytes)| {
                let shape: Vec<usize> =
                    if dims[0] == 1 && (name.ends_with(".bias") || name.ends_with(".delimiter")) {
                        vec![dims[1]]
                    } else {
                        dims.clone()
                    };
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape, bytes).expect("consistent view"),
                )
            })
            .collect();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| weight_error(path, e.to_string()))?;
        og_segment::write_atomic(path, &bytes).map_err(|e| weight_error(path, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Delimiter, OgFusionConfig, Selection};
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn round_trip_and_original_llava_names() {
        let device = Default::default();
        let cfg = OgFusionConfig::new(4, 6).with_delimiter(Delimiter::BeforeMask);
        let a = cfg.init::<B>(&device);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("projector.safetensors");
        a.save_safetensors(&p).unwrap();
        let b = cfg.init::<B>(&device).load_safetensors(&p).unwrap();
        let x = Tensor::<B, 3>::from_data(
            TensorData::new(
                (0..24).map(|i| i as f32 / 7.0).collect::<Vec<_>>(),
                [1, 6, 4],
            ),
            &device,
        );
        let sel = [Selection::full_grid((2, 3))];
        let out = |m: &OgFusion<B>| -> Vec<f32> {
            let y = m.forward(x.clone(), &sel).unwrap().tokens;
            y.into_data().to_vec().unwrap()
        };
        let (ya, yb) = (out(&a), out(&b));
        assert_eq!(ya, yb);

        // Rename to the original LLaVA layout, in bf16: still loads.
        let bytes = std::fs::read(&p).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut renamed: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in st.tensors() {
            let new = name
                .replace("multi_modal_projector.linear_1", "model.mm_projector.0")
                .replace("multi_modal_projector.linear_2", "model.mm_projector.2")
                .replace(
                    "multi_modal_projector.delimiter",
                    "model.mm_bom_mask_token.mm_bom_mask_token",
                );
            let data: Vec<u8> = view
                .data()
                .chunks_exact(4)
                .flat_map(|c| {
                    half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
                })
                .collect();
            renamed.push((new, view.shape().to_vec(), data));
        }
        let views: Vec<(String, TensorView<'_>)> = renamed
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::BF16, s.clone(), d).unwrap(),
                )
            })
            .collect();
        let p2 = dir.path().join("mm_projector.safetensors");
        std::fs::write(&p2, safetensors::serialize(views, None).unwrap()).unwrap();
        let c = cfg.init::<B>(&device).load_safetensors(&p2).unwrap();
        let yc = out(&c);
        let max = ya
            .iter()
            .zip(&yc)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(max < 0.05, "bf16 weights give close outputs ({max})");

        // Wrong width: a typed error naming the tensor and both shapes.
        let e = OgFusionConfig::new(5, 6)
            .init::<B>(&device)
            .load_safetensors(&p)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("multi_modal_projector.linear_1.weight")
                && msg.contains("[6, 4]")
                && msg.contains("[6, 5]"),
            "{msg}"
        );
        // A configured learned PE absent from the file.
        let e = OgFusionConfig::new(4, 6)
            .with_positional(crate::PositionalEncoding::Learned1d { max_segments: 3 })
            .init::<B>(&device)
            .load_safetensors(&p)
            .unwrap_err();
        assert!(e.to_string().contains("positional"), "{e}");
        std::fs::write(&p2, b"garbage").unwrap();
        assert!(cfg.init::<B>(&device).load_safetensors(&p2).is_err());
    }
}
