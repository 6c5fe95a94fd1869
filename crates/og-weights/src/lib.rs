//! Checkpoints for OG-LLaVA's model crates.
//!
//! [`Weights`] indexes one safetensors file, a sharded checkpoint or a `save_pretrained`
//! directory, memory-mapped; tensors are converted from f32/f16/bf16 into burn tensors on
//! request, with errors that name the file, the tensor and the shapes involved. PyTorch files
//! (`torch.save` of a state dict: `non_lora_trainables.bin`, `adapter_model.bin`,
//! `pytorch_model.bin`) are read by [`torch`]'s bounded pickle machine ([`pickle`]), which
//! interprets the opcodes as data, never executes code from the file, bounds nesting and size,
//! and checks every tensor view against its storage.

pub mod pickle;
mod torch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// A mutable reference to one parameter of rank 1 or 2: what a module's name table hands out
/// (`(name, ParamMut)` pairs) to whoever loads, saves or trains it by name.
pub enum ParamMut<'a, B: Backend> {
    D1(&'a mut Param<Tensor<B, 1>>),
    D2(&'a mut Param<Tensor<B, 2>>),
}

impl<B: Backend> ParamMut<'_, B> {
    /// Elements in the parameter.
    pub fn numel(&self) -> usize {
        match self {
            ParamMut::D1(p) => p.val().dims()[0],
            ParamMut::D2(p) => p.val().dims().iter().product(),
        }
    }
}

/// Every failure of this crate.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable checkpoint: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: missing tensor {name}{}", if tried.is_empty() { String::new() } else { format!(" (also tried {})", tried.join(", ")) })]
    Missing {
        path: PathBuf,
        name: String,
        tried: Vec<String>,
    },
    #[error("{path}: tensor {name} has shape {got:?}, expected {want:?}")]
    Shape {
        path: PathBuf,
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("{path}: tensor {name} has dtype {dtype}; expected F32, F16 or BF16")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor {name} holds a non-finite value at flat index {index}")]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
    },
}

pub type Result<T> = std::result::Result<T, WeightError>;

struct Entry {
    shape: Vec<usize>,
    data: EntryData,
}

enum EntryData {
    /// Bytes in a memory-mapped safetensors file.
    Mapped {
        file: usize,
        dtype: Dtype,
        /// Absolute byte range in the file.
        range: (usize, usize),
    },
    /// Values read from a PyTorch pickle (small files: adapters, projectors).
    Float(Vec<f32>),
    Int(Vec<i64>),
}

struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

/// An indexed, memory-mapped set of safetensors files.
pub struct Weights {
    origin: PathBuf,
    files: Vec<MappedFile>,
    index: HashMap<String, Entry>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("origin", &self.origin)
            .field("files", &self.files.len())
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl Weights {
    /// Opens a `.safetensors` file, a `*.safetensors.index.json`, or a directory holding
    /// `model.safetensors`, `model.safetensors.index.json` or other `*.safetensors` files.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| WeightError::Io {
            path: path.to_path_buf(),
            source,
        };
        let files: Vec<PathBuf> = if path.is_dir() {
            let index = path.join("model.safetensors.index.json");
            if index.is_file() {
                shards_of(&index)?
            } else if path.join("model.safetensors").is_file() {
                vec![path.join("model.safetensors")]
            } else {
                let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(io)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                    .collect();
                v.sort();
                if v.is_empty() && path.join("pytorch_model.bin").is_file() {
                    return Self::open_pytorch(path.join("pytorch_model.bin"));
                }
                if v.is_empty() {
                    return Err(WeightError::Format {
                        path: path.to_path_buf(),
                        message: "the directory holds no .safetensors file (nor pytorch_model.bin)"
                            .into(),
                    });
                }
                v
            }
        } else if path.to_string_lossy().ends_with(".index.json") {
            shards_of(path)?
        } else if is_pytorch_file(path) {
            return Self::open_pytorch(path);
        } else {
            vec![path.to_path_buf()]
        };
        let mut weights = Weights {
            origin: path.to_path_buf(),
            files: Vec::with_capacity(files.len()),
            index: HashMap::new(),
        };
        for file_path in files {
            let file = std::fs::File::open(&file_path).map_err(|source| WeightError::Io {
                path: file_path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only; files changed by another process while mapped are
            // outside what we guard against (as with every mmap-based checkpoint loader).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| WeightError::Io {
                path: file_path.clone(),
                source,
            })?;
            let (header, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| WeightError::Format {
                    path: file_path.clone(),
                    message: e.to_string(),
                })?;
            let start = 8 + header;
            let file_index = weights.files.len();
            for (name, info) in meta.tensors() {
                weights.index.insert(
                    name,
                    Entry {
                        shape: info.shape.clone(),
                        data: EntryData::Mapped {
                            file: file_index,
                            dtype: info.dtype,
                            range: (start + info.data_offsets.0, start + info.data_offsets.1),
                        },
                    },
                );
            }
            weights.files.push(MappedFile {
                path: file_path,
                map,
            });
        }
        Ok(weights)
    }

    /// Reads a PyTorch state dict written by `torch.save` (zip or legacy format; f32, f16,
    /// bf16, f64 and integer tensors). A `{"state_dict": {...}}` wrapper is looked through.
    pub fn open_pytorch(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| WeightError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only map of a file this process does not modify; see `open`.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let tensors = torch::read_state_dict(&map).map_err(|message| WeightError::Format {
            path: path.to_path_buf(),
            message,
        })?;
        let index = tensors
            .into_iter()
            .map(|(name, shape, values)| {
                let data = match values {
                    torch::Values::Float(v) => EntryData::Float(v),
                    torch::Values::Int(v) => EntryData::Int(v),
                };
                (name, Entry { shape, data })
            })
            .collect();
        Ok(Weights {
            origin: path.to_path_buf(),
            files: Vec::new(),
            index,
        })
    }

    /// Where the weights were opened from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|e| e.shape.as_slice())
    }

    /// The first of `candidates` present, or a [`WeightError::Missing`] naming them all.
    pub fn first_of<'a>(&self, candidates: &[&'a str]) -> Result<&'a str> {
        candidates
            .iter()
            .copied()
            .find(|c| self.contains(c))
            .ok_or_else(|| self.missing(candidates))
    }

    /// The first prefix `p` of `prefixes` such that `p + probe` is a tensor of the checkpoint.
    pub fn detect_prefix<'a>(&self, prefixes: &[&'a str], probe: &str) -> Option<&'a str> {
        prefixes
            .iter()
            .copied()
            .find(|p| self.contains(&format!("{p}{probe}")))
    }

    fn missing(&self, candidates: &[&str]) -> WeightError {
        WeightError::Missing {
            path: self.origin.clone(),
            name: candidates.first().copied().unwrap_or_default().to_string(),
            tried: candidates.iter().skip(1).map(|s| s.to_string()).collect(),
        }
    }

    /// The file holding `entry` (the origin for PyTorch files).
    fn file_of(&self, entry: &Entry) -> &Path {
        match entry.data {
            EntryData::Mapped { file, .. } => &self.files[file].path,
            _ => &self.origin,
        }
    }

    /// A tensor as f32 values and its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let entry = self.index.get(name).ok_or_else(|| self.missing(&[name]))?;
        let path = self.file_of(entry);
        let values = match &entry.data {
            EntryData::Mapped { file, dtype, range } => {
                let map = &self.files[*file].map;
                let bytes = &map[range.0..range.1];
                let view = TensorView::new(*dtype, entry.shape.clone(), bytes).map_err(|e| {
                    WeightError::Format {
                        path: path.to_path_buf(),
                        message: format!("tensor {name}: {e}"),
                    }
                })?;
                let values = to_f32(view.data(), *dtype).ok_or_else(|| WeightError::Dtype {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    dtype: format!("{dtype:?}"),
                })?;
                release_pages(map, *range);
                values
            }
            EntryData::Float(v) => v.clone(),
            EntryData::Int(_) => {
                return Err(WeightError::Dtype {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    dtype: "an integer type".into(),
                });
            }
        };
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(WeightError::NonFinite {
                path: path.to_path_buf(),
                name: name.to_string(),
                index,
            });
        }
        Ok((values, entry.shape.clone()))
    }

    /// An integer tensor (I64, I32 or U8) as i64 values and its shape.
    pub fn i64(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let entry = self.index.get(name).ok_or_else(|| self.missing(&[name]))?;
        let dtype_error = |dtype: String| WeightError::Dtype {
            path: self.file_of(entry).to_path_buf(),
            name: name.to_string(),
            dtype: format!("{dtype} (an integer tensor was expected)"),
        };
        let values: Vec<i64> = match &entry.data {
            EntryData::Mapped { file, dtype, range } => {
                let bytes = &self.files[*file].map[range.0..range.1];
                match dtype {
                    Dtype::I64 => bytes
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                    Dtype::I32 => bytes
                        .chunks_exact(4)
                        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                        .collect(),
                    Dtype::U8 | Dtype::BOOL => bytes.iter().map(|&b| b as i64).collect(),
                    d => return Err(dtype_error(format!("{d:?}"))),
                }
            }
            EntryData::Int(v) => v.clone(),
            EntryData::Float(_) => return Err(dtype_error("a float type".into())),
        };
        Ok((values, entry.shape.clone()))
    }

    /// A tensor of exactly the shape `want`, on `device`.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        want: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        self.shaped(name, want, device, true)
    }

    fn shaped<B: Backend, const D: usize>(
        &self,
        name: &str,
        want: [usize; D],
        device: &B::Device,
        exact: bool,
    ) -> Result<Tensor<B, D>> {
        let (values, shape) = self.f32(name)?;
        let fits = if exact {
            shape == want
        } else {
            values.len() == want.iter().product::<usize>()
        };
        if !fits {
            return Err(WeightError::Shape {
                path: self.file_of(&self.index[name]).to_path_buf(),
                name: name.to_string(),
                got: shape,
                want: want.to_vec(),
            });
        }
        Ok(Tensor::from_data(TensorData::new(values, want), device))
    }

    /// Loads `{name}.weight` (PyTorch `[out, in]`, transposed into burn's `[in, out]`) and,
    /// when the layer has a bias, `{name}.bias` into a burn `Linear`.
    pub fn load_linear<B: Backend>(&self, name: &str, lin: &mut Linear<B>) -> Result<()> {
        // Lazy accessors: a freshly built model's random weights are never materialised.
        let [d_in, d_out] = lin.weight.lazy_shape().dims::<2>();
        let device = lin.weight.lazy_device();
        let weight = self.tensor::<B, 2>(&format!("{name}.weight"), [d_out, d_in], &device)?;
        lin.weight = Param::from_tensor(weight.transpose());
        if lin.bias.is_some() {
            let bias = self.tensor(&format!("{name}.bias"), [d_out], &device)?;
            lin.bias = Some(Param::from_tensor(bias));
        }
        Ok(())
    }

    /// Loads `{name}.weight` and `{name}.bias` into a burn `LayerNorm` (its width read from
    /// the module).
    pub fn load_layer_norm<B: Backend>(&self, name: &str, ln: &mut LayerNorm<B>) -> Result<()> {
        let [d] = ln.gamma.lazy_shape().dims::<1>();
        let device = ln.gamma.lazy_device();
        ln.gamma = Param::from_tensor(self.tensor(&format!("{name}.weight"), [d], &device)?);
        if ln.beta.is_some() {
            ln.beta = Some(Param::from_tensor(self.tensor(
                &format!("{name}.bias"),
                [d],
                &device,
            )?));
        }
        Ok(())
    }

    /// Loads `{name}.weight` (PyTorch's `[out, in/groups, kh, kw]`, burn's layout too) and,
    /// when the layer has one, `{name}.bias` into a burn `Conv2d`.
    pub fn load_conv2d<B: Backend>(&self, name: &str, conv: &mut Conv2d<B>) -> Result<()> {
        self.load_param(&format!("{name}.weight"), &mut conv.weight)?;
        if let Some(bias) = &mut conv.bias {
            self.load_param(&format!("{name}.bias"), bias)?;
        }
        Ok(())
    }

    /// Loads `{name}.weight` (PyTorch's `[in, out/groups, kh, kw]`, burn's layout too) and,
    /// when the layer has one, `{name}.bias` into a burn `ConvTranspose2d`.
    pub fn load_conv_transpose2d<B: Backend>(
        &self,
        name: &str,
        conv: &mut ConvTranspose2d<B>,
    ) -> Result<()> {
        self.load_param(&format!("{name}.weight"), &mut conv.weight)?;
        if let Some(bias) = &mut conv.bias {
            self.load_param(&format!("{name}.bias"), bias)?;
        }
        Ok(())
    }

    /// Replaces a parameter by the tensor `name`, which must have the parameter's shape.
    pub fn load_param<B: Backend, const D: usize>(
        &self,
        name: &str,
        param: &mut Param<Tensor<B, D>>,
    ) -> Result<()> {
        let shape = param.lazy_shape().dims::<D>();
        let device = param.lazy_device();
        *param = Param::from_tensor(self.tensor(name, shape, &device)?);
        Ok(())
    }

    /// A tensor whose element count equals `want`'s, reshaped to `want` (e.g. a `[1, F]` token
    /// stored where `[F]` is used).
    pub fn tensor_reshaped<B: Backend, const D: usize>(
        &self,
        name: &str,
        want: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        self.shaped(name, want, device, false)
    }
}

/// Reads an HF `config.json` (from a `save_pretrained` directory or the file itself).
pub fn read_config(path: impl AsRef<Path>) -> Result<(PathBuf, serde_json::Value)> {
    let path = path.as_ref();
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = read_json_text(&file)?;
    let value = serde_json::from_str(&text).map_err(|e| WeightError::Format {
        path: file.clone(),
        message: format!("malformed JSON: {e}"),
    })?;
    Ok((file, value))
}

/// A JSON value read into `T`, a mirror struct of a file users bring (`config.json`,
/// `adapter_config.json`): a value of the wrong type is an error naming its field
/// (`rope_parameters.factor: invalid type: string "x", expected f64`).
pub fn mirror<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// `.bin`, `.pt`, `.pth`: PyTorch's `torch.save` files.
fn is_pytorch_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "bin" || e == "pt" || e == "pth")
}

/// The largest JSON side file read (`config.json`, a shard index): far above any real one, far
/// below what a wrong path (a device, a weights file) would make us hold in memory.
pub const MAX_JSON_BYTES: u64 = og_fs::MAX_CONFIG_BYTES;

/// A JSON side file as text, at most [`MAX_JSON_BYTES`].
fn read_json_text(path: &Path) -> Result<String> {
    og_fs::read_text(path, MAX_JSON_BYTES).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn shards_of(index: &Path) -> Result<Vec<PathBuf>> {
    let text = read_json_text(index)?;
    let format = |message: String| WeightError::Format {
        path: index.to_path_buf(),
        message,
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| format("no \"weight_map\" object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| format(format!("weight_map[{tensor}] is not a file name")))?;
        let p = dir.join(file);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Hands the pages of a tensor already converted back to the page cache, so that loading does
/// not hold the checkpoint's mapped bytes and the converted model at once.
fn release_pages(map: &memmap2::Mmap, range: (usize, usize)) {
    #[cfg(unix)]
    // SAFETY: the mapping is a read-only view of a file; dropping its resident pages only makes
    // a later access fault them in again from the unchanged file. No slice into the range is
    // alive here (the caller converted it into an owned vector).
    unsafe {
        let _ = map.unchecked_advise_range(
            memmap2::UncheckedAdvice::DontNeed,
            range.0,
            range.1 - range.0,
        );
    }
    #[cfg(not(unix))]
    let _ = (map, range);
}

fn to_f32(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
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
        _ => return None,
    })
}

/// One tensor to save: PyTorch name, shape, f32 values (row-major).
pub struct SaveTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl SaveTensor {
    /// From a burn tensor (converted to f32).
    pub fn from_tensor<B: Backend, const D: usize>(
        name: impl Into<String>,
        t: Tensor<B, D>,
    ) -> Self {
        let shape = t.dims().to_vec();
        let values = t
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("converted data is f32");
        Self {
            name: name.into(),
            shape,
            values,
        }
    }
}

impl SaveTensor {
    /// A burn `Linear` in PyTorch's layout: `{name}.weight` `[out, in]` and, when the layer has
    /// one, `{name}.bias`.
    pub fn linear<B: Backend>(name: &str, lin: &Linear<B>) -> Vec<Self> {
        let mut v = vec![Self::from_tensor(
            format!("{name}.weight"),
            lin.weight.val().transpose(),
        )];
        if let Some(b) = &lin.bias {
            v.push(Self::from_tensor(format!("{name}.bias"), b.val()));
        }
        v
    }
}

/// Writes `config.json` (pretty JSON) and `model.safetensors` into `dir` (created), each
/// atomically: a `save_pretrained` directory.
pub fn save_pretrained(
    dir: impl AsRef<Path>,
    config: &serde_json::Value,
    tensors: &[SaveTensor],
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|source| WeightError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    save_safetensors(dir.join("model.safetensors"), tensors)?;
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config).expect("json");
    let tmp = dir.join(format!(".config.json.tmp{}", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| WeightError::Io { path, source })
}

/// Writes f32 tensors as one safetensors file (`{"format": "pt"}` metadata), atomically.
pub fn save_safetensors(path: impl AsRef<Path>, tensors: &[SaveTensor]) -> Result<()> {
    let path = path.as_ref();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| WeightError::Format {
                    path: path.to_path_buf(),
                    message: format!("tensor {}: {e}", t.name),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| WeightError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let io = |source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, &data).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    fn weights_fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/weights")
            .join(name)
    }

    /// torch.save's zip and legacy layouts, and a `{"state_dict": …}` wrapper, read the same
    /// values torch holds: a transposed view and an offset slice of one shared storage, f16,
    /// bf16, f64, int64 and bool tensors, a nested dict (`scripts/make_torch_fixtures.py`).
    #[test]
    fn torch_files_read_views_and_dtypes_as_torch_does() {
        let want = Weights::open(weights_fixture("views_expected.safetensors")).unwrap();
        for file in ["views_zip.pt", "views_legacy.pt", "wrapped.pt"] {
            let got = Weights::open_pytorch(weights_fixture(file)).unwrap();
            assert_eq!(got.names(), want.names(), "{file}");
            for name in want.names() {
                if name == "ids" || name == "flags" {
                    assert_eq!(
                        got.i64(name).unwrap(),
                        want.i64(name).unwrap(),
                        "{file}: {name}"
                    );
                } else {
                    assert_eq!(
                        got.f32(name).unwrap(),
                        want.f32(name).unwrap(),
                        "{file}: {name}"
                    );
                }
            }
        }
    }

    /// A storage shorter than its tensor is an error naming the tensor, never zero padding.
    #[test]
    fn a_cut_storage_is_an_error_not_zeros() {
        let bytes = std::fs::read(weights_fixture("views_legacy.pt")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut.pt");
        std::fs::write(&cut, &bytes[..bytes.len() - 8]).unwrap();
        let e = Weights::open_pytorch(&cut).unwrap_err().to_string();
        assert!(
            e.contains("cut.pt") && e.contains("run past the end"),
            "{e}"
        );
    }

    #[test]
    fn an_endless_or_huge_config_is_refused_not_read_into_memory() {
        let e = read_config("/dev/zero").unwrap_err().to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("not a regular file"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"hidden_size": 8}"#).unwrap();
        assert_eq!(read_config(dir.path()).unwrap().1["hidden_size"], 8);
    }

    #[test]
    fn shards_dtypes_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let a = SaveTensor {
            name: "a.weight".into(),
            shape: vec![2, 3],
            values: (0..6).map(|i| i as f32).collect(),
        };
        let b = SaveTensor {
            name: "b.bias".into(),
            shape: vec![3],
            values: vec![1.5, -2.0, 0.25],
        };
        save_safetensors(dir.path().join("model-00001-of-00002.safetensors"), &[a]).unwrap();
        // The second shard in bf16, written by hand.
        let bf: Vec<u8> = b
            .values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let view = TensorView::new(Dtype::BF16, vec![3], &bf).unwrap();
        std::fs::write(
            dir.path().join("model-00002-of-00002.safetensors"),
            safetensors::serialize([("b.bias", view)], None).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                "b.bias": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let w = Weights::open(dir.path()).unwrap();
        assert_eq!(w.names(), vec!["a.weight", "b.bias"]);
        let device = Default::default();
        let t = w.tensor::<B, 2>("a.weight", [2, 3], &device).unwrap();
        assert_eq!(t.into_data().to_vec::<f32>().unwrap()[5], 5.0);
        let (v, _) = w.f32("b.bias").unwrap();
        assert_eq!(v, vec![1.5, -2.0, 0.25]);
        let e = w.tensor::<B, 2>("a.weight", [3, 2], &device).unwrap_err();
        assert!(
            e.to_string()
                .contains("a.weight has shape [2, 3], expected [3, 2]"),
            "{e}"
        );
        let e = w.first_of(&["x.weight", "y.weight"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("missing tensor x.weight (also tried y.weight)"),
            "{e}"
        );
        assert_eq!(w.detect_prefix(&["model.", ""], "a.weight"), Some(""));
        let bad = dir.path().join("bad.safetensors");
        std::fs::write(&bad, b"nope").unwrap();
        assert!(matches!(
            Weights::open(&bad),
            Err(WeightError::Format { .. })
        ));
        let nan = dir.path().join("nan.safetensors");
        save_safetensors(
            &nan,
            &[SaveTensor {
                name: "n".into(),
                shape: vec![2],
                values: vec![0.0, f32::NAN],
            }],
        )
        .unwrap();
        let e = Weights::open(&nan).unwrap().f32("n").unwrap_err();
        assert!(matches!(e, WeightError::NonFinite { index: 1, .. }), "{e}");
    }
}
