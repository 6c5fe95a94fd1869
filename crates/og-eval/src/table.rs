//! Benchmark files read as tables of named columns: CSV/TSV (quoted fields may span lines),
//! JSON lines, JSON arrays of objects and parquet (Hugging Face's dataset layout, images as
//! `{bytes, path}` structs). Every accessor's error names the file, the row and the column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::Value;

use crate::EvalError;

/// One value of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Arc<[u8]>),
    List(Vec<Cell>),
    Struct(Vec<(String, Cell)>),
}

impl Cell {
    /// The value as text: strings as they are, numbers written out; `None` for null and for
    /// pandas' missing-value spellings (`nan`, `NaN`, `None`, empty).
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Str(s) if is_missing(s) => None,
            Cell::Str(s) => Some(s.clone()),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(f) if f.is_nan() => None,
            Cell::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => Some(format!("{}", *f as i64)),
            Cell::Float(f) => Some(f.to_string()),
            Cell::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    fn field(&self, name: &str) -> Option<&Cell> {
        match self {
            Cell::Struct(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// pandas writes a missing value as an empty field, or reads one back as `nan`.
fn is_missing(s: &str) -> bool {
    matches!(s.trim(), "" | "nan" | "NaN" | "None" | "null")
}

/// An encoded image found in a table cell, and the name it goes by (the struct's `path`
/// when the dataset kept one).
pub struct CellImage {
    pub bytes: Arc<[u8]>,
    pub name: Option<String>,
}

/// Rows of named columns from one file.
#[derive(Debug, Clone)]
pub struct Table {
    pub path: PathBuf,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// Reads a file by its extension: `.csv`, `.tsv`, `.jsonl`, `.json`, `.parquet`.
    pub fn read(path: &Path) -> Result<Table, EvalError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Table::read_delimited(path, b','),
            Some("tsv") => Table::read_delimited(path, b'\t'),
            Some("jsonl") => Table::read_jsonl(path),
            Some("json") => Table::read_json_array(path),
            Some("parquet") => Table::read_parquet(path),
            _ => Err(format_err(
                path,
                "unknown table format (expected .csv, .tsv, .jsonl, .json or .parquet)".into(),
            )),
        }
    }

    /// Every `.parquet` file under `dir` (sorted by path, as Hugging Face numbers its shards),
    /// read into one table; the columns must agree.
    pub fn read_parquet_dir(dir: &Path) -> Result<Table, EvalError> {
        let mut files = Vec::new();
        collect_files(dir, "parquet", &mut files)?;
        files.sort();
        let Some(first) = files.first() else {
            return Err(format_err(dir, "no .parquet files in this folder".into()));
        };
        let mut table = Table::read_parquet(first)?;
        for f in &files[1..] {
            let t = Table::read_parquet(f)?;
            if t.columns != table.columns {
                return Err(format_err(
                    f,
                    format!(
                        "columns {:?} differ from {}'s {:?}",
                        t.columns,
                        first.display(),
                        table.columns
                    ),
                ));
            }
            table.rows.extend(t.rows);
        }
        table.path = dir.to_path_buf();
        Ok(table)
    }

    /// CSV or TSV with a header line (RFC 4180 quoting; quoted fields may hold delimiters and
    /// line breaks, as pandas writes them).
    pub fn read_delimited(path: &Path, delimiter: u8) -> Result<Table, EvalError> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .flexible(false)
            .from_path(path)
            .map_err(|e| csv_err(path, e))?;
        let columns: Vec<String> = reader
            .headers()
            .map_err(|e| csv_err(path, e))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').to_string())
            .collect();
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| csv_err(path, e))?;
            rows.push(record.iter().map(|f| Cell::Str(f.to_string())).collect());
        }
        Ok(Table {
            path: path.to_path_buf(),
            columns,
            rows,
        })
    }

    /// One JSON object per line.
    pub fn read_jsonl(path: &Path) -> Result<Table, EvalError> {
        let text = read_text(path)?;
        let mut objects = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format_err(path, format!("line {}: malformed JSON: {e}", n + 1)))?;
            objects.push(v);
        }
        Table::from_objects(path, objects)
    }

    /// A JSON array of objects.
    pub fn read_json_array(path: &Path) -> Result<Table, EvalError> {
        let v: Value = serde_json::from_str(&read_text(path)?)
            .map_err(|e| format_err(path, format!("malformed JSON: {e}")))?;
        match v {
            Value::Array(a) => Table::from_objects(path, a),
            _ => Err(format_err(path, "not a JSON array".into())),
        }
    }

    fn from_objects(path: &Path, objects: Vec<Value>) -> Result<Table, EvalError> {
        let mut columns: Vec<String> = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            let Value::Object(map) = o else {
                return Err(format_err(path, format!("row {i}: not a JSON object")));
            };
            for k in map.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        let rows = objects
            .iter()
            .map(|o| {
                columns
                    .iter()
                    .map(|c| o.get(c).map_or(Cell::Null, json_cell))
                    .collect()
            })
            .collect();
        Ok(Table {
            path: path.to_path_buf(),
            columns,
            rows,
        })
    }

    /// A parquet file through the row API (nested structs and lists kept).
    pub fn read_parquet(path: &Path) -> Result<Table, EvalError> {
        // The parquet crate asserts on some malformed files instead of returning an error; such
        // a file is reported as malformed, quietly (the hook is restored right after).
        static QUIET: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = QUIET.lock().unwrap_or_else(|e| e.into_inner());
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let read = std::panic::catch_unwind(|| Self::read_parquet_unguarded(path));
        std::panic::set_hook(hook);
        read.unwrap_or_else(|payload| {
            let why = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format_err(
                path,
                format!("a malformed parquet file (the parquet reader failed: {why})"),
            ))
        })
    }

    fn read_parquet_unguarded(path: &Path) -> Result<Table, EvalError> {
        let file = std::fs::File::open(path).map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| format_err(path, format!("not a readable parquet file: {e}")))?;
        check_dictionary_pages(&reader, path)?;
        let columns: Vec<String> = reader
            .metadata()
            .file_metadata()
            .schema_descr()
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let iter = reader
            .get_row_iter(None)
            .map_err(|e| format_err(path, format!("cannot read rows: {e}")))?;
        let mut rows = Vec::new();
        for (i, row) in iter.enumerate() {
            let row = row.map_err(|e| format_err(path, format!("row {i}: {e}")))?;
            let mut cells = vec![Cell::Null; columns.len()];
            for (name, field) in row.get_column_iter() {
                if let Some(k) = columns.iter().position(|c| c == name) {
                    cells[k] = parquet_cell(field);
                }
            }
            rows.push(cells);
        }
        Ok(Table {
            path: path.to_path_buf(),
            columns,
            rows,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn has(&self, column: &str) -> bool {
        self.columns.iter().any(|c| c == column)
    }

    /// An error about `row`'s `column` of this file.
    pub fn err(&self, row: usize, column: &str, message: impl std::fmt::Display) -> EvalError {
        format_err(
            &self.path,
            format!("row {row}, column {column:?}: {message}"),
        )
    }

    /// The cell, or an error when the file has no such column.
    pub fn cell(&self, row: usize, column: &str) -> Result<&Cell, EvalError> {
        let k = self
            .columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| {
                format_err(
                    &self.path,
                    format!(
                        "no column {column:?} (columns: {})",
                        self.columns.join(", ")
                    ),
                )
            })?;
        Ok(&self.rows[row][k])
    }

    /// The cell as text; missing or null is an error.
    pub fn text(&self, row: usize, column: &str) -> Result<String, EvalError> {
        self.cell(row, column)?
            .text()
            .ok_or_else(|| self.err(row, column, "empty or missing"))
    }

    /// The cell as text, `None` when the column is absent or the value missing.
    pub fn opt_text(&self, row: usize, column: &str) -> Option<String> {
        self.has(column)
            .then(|| self.cell(row, column).ok().and_then(Cell::text))
            .flatten()
    }

    /// A list of strings (a parquet/JSON list, or a JSON/Python list written as text).
    pub fn text_list(&self, row: usize, column: &str) -> Result<Vec<String>, EvalError> {
        match self.cell(row, column)? {
            Cell::List(items) => items
                .iter()
                .map(|c| {
                    c.text()
                        .ok_or_else(|| self.err(row, column, "a missing list item"))
                })
                .collect(),
            Cell::Str(s) => parse_text_list(s)
                .ok_or_else(|| self.err(row, column, format!("{s:?} is not a list of strings"))),
            other => Err(self.err(row, column, format!("{other:?} is not a list"))),
        }
    }

    /// An image cell: a `{bytes, path}` struct (Hugging Face `Image` feature), raw bytes, or
    /// base64 text (MMBench's TSV).
    pub fn image(&self, row: usize, column: &str) -> Result<CellImage, EvalError> {
        let cell = self.cell(row, column)?;
        let bad = |m: &str| self.err(row, column, m);
        match cell {
            Cell::Bytes(b) => Ok(CellImage {
                bytes: b.clone(),
                name: None,
            }),
            Cell::Struct(_) => match cell.field("bytes") {
                Some(Cell::Bytes(b)) => Ok(CellImage {
                    bytes: b.clone(),
                    name: cell.field("path").and_then(Cell::text),
                }),
                _ => Err(bad("an image struct without bytes")),
            },
            Cell::Str(s) => base64::engine::general_purpose::STANDARD
                .decode(s.trim().as_bytes())
                .map(|b| CellImage {
                    bytes: b.into(),
                    name: None,
                })
                .map_err(|e| bad(&format!("not base64 image data: {e}"))),
            _ => Err(bad("not an image (bytes, {bytes, path} or base64 text)")),
        }
    }
}

/// Dictionary entries one column chunk may hold: far above any benchmark table, far below
/// what would exhaust memory.
const MAX_DICTIONARY_VALUES: usize = 1 << 24;

/// Refuses dictionary pages that claim more values than their bytes can hold (or more than
/// [`MAX_DICTIONARY_VALUES`]) before the row reader sizes its dictionary by the claim: the
/// parquet crate allocates `num_values` entries up front, so a forged count aborts the
/// process on allocation failure instead of failing to decode. Only dictionary pages are
/// read (data pages are skipped by their headers).
fn check_dictionary_pages(
    reader: &SerializedFileReader<std::fs::File>,
    path: &Path,
) -> Result<(), EvalError> {
    use parquet::basic::Type as Physical;
    use parquet::column::page::Page;
    let bad = |e: parquet::errors::ParquetError| {
        format_err(path, format!("a malformed parquet file: {e}"))
    };
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(bad)?;
        for c in 0..schema.num_columns() {
            let column = schema.column(c);
            // The fewest bits one plain-encoded value of this type takes.
            let min_bits = match column.physical_type() {
                Physical::BOOLEAN => 1,
                Physical::INT32 | Physical::FLOAT | Physical::BYTE_ARRAY => 32,
                Physical::INT64 | Physical::DOUBLE => 64,
                Physical::INT96 => 96,
                Physical::FIXED_LEN_BYTE_ARRAY => 8 * column.type_length().max(1) as usize,
            };
            let mut pages = group.get_column_page_reader(c).map_err(bad)?;
            while let Some(meta) = pages.peek_next_page().map_err(bad)? {
                if !meta.is_dict {
                    pages.skip_next_page().map_err(bad)?;
                    continue;
                }
                if let Some(Page::DictionaryPage {
                    buf, num_values, ..
                }) = pages.get_next_page().map_err(bad)?
                {
                    let n = num_values as usize;
                    if n > MAX_DICTIONARY_VALUES || n.saturating_mul(min_bits) > buf.len() * 8 {
                        return Err(format_err(
                            path,
                            format!(
                                "a malformed parquet file: column {:?} (row group {g}) has a \
                                 dictionary page claiming {n} values in {} bytes",
                                column.path().string(),
                                buf.len()
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn json_cell(v: &Value) -> Cell {
    match v {
        Value::Null => Cell::Null,
        Value::Bool(b) => Cell::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(Cell::Int)
            .unwrap_or_else(|| Cell::Float(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => Cell::Str(s.clone()),
        Value::Array(a) => Cell::List(a.iter().map(json_cell).collect()),
        Value::Object(m) => {
            Cell::Struct(m.iter().map(|(k, v)| (k.clone(), json_cell(v))).collect())
        }
    }
}

fn parquet_row(row: &Row) -> Cell {
    Cell::Struct(
        row.get_column_iter()
            .map(|(k, v)| (k.clone(), parquet_cell(v)))
            .collect(),
    )
}

fn parquet_cell(f: &Field) -> Cell {
    match f {
        Field::Null => Cell::Null,
        Field::Bool(b) => Cell::Bool(*b),
        Field::Byte(v) => Cell::Int(*v as i64),
        Field::Short(v) => Cell::Int(*v as i64),
        Field::Int(v) => Cell::Int(*v as i64),
        Field::Long(v) => Cell::Int(*v),
        Field::UByte(v) => Cell::Int(*v as i64),
        Field::UShort(v) => Cell::Int(*v as i64),
        Field::UInt(v) => Cell::Int(*v as i64),
        Field::ULong(v) => Cell::Int(*v as i64),
        Field::Float(v) => Cell::Float(*v as f64),
        Field::Double(v) => Cell::Float(*v),
        Field::Str(s) => Cell::Str(s.clone()),
        Field::Bytes(b) => Cell::Bytes(b.data().into()),
        Field::Group(row) => parquet_row(row),
        Field::ListInternal(list) => Cell::List(list.elements().iter().map(parquet_cell).collect()),
        other => Cell::Str(other.to_string()),
    }
}

/// `["a", "b"]` (JSON) or `['a', 'b']` (Python's repr, as pandas writes list columns to CSV).
fn parse_text_list(s: &str) -> Option<Vec<String>> {
    if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(s) {
        return a.iter().map(|v| v.as_str().map(str::to_string)).collect();
    }
    let inner = s.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(quote) = chars.next() else { break };
        if quote != '\'' && quote != '"' {
            return None;
        }
        let mut item = String::new();
        loop {
            match chars.next()? {
                '\\' => item.push(chars.next()?),
                c if c == quote => break,
                c => item.push(c),
            }
        }
        out.push(item);
    }
    Some(out)
}

fn collect_files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) -> Result<(), EvalError> {
    let entries = std::fs::read_dir(dir).map_err(|source| EvalError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| EvalError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.is_dir() {
            collect_files(&path, ext, out)?;
        } else if path.extension().and_then(|e| e.to_str()) == Some(ext) {
            out.push(path);
        }
    }
    Ok(())
}

pub(crate) fn read_text(path: &Path) -> Result<String, EvalError> {
    og_fs::read_text(path, og_fs::MAX_DATA_BYTES).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn format_err(path: &Path, message: String) -> EvalError {
    EvalError::Format {
        path: path.to_path_buf(),
        message,
    }
}

fn csv_err(path: &Path, e: csv::Error) -> EvalError {
    let message = match e.position() {
        Some(p) => format!("line {}: {e}", p.line()),
        None => e.to_string(),
    };
    match e.into_kind() {
        csv::ErrorKind::Io(source) => EvalError::Io {
            path: path.to_path_buf(),
            source,
        },
        _ => format_err(path, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimited_files_keep_quoted_tabs_and_line_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.tsv");
        std::fs::write(
            &p,
            "index\tquestion\thint\n7\t\"two\nlines\tand a tab\"\tnan\n",
        )
        .unwrap();
        let t = Table::read(&p).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.text(0, "question").unwrap(), "two\nlines\tand a tab");
        assert_eq!(t.opt_text(0, "hint"), None);
        assert_eq!(t.opt_text(0, "absent"), None);
        let e = t.text(0, "hint").unwrap_err().to_string();
        assert!(
            e.contains("t.tsv") && e.contains("row 0") && e.contains("hint"),
            "{e}"
        );
        let e = t.text(0, "answer").unwrap_err().to_string();
        assert!(e.contains("no column \"answer\""), "{e}");
        std::fs::write(&p, "a\tb\n1\t2\t3\n").unwrap();
        let e = Table::read(&p).unwrap_err().to_string();
        assert!(e.contains("t.tsv") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn lists_parse_from_json_and_python_text() {
        assert_eq!(
            parse_text_list(r#"["a", "b c"]"#).unwrap(),
            vec!["a".to_string(), "b c".into()]
        );
        assert_eq!(
            parse_text_list(r"['it\'s', 'x, y']").unwrap(),
            vec!["it's".to_string(), "x, y".into()]
        );
        assert_eq!(parse_text_list("[1, 2]"), None);
        assert_eq!(parse_text_list("not a list"), None);
    }

    #[test]
    fn json_lines_and_base64_images() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(
            &p,
            "{\"idx\": 3, \"choices\": [\"x\", \"y\"], \"img\": \"iVBO\"}\n\n{\"idx\": 4}\n",
        )
        .unwrap();
        let t = Table::read(&p).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.text(0, "idx").unwrap(), "3");
        assert_eq!(t.text_list(0, "choices").unwrap(), vec!["x", "y"]);
        assert_eq!(&*t.image(0, "img").unwrap().bytes, &[0x89, b'P', b'N']);
        assert!(t.text(1, "choices").is_err());
        std::fs::write(&p, "{\"idx\": 3}\n{oops\n").unwrap();
        let e = Table::read(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
