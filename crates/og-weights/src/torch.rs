//! `torch.save` files read as data: the zip layout (`<name>/data.pkl` + `<name>/data/<key>`,
//! PyTorch ≥ 1.6) and the legacy layout (five pickles, then every storage as `u64` element
//! count + raw little-endian bytes). The pickle goes through [`crate::pickle`]'s bounded
//! machine; every tensor is a view (offset, size, stride) that must lie inside its storage,
//! and is gathered element by element, so non-contiguous views read right and a short
//! storage is an error, never zero padding.

use std::collections::HashMap;
use std::io::Read;

use crate::pickle::{self, Limits, TensorRef, Value};

type R<T> = std::result::Result<T, String>;

/// The largest pickle (the `data.pkl` part) read, in bytes.
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// The most elements a view may hold beyond its storage's size (stride-0 expansions).
const MAX_EXPANDED: u64 = 1 << 24;

/// A tensor's values as read.
pub(crate) enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

/// How a storage class lays out its elements.
#[derive(Clone, Copy)]
enum Kind {
    F32,
    F64,
    F16,
    Bf16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Kind {
    fn of(name: &str) -> R<Self> {
        Ok(match name {
            "FloatStorage" => Kind::F32,
            "DoubleStorage" => Kind::F64,
            "HalfStorage" => Kind::F16,
            "BFloat16Storage" => Kind::Bf16,
            "LongStorage" => Kind::I64,
            "IntStorage" => Kind::I32,
            "ShortStorage" => Kind::I16,
            "CharStorage" => Kind::I8,
            "ByteStorage" => Kind::U8,
            "BoolStorage" => Kind::Bool,
            other => return Err(format!("unsupported storage type {other}")),
        })
    }

    fn size(self) -> usize {
        match self {
            Kind::F64 | Kind::I64 => 8,
            Kind::F32 | Kind::I32 => 4,
            Kind::F16 | Kind::Bf16 | Kind::I16 => 2,
            Kind::I8 | Kind::U8 | Kind::Bool => 1,
        }
    }
}

/// Every tensor of a `torch.save`d state dict, by dotted name (a top-level `state_dict` entry
/// is looked through), with its shape and values.
pub(crate) fn read_state_dict(bytes: &[u8]) -> R<Vec<(String, Vec<usize>, Values)>> {
    let (top, storages) = if bytes.starts_with(b"PK") {
        read_zip(bytes)?
    } else {
        read_legacy(bytes)?
    };
    let mut views = HashMap::new();
    let dict = match &top {
        Value::Dict(d) => d
            .items
            .iter()
            .rev()
            .find(|(k, v)| {
                matches!(k, Value::Str(s) if &**s == "state_dict") && matches!(v, Value::Dict(_))
            })
            .map_or(&top, |(_, v)| v),
        other => {
            return Err(format!(
                "the file holds {} at the top, not a state dict",
                describe(other)
            ));
        }
    };
    collect(dict, "", &mut views);
    let mut names: Vec<String> = views.keys().cloned().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let view = &views[&name];
            let data = storages
                .get(&view.storage.key)
                .ok_or_else(|| format!("tensor {name}: storage {} is missing", view.storage.key))?;
            let values = gather(data, view).map_err(|e| format!("tensor {name}: {e}"))?;
            let shape = view.shape.iter().map(|&d| d as usize).collect();
            Ok((name, shape, values))
        })
        .collect()
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Tensor(_) => "a bare tensor",
        Value::List(_) | Value::Tuple(_) => "a sequence",
        Value::Opaque(_) => "an object",
        _ => "a plain value",
    }
}

/// The tensors in a dict and the dicts inside it (depth is bounded by the pickle limits).
fn collect(v: &Value, prefix: &str, out: &mut HashMap<String, TensorRef>) {
    let Value::Dict(d) = v else { return };
    for (k, v) in &d.items {
        let key = match k {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => continue,
        };
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match v {
            Value::Tensor(t) => {
                out.insert(name, (**t).clone());
            }
            Value::Dict(_) => collect(v, &name, out),
            _ => {}
        }
    }
}

/// The values a view selects from its storage's bytes.
fn gather(data: &[u8], view: &TensorRef) -> R<Values> {
    let kind = Kind::of(&view.storage.kind)?;
    let have = (data.len() / kind.size()) as u64;
    if let Some(claimed) = view.storage.numel
        && claimed > have
    {
        return Err(format!(
            "storage {} claims {claimed} elements but holds {have}",
            view.storage.key
        ));
    }
    let numel = view
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or("a shape whose element count overflows")?;
    let mut last = view.offset;
    for (&d, &s) in view.shape.iter().zip(&view.stride) {
        if d > 0 {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or("strides that overflow")?;
        }
    }
    if numel > 0 && last >= have {
        return Err(format!(
            "shape {:?} stride {:?} at offset {} reaches element {last} of a storage of {have}",
            view.shape, view.stride, view.offset
        ));
    }
    if numel > have.max(MAX_EXPANDED) {
        return Err(format!(
            "{numel} elements from a storage of {have} (at most {MAX_EXPANDED} by expansion)"
        ));
    }
    let mut index = Vec::with_capacity(numel as usize);
    if numel > 0 {
        offsets(&view.shape, &view.stride, view.offset, &mut index);
    }
    let n = kind.size();
    let at = |i: u64| &data[i as usize * n..(i as usize + 1) * n];
    let f = |conv: fn(&[u8]) -> f32| Values::Float(index.iter().map(|&i| conv(at(i))).collect());
    let g = |conv: fn(&[u8]) -> i64| Values::Int(index.iter().map(|&i| conv(at(i))).collect());
    Ok(match kind {
        Kind::F32 => f(|b| f32::from_le_bytes(b.try_into().expect("4"))),
        Kind::F64 => f(|b| f64::from_le_bytes(b.try_into().expect("8")) as f32),
        Kind::F16 => f(|b| half::f16::from_le_bytes(b.try_into().expect("2")).to_f32()),
        Kind::Bf16 => f(|b| half::bf16::from_le_bytes(b.try_into().expect("2")).to_f32()),
        Kind::I64 => g(|b| i64::from_le_bytes(b.try_into().expect("8"))),
        Kind::I32 => g(|b| i32::from_le_bytes(b.try_into().expect("4")).into()),
        Kind::I16 => g(|b| i16::from_le_bytes(b.try_into().expect("2")).into()),
        Kind::I8 => g(|b| (b[0] as i8).into()),
        Kind::U8 => g(|b| b[0].into()),
        Kind::Bool => g(|b| i64::from(b[0] != 0)),
    })
}

/// Storage offsets of every element of a view, in row-major order.
fn offsets(shape: &[u64], stride: &[u64], base: u64, out: &mut Vec<u64>) {
    match (shape.split_first(), stride.split_first()) {
        (Some((&d, shape)), Some((&s, stride))) => {
            for i in 0..d {
                offsets(shape, stride, base + i * s, out);
            }
        }
        _ => out.push(base),
    }
}

fn read_zip(bytes: &[u8]) -> R<(Value, HashMap<String, Vec<u8>>)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    let pkl = zip
        .file_names()
        .filter(|n| n.ends_with("data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_string)
        .ok_or("a zip archive without data.pkl (not a torch.save file)")?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let entry = |zip: &mut zip::ZipArchive<_>, name: &str, cap: u64| -> R<Vec<u8>> {
        let file = zip
            .by_name(name)
            .map_err(|e| format!("{name} in the archive: {e}"))?;
        let mut out = Vec::new();
        file.take(cap + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("{name} in the archive: {e}"))?;
        if out.len() as u64 > cap {
            return Err(format!("{name} is over {cap} bytes"));
        }
        Ok(out)
    };
    let pickled = entry(&mut zip, &pkl, MAX_PICKLE_BYTES)?;
    let (top, _) = pickle::read(&pickled, Limits::default()).map_err(|e| format!("{pkl}: {e}"))?;
    let mut kinds = HashMap::new();
    storages_in(&top, &mut kinds);
    let mut storages = HashMap::new();
    for key in kinds.into_keys() {
        let data = entry(&mut zip, &format!("{prefix}data/{key}"), bytes.len() as u64)?;
        storages.insert(key, data);
    }
    Ok((top, storages))
}

/// Every storage the value refers to (through tensors or bare), key → type name. The walk
/// visits at most the pickle's bounded node count.
fn storages_in(v: &Value, out: &mut HashMap<String, String>) {
    match v {
        Value::Tensor(t) => {
            out.insert(t.storage.key.clone(), t.storage.kind.clone());
        }
        Value::Storage(s) => {
            out.insert(s.key.clone(), s.kind.clone());
        }
        Value::Tuple(n) | Value::List(n) => n.items.iter().for_each(|x| storages_in(x, out)),
        Value::Dict(n) => n.items.iter().for_each(|(k, x)| {
            storages_in(k, out);
            storages_in(x, out);
        }),
        _ => {}
    }
}

/// Legacy `torch.save(..., _use_new_zipfile_serialization=False)`.
fn read_legacy(bytes: &[u8]) -> R<(Value, HashMap<String, Vec<u8>>)> {
    const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    let limits = Limits::default();
    let mut at = 0;
    let mut next = |what: &str| -> R<Value> {
        let (v, used) = pickle::read(&bytes[at..], limits)
            .map_err(|e| format!("the {what} pickle at byte {at}: {e}"))?;
        at += used;
        Ok(v)
    };
    match next("magic number") {
        Ok(Value::Bytes(b)) if *b == MAGIC => {}
        _ => return Err("neither a zip archive nor a legacy torch.save file".into()),
    }
    next("protocol version")?;
    next("system information")?;
    let top = next("state dict")?;
    let keys = next("storage keys")?;
    let keys: Vec<String> = keys
        .items()
        .ok_or("the storage keys are not a list")?
        .iter()
        .map(|k| match k {
            Value::Str(s) => Ok(s.to_string()),
            _ => Err("a storage key that is not a string".to_string()),
        })
        .collect::<R<_>>()?;
    let mut kinds = HashMap::new();
    storages_in(&top, &mut kinds);
    let mut storages = HashMap::new();
    for key in keys {
        let numel = bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
            .ok_or_else(|| format!("storage {key}: the file ends before its size"))?;
        at += 8;
        let kind = kinds
            .get(&key)
            .ok_or_else(|| format!("storage {key} is listed but no tensor says its type"))?;
        let size = Kind::of(kind)?.size();
        let len = numel
            .checked_mul(size as u64)
            .filter(|&n| n <= (bytes.len() - at) as u64)
            .ok_or_else(|| {
                format!("storage {key}: {numel} elements run past the end of the file")
            })?;
        storages.insert(key, bytes[at..at + len as usize].to_vec());
        at += len as usize;
    }
    Ok((top, storages))
}
