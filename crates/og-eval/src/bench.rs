//! Benchmark files, read as multiple-choice items.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::score::EvalError;

/// One multiple-choice question about one image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// Benchmark name (`vg_relation`, `vg_attribution`, `coco_order`, `mmvp`).
    pub bench: String,
    /// Image path relative to the benchmark's image root.
    pub image: PathBuf,
    /// The question asked with the image (captions benchmarks: "describe the image.").
    pub prompt: String,
    pub options: Vec<String>,
    /// Index of the right option.
    pub answer: usize,
    /// `seen` / `heldout` where the file says.
    pub split: Option<String>,
    /// MMVP: items of one pair share this number.
    pub pair: Option<usize>,
}

/// The prompt under which captions are ranked.
pub const CAPTION_PROMPT: &str = "describe the image.";

fn read_json(path: &Path) -> Result<Vec<Value>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| EvalError::Format {
        path: path.to_path_buf(),
        message: format!("malformed JSON: {e}"),
    })?;
    match v {
        Value::Array(a) => Ok(a),
        _ => Err(EvalError::Format {
            path: path.to_path_buf(),
            message: "not a JSON array".into(),
        }),
    }
}

fn field<'a>(path: &Path, i: usize, v: &'a Value, key: &str) -> Result<&'a str, EvalError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| EvalError::Format {
            path: path.to_path_buf(),
            message: format!("item {i}: missing string field {key:?}"),
        })
}

fn split_of(v: &Value) -> Option<String> {
    v.get("split").and_then(Value::as_str).map(str::to_string)
}

/// Both ARO true/false-caption files (`image_path`, `true_caption`, `false_caption`).
fn read_true_false(path: &Path, bench: &str) -> Result<Vec<Item>, EvalError> {
    read_json(path)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            Ok(Item {
                bench: bench.into(),
                image: PathBuf::from(field(path, i, v, "image_path")?),
                prompt: CAPTION_PROMPT.into(),
                options: vec![
                    field(path, i, v, "true_caption")?.to_string(),
                    field(path, i, v, "false_caption")?.to_string(),
                ],
                answer: 0,
                split: split_of(v),
                pair: None,
            })
        })
        .collect()
}

/// ARO VG-Relation (`relation_name` is kept only in the file).
pub fn read_aro_relation(path: impl AsRef<Path>) -> Result<Vec<Item>, EvalError> {
    read_true_false(path.as_ref(), "vg_relation")
}

/// ARO VG-Attribution.
pub fn read_aro_attribution(path: impl AsRef<Path>) -> Result<Vec<Item>, EvalError> {
    read_true_false(path.as_ref(), "vg_attribution")
}

/// ARO COCO/Flickr-Order: `caption_options[0]` is right.
pub fn read_aro_order(path: impl AsRef<Path>) -> Result<Vec<Item>, EvalError> {
    let path = path.as_ref();
    read_json(path)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let options: Vec<String> = v
                .get("caption_options")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if options.len() < 2 {
                return Err(EvalError::Format {
                    path: path.to_path_buf(),
                    message: format!("item {i}: caption_options needs at least 2 strings"),
                });
            }
            Ok(Item {
                bench: "coco_order".into(),
                image: PathBuf::from(field(path, i, v, "image_path")?),
                prompt: CAPTION_PROMPT.into(),
                options,
                answer: 0,
                split: split_of(v),
                pair: None,
            })
        })
        .collect()
}

/// Splits one CSV line with double-quoted fields.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// MMVP: `dir/Questions.csv` (`Index,Question,Options,Correct Answer`, options written
/// `(a) x (b) y`), images `dir/<Index>.png` (or .jpg); consecutive indices 2k−1, 2k form pair k.
pub fn read_mmvp(dir: impl AsRef<Path>) -> Result<Vec<Item>, EvalError> {
    let dir = dir.as_ref();
    let path = dir.join("Questions.csv");
    let text = std::fs::read_to_string(&path).map_err(|source| EvalError::Io {
        path: path.clone(),
        source,
    })?;
    let bad = |line: usize, m: String| EvalError::Format {
        path: path.clone(),
        message: format!("line {line}: {m}"),
    };
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f = csv_fields(line);
        if f.len() != 4 {
            return Err(bad(n + 1, format!("{} fields, expected 4", f.len())));
        }
        let index: usize = f[0]
            .trim()
            .parse()
            .map_err(|_| bad(n + 1, format!("Index {:?} is not a number", f[0])))?;
        let opts = f[2].trim();
        let (a, b) = opts
            .strip_prefix("(a)")
            .and_then(|r| r.split_once("(b)"))
            .ok_or_else(|| bad(n + 1, format!("Options {opts:?} are not \"(a) … (b) …\"")))?;
        let answer = match f[3].trim() {
            "(a)" | "a" => 0,
            "(b)" | "b" => 1,
            other => {
                return Err(bad(
                    n + 1,
                    format!("Correct Answer {other:?} is not (a) or (b)"),
                ));
            }
        };
        let image = ["png", "jpg"]
            .iter()
            .map(|e| PathBuf::from(format!("{index}.{e}")))
            .find(|p| dir.join(p).is_file())
            .unwrap_or_else(|| PathBuf::from(format!("{index}.png")));
        items.push(Item {
            bench: "mmvp".into(),
            image,
            prompt: f[1].trim().to_string(),
            options: vec![a.trim().to_string(), b.trim().to_string()],
            answer,
            split: None,
            pair: Some(index.div_ceil(2)),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_errors_name_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path().join("rel.json");
        std::fs::write(
            &rel,
            r#"[{"image_path": "a.png", "true_caption": "x is left of y",
            "false_caption": "y is left of x", "relation_name": "left of", "split": "heldout"}]"#,
        )
        .unwrap();
        let items = read_aro_relation(&rel).unwrap();
        assert_eq!(items[0].options[1], "y is left of x");
        assert_eq!(items[0].split.as_deref(), Some("heldout"));
        std::fs::write(&rel, r#"[{"image_path": "a.png"}]"#).unwrap();
        let e = read_aro_relation(&rel).unwrap_err().to_string();
        assert!(
            e.contains("item 0") && e.contains("true_caption") && e.contains("rel.json"),
            "{e}"
        );
        let order = dir.path().join("order.json");
        std::fs::write(
            &order,
            r#"[{"image_path": "a.png", "caption_options": ["a b", "b a", "a a"]}]"#,
        )
        .unwrap();
        assert_eq!(read_aro_order(&order).unwrap()[0].options.len(), 3);
        std::fs::write(
            dir.path().join("Questions.csv"),
            "Index,Question,Options,Correct Answer\n1,\"is it left, or right?\",\"(a) left (b) right\",(b)\n2,q,(a) x (b) y,(a)\n",
        )
        .unwrap();
        let m = read_mmvp(dir.path()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].prompt, "is it left, or right?");
        assert_eq!((m[0].answer, m[1].answer), (1, 0));
        assert_eq!(m[0].pair, m[1].pair);
        std::fs::write(dir.path().join("Questions.csv"), "h\n1,q,(a) x (b) y,(c)\n").unwrap();
        assert!(
            read_mmvp(dir.path())
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
    }
}
