//! TensorBoard event files: scalars that `tensorboard --logdir`, and the trackers that import
//! its files, read.
//!
//! A file `events.out.tfevents.<unix seconds>.<host>.<pid>` is a TFRecord stream: per record a
//! little-endian u64 length, its masked CRC-32C, the bytes, their masked CRC-32C. Each record
//! is an `Event` protocol buffer (`tensorflow/core/util/event.proto`): the first carries
//! `file_version = "brain.Event:2"`, a resumed run's next a `SessionLog` START at its first
//! step (TensorBoard then drops the steps the run recomputes from earlier files), the others
//! a `Summary` of `simple_value` scalars. The encoder is written here
//! from those definitions (a few fields, no protobuf dependency); [`read_scalars`] decodes
//! what it writes.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes scalars to one new event file in a folder.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<std::fs::File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if needed), starting with the file-version event.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or_else(|| "localhost".into());
        // A run resumed within the same second by the same process gets the next free
        // suffix: names sort in the order the files were written, as TensorBoard reads them.
        let stem = format!(
            "events.out.tfevents.{}.{host}.{}",
            now.as_secs(),
            std::process::id()
        );
        let mut k = 0;
        let (path, file) = loop {
            let path = match k {
                0 => dir.join(&stem),
                k => dir.join(format!("{stem}.{k}")),
            };
            match std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && k < 1000 => k += 1,
                Err(e) => return Err(e),
            }
        };
        let mut w = Self {
            path,
            file: BufWriter::new(file),
        };
        let mut event = Vec::new();
        put_double(&mut event, 1, now.as_secs_f64());
        put_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        w.file.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event at `step` holding every `(tag, value)` of `scalars`; written through (a
    /// reader sees it at once).
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> std::io::Result<()> {
        let wall = wall_time();
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            put_varint(&mut v, 2 << 3 | 5);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &v);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall);
        put_varint(&mut event, 2 << 3);
        put_varint(&mut event, step);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)?;
        self.file.flush()
    }

    /// Marks a restart at `step` (a `SessionLog` START event): TensorBoard then drops what
    /// earlier files hold at `step` and after, the steps a resumed run recomputes.
    pub fn session_start(&mut self, step: u64) -> std::io::Result<()> {
        let mut log = Vec::new();
        put_varint(&mut log, 1 << 3);
        put_varint(&mut log, 1); // SessionLog.START
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_varint(&mut event, 2 << 3);
        put_varint(&mut event, step);
        put_bytes(&mut event, 7, &log);
        self.record(&event)?;
        self.file.flush()
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.file.write_all(&len)?;
        self.file.write_all(&masked_crc(&len).to_le_bytes())?;
        self.file.write_all(data)?;
        self.file.write_all(&masked_crc(data).to_le_bytes())
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One scalar read back from an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub step: u64,
    pub tag: String,
    pub value: f32,
}

/// The scalars of an event file, in file order; `Err` names the first record whose length,
/// checksum or encoding is wrong.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    let mut n = 0;
    while !rest.is_empty() {
        let bad = |what: &str| format!("record {n}: {what}");
        if rest.len() < 12 {
            return Err(bad("truncated header"));
        }
        let (len_bytes, after) = rest.split_at(8);
        let crc = u32::from_le_bytes(after[..4].try_into().expect("4 bytes"));
        if crc != masked_crc(len_bytes) {
            return Err(bad("length checksum"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let after = &after[4..];
        if after.len() < len.saturating_add(4) {
            return Err(bad("truncated data"));
        }
        let (data, after) = after.split_at(len);
        let crc = u32::from_le_bytes(after[..4].try_into().expect("4 bytes"));
        if crc != masked_crc(data) {
            return Err(bad("data checksum"));
        }
        decode_event(data, &mut out).ok_or_else(|| bad("not an Event"))?;
        rest = &after[4..];
        n += 1;
    }
    Ok(out)
}

/// Appends the scalars of one `Event` to `out`.
fn decode_event(data: &[u8], out: &mut Vec<Scalar>) -> Option<()> {
    let mut step = 0;
    let mut summaries = Vec::new();
    for (field, value) in Fields(data) {
        match (field?, value) {
            (2, Value::Varint(s)) => step = s,
            (5, Value::Bytes(b)) => summaries.push(b),
            _ => {}
        }
    }
    for summary in summaries {
        for (field, value) in Fields(summary) {
            let (1, Value::Bytes(v)) = (field?, value) else {
                continue;
            };
            let (mut tag, mut value) = (None, None);
            for (field, x) in Fields(v) {
                match (field?, x) {
                    (1, Value::Bytes(t)) => tag = Some(String::from_utf8(t.to_vec()).ok()?),
                    (2, Value::Fixed32(f)) => value = Some(f32::from_bits(f)),
                    _ => {}
                }
            }
            if let (Some(tag), Some(value)) = (tag, value) {
                out.push(Scalar { step, tag, value });
            }
        }
    }
    Some(())
}

enum Value<'a> {
    Varint(u64),
    /// A 64-bit field (the wall time): skipped.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The fields of a protocol-buffer message; `None` for a malformed one (and then stops).
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = (Option<u32>, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let parsed = (|| {
            let key = take_varint(&mut self.0)?;
            let value = match key & 7 {
                0 => Value::Varint(take_varint(&mut self.0)?),
                1 => {
                    take(&mut self.0, 8)?;
                    Value::Fixed64
                }
                2 => {
                    let n = usize::try_from(take_varint(&mut self.0)?).ok()?;
                    Value::Bytes(take(&mut self.0, n)?)
                }
                5 => Value::Fixed32(u32::from_le_bytes(take(&mut self.0, 4)?.try_into().ok()?)),
                _ => return None,
            };
            Some((u32::try_from(key >> 3).ok()?, value))
        })();
        match parsed {
            Some((field, value)) => Some((Some(field), value)),
            None => {
                self.0 = &[];
                Some((None, Value::Fixed64))
            }
        }
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, tail) = data.split_at(n);
    *data = tail;
    Some(head)
}

fn take_varint(data: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *take(data, 1)?.first()?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_double(out: &mut Vec<u8>, field: u64, v: f64) {
    put_varint(out, field << 3 | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

/// TFRecord's checksum: CRC-32C (Castagnoli), rotated right by 15 bits plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0x82f6_3b78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |crc, &b| {
        table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value (RFC 3720's "123456789") and TFRecord's masking of it.
    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(
            masked_crc(b"123456789"),
            0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }

    /// Scalars written are read back (tags, steps, f32 values); a flipped byte is a checksum
    /// error naming its record.
    #[test]
    fn scalars_round_trip_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("train/loss", 2.5), ("train/lr/lora", 1e-4)])
            .unwrap();
        w.session_start(300).unwrap();
        w.scalars(300, &[("train/loss", -0.125)]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let got = read_scalars(&path).unwrap();
        let want = [
            (1, "train/loss", 2.5f32),
            (1, "train/lr/lora", 1e-4),
            (300, "train/loss", -0.125),
        ];
        assert_eq!(got.len(), want.len());
        for (g, (step, tag, value)) in got.iter().zip(want) {
            assert_eq!((g.step, g.tag.as_str(), g.value), (step, tag, value));
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = read_scalars(&path).unwrap_err();
        assert!(e.contains("record 3") && e.contains("checksum"), "{e}");
    }
}
