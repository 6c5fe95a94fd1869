//! Connector weights in safetensors: loaded from the layouts users have (llava-hf
//! `multi_modal_projector.linear_{1,2}`, original LLaVA `model.mm_projector.{0,2}`, a bare
//! projector file) and saved in llava-hf naming with PyTorch's `[out, in]` layout.
//! f32/f16/bf16 tensors load into the backend's float type (through og-weights).

use std::path::Path;

use burn::module::Param;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use og_weights::{ParamMut, SaveTensor, Weights};

use crate::connector::OgFusion;
use crate::error::FusionError;

type R<T> = std::result::Result<T, FusionError>;

const PROJECTOR_PREFIXES: &[&str] = &[
    "multi_modal_projector.",
    "model.multi_modal_projector.",
    "",
    "model.mm_projector.",
    "mm_projector.",
    // The released OG-LLaVA code's non_lora_trainables.bin (a PEFT-wrapped model's names).
    "base_model.model.model.mm_projector.",
];
const DELIMITER: &[&str] = &[
    "multi_modal_projector.delimiter",
    "delimiter",
    "model.mm_bom_mask_token.mm_bom_mask_token",
    "base_model.model.model.mm_bom_mask_token.mm_bom_mask_token",
    "mm_bom_mask_token",
];
const SEGMENT_EMBEDDING: &[&str] = &[
    "multi_modal_projector.segment_embedding",
    "segment_embedding",
    RELEASED_SEGMENT_EMBEDDING[0],
    RELEASED_SEGMENT_EMBEDDING[1],
];
/// The released code's learned 1-D PE (`mm_masks_pos_encoding.seg_embed`, 301 rows): span s of
/// the concatenated groups (counted from 0) adds row s. Ours gives segment id s + 1 row s + 1
/// (row 0 is "no segment" and adds nothing), so the released table loads one row down.
const RELEASED_SEGMENT_EMBEDDING: [&str; 2] = [
    "model.mm_masks_pos_encoding.seg_embed.weight",
    "base_model.model.model.mm_masks_pos_encoding.seg_embed.weight",
];

impl<B: Backend> OgFusion<B> {
    /// Loads the connector's weights from a safetensors file, sharded checkpoint or
    /// `save_pretrained` directory (see the module docs for the key layouts accepted).
    /// Missing or mis-shaped tensors are errors naming the tensor and both shapes; a configured
    /// delimiter or learned PE without weights in the checkpoint is an error.
    pub fn load_safetensors(self, path: impl AsRef<Path>) -> R<Self> {
        self.load_weights(&Weights::open(path)?)
    }

    /// Only the MLP (`linear_1`, `linear_2`): a LLaVA checkpoint as the start of OG-LLaVA
    /// training, where delimiter and learned PE are new and keep their initialisation.
    pub fn load_projector(mut self, w: &Weights) -> R<Self> {
        // llava-hf names the layers linear_1/linear_2, the original LLaVA mm_projector.0/.2.
        let (first, second) = match w.detect_prefix(PROJECTOR_PREFIXES, "linear_1.weight") {
            Some(p) => (format!("{p}linear_1"), format!("{p}linear_2")),
            None => {
                let p = w
                    .detect_prefix(PROJECTOR_PREFIXES, "0.weight")
                    .ok_or_else(|| FusionError::Weights {
                        path: w.origin().to_path_buf(),
                        message: format!(
                            "no connector found: none of {PROJECTOR_PREFIXES:?} followed by \
                             linear_1.weight or 0.weight"
                        ),
                    })?;
                (format!("{p}0"), format!("{p}2"))
            }
        };
        w.load_linear(&first, &mut self.linear_1)?;
        w.load_linear(&second, &mut self.linear_2)?;
        Ok(self)
    }

    /// As [`OgFusion::load_safetensors`], from an already opened checkpoint.
    pub fn load_weights(self, w: &Weights) -> R<Self> {
        let mut this = self.load_projector(w)?;
        let device = this.linear_1.weight.lazy_device();
        let (f, d) = (this.vision_hidden_size(), this.text_hidden_size());
        if this.delimiter.is_some() {
            let name = w.first_of(DELIMITER)?;
            this.delimiter = Some(Param::from_tensor(w.tensor_reshaped(name, [f], &device)?));
        }
        if let Some(table) = &this.segment_embedding {
            let rows = table.lazy_shape().dims::<2>()[0];
            let name = w.first_of(SEGMENT_EMBEDDING)?;
            let mut table = w.tensor(name, [rows, d], &device)?;
            if RELEASED_SEGMENT_EMBEDDING.contains(&name) {
                // Row k of ours is released row k − 1; the released table's last row (its
                // clamp for spans beyond 300) has no segment id here.
                table = Tensor::cat(
                    vec![Tensor::zeros([1, d], &device), table.slice(0..rows - 1)],
                    0,
                );
            }
            this.segment_embedding = Some(Param::from_tensor(table));
        }
        Ok(this)
    }

    /// The connector's name table: every parameter under its llava-hf name (the names
    /// [`OgFusion::save_safetensors`] writes), in a fixed order — MLP weights, MLP biases,
    /// delimiter, learned PE. Training, its checkpoints and its optimiser state go by it.
    pub fn named_params_mut(&mut self) -> Vec<(String, ParamMut<'_, B>)> {
        let p = "multi_modal_projector";
        let mut v = vec![
            (
                format!("{p}.linear_1.weight"),
                ParamMut::D2(&mut self.linear_1.weight),
            ),
            (
                format!("{p}.linear_2.weight"),
                ParamMut::D2(&mut self.linear_2.weight),
            ),
        ];
        if let Some(b) = self.linear_1.bias.as_mut() {
            v.push((format!("{p}.linear_1.bias"), ParamMut::D1(b)));
        }
        if let Some(b) = self.linear_2.bias.as_mut() {
            v.push((format!("{p}.linear_2.bias"), ParamMut::D1(b)));
        }
        if let Some(d) = self.delimiter.as_mut() {
            v.push((DELIMITER[0].to_string(), ParamMut::D1(d)));
        }
        if let Some(t) = self.segment_embedding.as_mut() {
            v.push((SEGMENT_EMBEDDING[0].to_string(), ParamMut::D2(t)));
        }
        v
    }

    /// Saves the connector in llava-hf naming (`multi_modal_projector.linear_1.weight` as
    /// `[out, in]` f32, …), atomically.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> R<()> {
        let mut tensors = Vec::new();
        for (prefix, lin) in [
            ("multi_modal_projector.linear_1", &self.linear_1),
            ("multi_modal_projector.linear_2", &self.linear_2),
        ] {
            tensors.extend(SaveTensor::linear(prefix, lin));
        }
        if let Some(t) = &self.delimiter {
            tensors.push(SaveTensor::from_tensor(DELIMITER[0], t.val()));
        }
        if let Some(t) = &self.segment_embedding {
            tensors.push(SaveTensor::from_tensor(SEGMENT_EMBEDDING[0], t.val()));
        }
        Ok(og_weights::save_safetensors(path, &tensors)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Delimiter, OgFusionConfig, Selection};
    use burn::backend::NdArray;
    use burn::tensor::{Tensor, TensorData};
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};

    type B = NdArray<f32>;

    /// A released `non_lora_trainables.bin` (torch.save) with the learned PE table gives the
    /// connector output the released code computes: span s (from 0) adds released row s
    /// (`scripts/make_torch_fixtures.py`).
    #[test]
    fn the_released_learned_pe_table_maps_spans_to_its_rows() {
        use crate::selection::{Group, GroupSource};
        let device = Default::default();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/weights");
        let io = Weights::open(root.join("released_pe_io.safetensors")).unwrap();
        let w = Weights::open_pytorch(root.join("released_pe.bin")).unwrap();
        let m = OgFusionConfig::new(4, 6)
            .with_positional(crate::PositionalEncoding::Learned1d { max_segments: 300 })
            .init::<B>(&device)
            .load_weights(&w)
            .unwrap();
        let (flat, _) = io.i64("groups").unwrap();
        let (lengths, _) = io.i64("group_lengths").unwrap();
        let mut at = 0;
        let groups = lengths
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let indices = flat[at..at + n as usize]
                    .iter()
                    .map(|&i| i as u32)
                    .collect();
                at += n as usize;
                Group {
                    source: GroupSource::Mask(k),
                    indices,
                }
            })
            .collect();
        let sel = Selection {
            grid: (2, 3),
            groups,
            per_mask: Vec::new(),
        };
        let x: Tensor<B, 3> = io.tensor("features", [1, 6, 4], &device).unwrap();
        let got = m.forward(x, &[sel]).unwrap().tokens;
        let want: Tensor<B, 3> = io.tensor("tokens", [1, 6, 6], &device).unwrap();
        let diff: f32 = (got - want).abs().max().into_scalar();
        assert!(diff < 1e-5, "tokens differ by {diff}");
    }

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
        assert!(
            e.to_string()
                .contains("missing tensor multi_modal_projector.segment_embedding"),
            "{e}"
        );
        std::fs::write(&p2, b"garbage").unwrap();
        assert!(cfg.init::<B>(&device).load_safetensors(&p2).is_err());
    }

    /// The name table and the file agree: `save_safetensors` writes exactly the names
    /// `named_params_mut` gives training, for every optional part present.
    #[test]
    fn the_name_table_is_what_is_saved() {
        let device = Default::default();
        let mut m = OgFusionConfig::new(4, 6)
            .with_delimiter(Delimiter::BeforeMask)
            .with_positional(crate::PositionalEncoding::Learned1d { max_segments: 3 })
            .init::<B>(&device);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        m.save_safetensors(&p).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let mut saved: Vec<String> = SafeTensors::deserialize(&bytes)
            .unwrap()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        saved.sort();
        let mut table: Vec<String> = m.named_params_mut().into_iter().map(|(n, _)| n).collect();
        table.sort();
        assert_eq!(saved, table);
        assert_eq!(table.len(), 6);
    }
}
