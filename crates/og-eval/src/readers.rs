//! Readers for every benchmark family, from the files users download:
//!
//! | benchmark | `--data` | layout |
//! |---|---|---|
//! | `aro-vgr`, `aro-vga` | ARO's `visual_genome_{relation,attribution}.json` (images under `--images`, default `<json dir>/images`), or the Hugging Face parquet (`image`, `true_caption`, `false_caption`) | ARO's JSON crops each image to `bbox_x/y/w/h` |
//! | `aro-coco-order`, `aro-flickr-order` | the Hugging Face parquet (`images`/`image`, `correct_caption`, `hard_text_1..4`) or a JSON of `caption_options` (first right) | |
//! | `conme` | a folder of CSVs or one CSV (`image`, `question`, `answer`) as the paper's harness reads them; images under `--images`, default the CSV folder's parent | options are parsed from the question's `A.`/`(A)` lines |
//! | `mmvp` | the folder with `Questions.csv` and `MMVP Images/<Index>.jpg` | |
//! | `cvbench` | `test.jsonl` (+ `img/`) or the parquet files | |
//! | `ai2d` | lmms-lab's parquet (`question`, `options`, `answer` index, `image`) | |
//! | `mme` | lmms-lab's parquet (`question_id`, `image`, `question`, `answer`, `category`) | |
//! | `mmstar` | the parquet (`index`, `question` with `Options: A: …`, `answer`, `category`) | |
//! | `mmbench` | OpenCompass's TSV (base64 `image`, `hint`, `A`–`E`) or lmms-lab's parquet | |
//! | `mcq` | JSONL (or JSON/CSV/parquet): `image` (path relative to `--images`, default the file's folder), `question`, `options` (list), `answer` (0-based index or letter); optional `id`, `category`, `hint`, `split` | any multiple-choice set |
//!
//! A parquet `--data` may be one file or a folder of shards; a folder holding a release's file
//! (ARO's JSON, `test.jsonl`, the TSV, CONME's `data/`) stands for that file.

use std::path::{Path, PathBuf};

use crate::EvalError;
use crate::item::{Benchmark, ImageSource, Item, letter_index};
use crate::table::{Table, format_err};

/// The prompt under which ARO's captions are ranked by likelihood.
pub const CAPTION_PROMPT: &str = "describe the image.";

/// Each row of a file read as an item, or the reason it is malformed.
pub type Rows = Vec<Result<Item, EvalError>>;

/// Reads a benchmark's items from its downloaded file or folder; the first malformed row is an
/// error naming file, row and field. `images` is the folder that image paths in the file are
/// relative to, where the format keeps images outside the file.
pub fn read_benchmark(
    bench: Benchmark,
    data: &Path,
    images: Option<&Path>,
) -> Result<Vec<Item>, EvalError> {
    read_rows(bench, data, images)?.into_iter().collect()
}

/// [`read_benchmark`] keeping going past malformed rows: the items, and one error per row left
/// out.
pub fn read_benchmark_skipping(
    bench: Benchmark,
    data: &Path,
    images: Option<&Path>,
) -> Result<(Vec<Item>, Vec<EvalError>), EvalError> {
    let (mut items, mut bad) = (Vec::new(), Vec::new());
    for row in read_rows(bench, data, images)? {
        match row {
            Ok(item) => items.push(item),
            Err(e) => bad.push(e),
        }
    }
    Ok((items, bad))
}

/// Every row of the benchmark's file, read; errors of the file as a whole end the read.
pub fn read_rows(bench: Benchmark, data: &Path, images: Option<&Path>) -> Result<Rows, EvalError> {
    if !data.exists() {
        return Err(EvalError::Usage(format!(
            "{}: not found (--data is the benchmark's downloaded file or folder)",
            data.display()
        )));
    }
    let data = &resolve(bench, data)?;
    match bench {
        Benchmark::AroVgr | Benchmark::AroVga => read_aro_vg(bench, data, images),
        Benchmark::AroCocoOrder | Benchmark::AroFlickrOrder => read_aro_order(bench, data, images),
        Benchmark::Conme => read_conme(data, images),
        Benchmark::Mmvp => read_mmvp(data),
        Benchmark::CvBench => read_cvbench(data, images),
        Benchmark::Ai2d => read_ai2d(&open_table(data)?),
        Benchmark::Mme => read_mme(&open_table(data)?),
        Benchmark::MmStar => read_mmstar(&open_table(data)?),
        Benchmark::MmBench => read_mmbench(&open_table(data)?),
        Benchmark::Mcq => read_mcq(data, images),
    }
}

/// A folder given as `--data` stands for the file the benchmark's release puts in it (ARO's
/// JSON, CV-Bench's `test.jsonl`, MMBench's TSV, CONME's `data/`); otherwise its parquet
/// shards (or, for MMVP, `Questions.csv`) are read.
fn resolve(bench: Benchmark, data: &Path) -> Result<PathBuf, EvalError> {
    if !data.is_dir() {
        return Ok(data.to_path_buf());
    }
    let names: &[&str] = match bench {
        Benchmark::AroVgr => &["visual_genome_relation.json"],
        Benchmark::AroVga => &["visual_genome_attribution.json"],
        Benchmark::AroCocoOrder => &["coco_order.json"],
        Benchmark::AroFlickrOrder => &["flickr_order.json"],
        Benchmark::CvBench => &["test.jsonl"],
        Benchmark::Conme => &["data"],
        _ => &[],
    };
    if let Some(p) = names.iter().map(|n| data.join(n)).find(|p| p.exists()) {
        return Ok(p);
    }
    if bench == Benchmark::MmBench {
        let mut tsv: Vec<PathBuf> = std::fs::read_dir(data)
            .map_err(|source| EvalError::Io {
                path: data.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("tsv"))
            .collect();
        tsv.sort();
        if let Some(first) = tsv.into_iter().next() {
            return Ok(first);
        }
    }
    Ok(data.to_path_buf())
}

/// A table file, or a folder of parquet shards.
fn open_table(data: &Path) -> Result<Table, EvalError> {
    if data.is_dir() {
        Table::read_parquet_dir(data)
    } else {
        Table::read(data)
    }
}

/// `--images` when given, else the format's default folder.
fn image_root(images: Option<&Path>, default: PathBuf) -> PathBuf {
    images.map_or(default, Path::to_path_buf)
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// An image named by a file path column, relative to `root`.
fn file_image(
    t: &Table,
    row: usize,
    column: &str,
    root: &Path,
) -> Result<(ImageSource, String), EvalError> {
    let name = t.text(row, column)?;
    Ok((ImageSource::File(root.join(&name)), name))
}

/// An image stored in the table (bytes struct or base64); named by the struct's path, else by
/// `fallback`.
fn table_image(
    t: &Table,
    row: usize,
    column: &str,
    fallback: &str,
) -> Result<(ImageSource, String), EvalError> {
    let img = t.image(row, column)?;
    let name = img.name.unwrap_or_else(|| fallback.to_string());
    Ok((ImageSource::Bytes(img.bytes), name))
}

/// ARO's crop box, when the row has one.
fn aro_crop(t: &Table, row: usize) -> Result<Option<[f64; 4]>, EvalError> {
    let keys = ["bbox_x", "bbox_y", "bbox_w", "bbox_h"];
    if !keys.iter().all(|k| t.has(k)) {
        return Ok(None);
    }
    let mut b = [0.0; 4];
    for (v, k) in b.iter_mut().zip(keys) {
        let s = t.text(row, k)?;
        *v = s
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| t.err(row, k, format!("{s:?} is not a number")))?;
    }
    if b[2] <= 0.0 || b[3] <= 0.0 {
        return Err(t.err(row, "bbox_w", format!("empty crop box {b:?}")));
    }
    Ok(Some(b))
}

/// The right option from `column`, read by `parse` and checked against the `n` options; the
/// error says what the value should have been.
fn gold(
    t: &Table,
    r: usize,
    column: &str,
    n: usize,
    parse: impl Fn(&str) -> Option<usize>,
    what: &str,
) -> Result<usize, EvalError> {
    let g = t.text(r, column)?;
    parse(&g)
        .filter(|&k| k < n)
        .ok_or_else(|| t.err(r, column, format!("{g:?} is not {what}")))
}

/// An image named by a path (relative to `root`) or held in the table, whichever the cell is.
fn path_or_table_image(
    t: &Table,
    r: usize,
    column: &str,
    root: &Path,
    fallback: &str,
) -> Result<(ImageSource, String), EvalError> {
    match t.cell(r, column)? {
        crate::table::Cell::Str(_) => file_image(t, r, column, root),
        _ => table_image(t, r, column, fallback),
    }
}

fn blank_item(bench: Benchmark, id: String, image: ImageSource, image_name: String) -> Item {
    Item {
        bench,
        id,
        category: None,
        image,
        image_name,
        crop: None,
        question: String::new(),
        hint: None,
        prompt: None,
        options: Vec::new(),
        answer: 0,
        answer_text: None,
        group: None,
        source: None,
        split: None,
    }
}

/// ARO VG-Relation / VG-Attribution: the options in the paper harness's order (false caption
/// as `A`, true caption as `B`); the category is the relation, or the attribute pair.
fn read_aro_vg(bench: Benchmark, data: &Path, images: Option<&Path>) -> Result<Rows, EvalError> {
    let t = open_table(data)?;
    let root = image_root(images, parent(data).join("images"));
    Ok((0..t.len())
        .map(|r| {
            let (image, name) = if t.has("image_path") {
                file_image(&t, r, "image_path", &root)?
            } else {
                table_image(&t, r, "image", &format!("{r}.png"))?
            };
            let mut item = blank_item(bench, r.to_string(), image, name);
            item.crop = aro_crop(&t, r)?;
            item.question = CAPTION_PROMPT.into();
            item.options = vec![t.text(r, "false_caption")?, t.text(r, "true_caption")?];
            item.answer = 1;
            item.category = match bench {
                Benchmark::AroVgr => t.opt_text(r, "relation_name"),
                _ if t.has("attributes") => t.text_list(r, "attributes").ok().map(|a| a.join("-")),
                _ => None,
            };
            item.split = t.opt_text(r, "split");
            Ok(item)
        })
        .collect())
}

/// ARO COCO-Order / Flickr-Order: five captions, the right one shown as `B` (the harness's
/// order: first perturbation, true caption, the other three).
fn read_aro_order(bench: Benchmark, data: &Path, images: Option<&Path>) -> Result<Rows, EvalError> {
    let t = open_table(data)?;
    let root = image_root(images, parent(data).join("images"));
    Ok((0..t.len())
        .map(|r| {
            let (image, name) = if t.has("image_path") {
                file_image(&t, r, "image_path", &root)?
            } else {
                let col = if t.has("images") { "images" } else { "image" };
                table_image(&t, r, col, &format!("{r}.png"))?
            };
            let mut item = blank_item(bench, r.to_string(), image, name);
            let captions = if t.has("caption_options") {
                t.text_list(r, "caption_options")?
            } else {
                let mut c = vec![t.text(r, "correct_caption")?];
                for k in 1..=4 {
                    c.push(t.text(r, &format!("hard_text_{k}"))?);
                }
                c
            };
            if captions.len() < 2 {
                return Err(t.err(r, "caption_options", "needs at least 2 captions"));
            }
            let mut options = captions.clone();
            options.swap(0, 1);
            item.question = CAPTION_PROMPT.into();
            item.options = options;
            item.answer = 1;
            item.split = t.opt_text(r, "split");
            Ok(item)
        })
        .collect())
}

/// Options written one per line as `A. x`, `A) x`, `(A) x` or `A: x`, in letter order from `A`;
/// returns the text before them and the options.
pub fn split_options(text: &str) -> Option<(String, Vec<String>)> {
    let mut stem = Vec::new();
    let mut options: Vec<String> = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        let parsed = parse_option_line(l).filter(|(k, _)| *k == options.len());
        match parsed {
            Some((_, body)) => options.push(body.to_string()),
            None if options.is_empty() => stem.push(line),
            None => return None,
        }
    }
    (options.len() >= 2).then(|| (stem.join("\n").trim().to_string(), options))
}

fn parse_option_line(l: &str) -> Option<(usize, &str)> {
    let (head, rest) = if let Some(r) = l.strip_prefix('(') {
        let (h, rest) = r.split_once(')')?;
        (h, rest)
    } else {
        let cut = l.find(['.', ')', ':'])?;
        (&l[..cut], &l[cut + 1..])
    };
    let mut chars = head.trim().chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_uppercase() => Some(((c as u8 - b'A') as usize, rest.trim())),
        _ => None,
    }
}

/// CONME, as the paper's harness reads it: every CSV of the folder (category: the file's
/// stem), columns `image` (relative to `--images`), `question` (options written in), `answer`.
fn read_conme(data: &Path, images: Option<&Path>) -> Result<Rows, EvalError> {
    let files: Vec<PathBuf> = if data.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(data)
            .map_err(|source| EvalError::Io {
                path: data.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("csv"))
            .collect();
        f.sort();
        if f.is_empty() {
            return Err(format_err(data, "no .csv files in this folder".into()));
        }
        f
    } else {
        vec![data.to_path_buf()]
    };
    // The harness's layout: `<root>/data/*.csv`, image paths relative to `<root>`.
    let csv_dir = if data.is_dir() {
        data.to_path_buf()
    } else {
        parent(data)
    };
    let root = image_root(images, parent(&csv_dir));
    let mut rows = Vec::new();
    for file in files {
        let t = Table::read(&file)?;
        let category = file.file_stem().map(|s| s.to_string_lossy().into_owned());
        rows.extend((0..t.len()).map(|r| conme_row(&t, r, &root, category.as_deref())));
    }
    Ok(rows)
}

fn conme_row(t: &Table, r: usize, root: &Path, category: Option<&str>) -> Result<Item, EvalError> {
    let (image, name) = file_image(t, r, "image", root)?;
    let id = format!("{}#{r}", category.unwrap_or_default());
    let mut item = blank_item(Benchmark::Conme, id, image, name);
    let question = t.text(r, "question")?;
    let answer = t.text(r, "answer")?;
    if let Some((stem, options)) = split_options(&question) {
        item.answer = letter_index(&answer)
            .filter(|&k| k < options.len())
            .or_else(|| {
                options
                    .iter()
                    .position(|o| o.eq_ignore_ascii_case(answer.trim()))
            })
            .ok_or_else(|| {
                t.err(
                    r,
                    "answer",
                    format!("{answer:?} is neither an option letter nor an option"),
                )
            })?;
        item.question = stem;
        item.options = options;
    } else {
        item.question = question.clone();
    }
    item.prompt = Some(question);
    item.answer_text = Some(answer);
    item.category = category.map(str::to_string);
    Ok(item)
}

/// MMVP: `Questions.csv` (`Index`, `Question`, `Options` written `(a) x (b) y`,
/// `Correct Answer`), images `MMVP Images/<Index>.jpg` (or `<Index>.jpg`/`.png` beside the
/// CSV); questions 2k−1 and 2k are pair k.
fn read_mmvp(dir: &Path) -> Result<Rows, EvalError> {
    let path = if dir.is_dir() {
        dir.join("Questions.csv")
    } else {
        dir.to_path_buf()
    };
    let dir = parent(&path);
    let t = Table::read_delimited(&path, b',')?;
    Ok((0..t.len())
        .map(|r| {
            let index = t.text(r, "Index")?;
            let n: usize = index
                .trim()
                .parse()
                .map_err(|_| t.err(r, "Index", format!("{index:?} is not a number")))?;
            let candidates: Vec<String> = ["jpg", "png", "jpeg"]
                .iter()
                .flat_map(|e| [format!("MMVP Images/{n}.{e}"), format!("{n}.{e}")])
                .collect();
            let name = candidates
                .iter()
                .find(|c| dir.join(c).is_file())
                .ok_or_else(|| {
                    t.err(
                        r,
                        "Index",
                        format!(
                            "no image {} (nor .png, or beside the CSV)",
                            dir.join(&candidates[0]).display()
                        ),
                    )
                })?
                .clone();
            let mut item = blank_item(
                Benchmark::Mmvp,
                n.to_string(),
                ImageSource::File(dir.join(&name)),
                name,
            );
            let opts = t.text(r, "Options")?;
            let (a, b) = opts
                .trim()
                .strip_prefix("(a)")
                .and_then(|x| x.split_once("(b)"))
                .ok_or_else(|| t.err(r, "Options", format!("{opts:?} is not \"(a) … (b) …\"")))?;
            item.answer = gold(&t, r, "Correct Answer", 2, letter_index, "(a) or (b)")?;
            item.question = t.text(r, "Question")?.trim().to_string();
            item.options = vec![a.trim().to_string(), b.trim().to_string()];
            item.prompt = Some(format!("{} {}", item.question, opts.trim()));
            item.group = Some(n.div_ceil(2).to_string());
            Ok(item)
        })
        .collect())
}

/// CV-Bench: `idx`, `type`, `task`, `image` (a path relative to the JSONL, or an image struct in
/// parquet), `question`, `choices`, `answer` (`(C)`), `prompt`, `source`.
fn read_cvbench(data: &Path, images: Option<&Path>) -> Result<Rows, EvalError> {
    let t = open_table(data)?;
    let root = image_root(images, parent(data));
    Ok((0..t.len())
        .map(|r| {
            let id = t.opt_text(r, "idx").unwrap_or_else(|| r.to_string());
            let (image, name) = path_or_table_image(&t, r, "image", &root, &format!("{id}.png"))?;
            let mut item = blank_item(Benchmark::CvBench, id, image, name);
            item.options = t.text_list(r, "choices")?;
            item.answer = gold(
                &t,
                r,
                "answer",
                item.options.len(),
                letter_index,
                "a choice letter",
            )?;
            item.question = t.text(r, "question")?;
            item.prompt = t.opt_text(r, "prompt");
            item.category = t.opt_text(r, "task");
            item.source = t.opt_text(r, "source");
            if item.source.is_none() {
                item.source = t.opt_text(r, "type");
            }
            Ok(item)
        })
        .collect())
}

/// AI2D (lmms-lab): `question`, `options` (list), `answer` (the right option's 0-based
/// index, as text), `image`.
fn read_ai2d(t: &Table) -> Result<Rows, EvalError> {
    Ok((0..t.len())
        .map(|r| {
            let (image, name) = table_image(t, r, "image", &format!("{r}.png"))?;
            let mut item = blank_item(Benchmark::Ai2d, r.to_string(), image, name);
            item.options = t.text_list(r, "options")?;
            let index = |g: &str| g.trim().parse::<usize>().ok();
            item.answer = gold(t, r, "answer", item.options.len(), index, "an option index")?;
            item.question = t.text(r, "question")?;
            Ok(item)
        })
        .collect())
}

/// MME (lmms-lab): two Yes/No questions per image, rows `question_id` (the image),
/// `question`, `answer`, `category`, `image`. Ids are `question_id#k`, k the row's order
/// among its image's rows.
fn read_mme(t: &Table) -> Result<Rows, EvalError> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    Ok((0..t.len())
        .map(|r| {
            let qid = t.text(r, "question_id")?;
            let k = seen.entry(qid.clone()).or_insert(0);
            let id = format!("{qid}#{k}");
            *k += 1;
            let (image, name) = table_image(t, r, "image", &qid)?;
            let mut item = blank_item(Benchmark::Mme, id, image, name);
            let gold = t.text(r, "answer")?;
            item.answer = match gold.trim().to_ascii_lowercase().as_str() {
                "yes" => 0,
                "no" => 1,
                _ => return Err(t.err(r, "answer", format!("{gold:?} is not Yes or No"))),
            };
            item.options = vec!["Yes".into(), "No".into()];
            item.question = t.text(r, "question")?;
            item.category = Some(t.text(r, "category")?);
            item.group = Some(qid);
            Ok(item)
        })
        .collect())
}

/// MMStar's options live in the question: `…\nOptions: A: x, B: y, C: z, D: w`.
pub fn mmstar_options(question: &str) -> Option<(String, Vec<String>)> {
    let at = question.rfind("Options:")?;
    let (stem, list) = (question[..at].trim(), &question[at + "Options:".len()..]);
    let mut options = Vec::new();
    let mut rest = list;
    for k in 0..26 {
        let tag = format!("{}:", crate::item::letter(k));
        let Some(start) = rest.find(&tag) else { break };
        if k > 0 {
            let prev: &mut String = options.last_mut()?;
            *prev = rest[..start]
                .trim()
                .trim_end_matches(',')
                .trim()
                .to_string();
        }
        rest = &rest[start + tag.len()..];
        options.push(String::new());
    }
    let last = options.last_mut()?;
    *last = rest.trim().to_string();
    (options.len() >= 2).then(|| (stem.to_string(), options))
}

/// MMStar: `index`, `question` (options inside), `answer` (letter), `category`, `image`.
fn read_mmstar(t: &Table) -> Result<Rows, EvalError> {
    Ok((0..t.len())
        .map(|r| {
            let id = t.opt_text(r, "index").unwrap_or_else(|| r.to_string());
            let (image, name) = table_image(t, r, "image", &format!("{id}.png"))?;
            let mut item = blank_item(Benchmark::MmStar, id, image, name);
            let question = t.text(r, "question")?;
            let (stem, options) = mmstar_options(&question).ok_or_else(|| {
                t.err(r, "question", "no \"Options: A: …, B: …\" in the question")
            })?;
            item.answer = gold(
                t,
                r,
                "answer",
                options.len(),
                letter_index,
                "an option letter",
            )?;
            item.question = stem;
            item.options = options;
            item.prompt = Some(question);
            item.category = t.opt_text(r, "category");
            Ok(item)
        })
        .collect())
}

/// MMBench: `index`, `question`, `hint` (may be missing), options in columns `A`–`E` (2 to 5
/// present), `answer`, `category`, `image` (base64 in the TSV). Circular copies in the file
/// (index + k·10⁶) share a group.
fn read_mmbench(t: &Table) -> Result<Rows, EvalError> {
    Ok((0..t.len())
        .map(|r| {
            let id = t.text(r, "index")?;
            let (image, name) = table_image(t, r, "image", &format!("{id}.png"))?;
            let mut item = blank_item(Benchmark::MmBench, id.clone(), image, name);
            for k in 0..5 {
                let col = crate::item::letter(k).to_string();
                match t.opt_text(r, &col) {
                    Some(o) if item.options.len() == k => item.options.push(o),
                    Some(_) => return Err(t.err(r, &col, "an option after a missing one")),
                    None => {}
                }
            }
            if item.options.len() < 2 {
                return Err(t.err(r, "B", "fewer than two options"));
            }
            let n = item.options.len();
            item.answer = gold(
                t,
                r,
                "answer",
                n,
                letter_index,
                "one of the row's option letters",
            )?;
            item.question = t.text(r, "question")?;
            item.hint = t.opt_text(r, "hint");
            item.category = t.opt_text(r, "category");
            item.group = id
                .trim()
                .parse::<u64>()
                .ok()
                .map(|i| (i % 1_000_000).to_string());
            Ok(item)
        })
        .collect())
}

/// The generic multiple-choice layout.
fn read_mcq(data: &Path, images: Option<&Path>) -> Result<Rows, EvalError> {
    let t = open_table(data)?;
    let root = image_root(images, parent(data));
    Ok((0..t.len())
        .map(|r| {
            let id = t.opt_text(r, "id").unwrap_or_else(|| r.to_string());
            let (image, name) = path_or_table_image(&t, r, "image", &root, &format!("{id}.png"))?;
            let mut item = blank_item(Benchmark::Mcq, id, image, name);
            item.options = t.text_list(r, "options")?;
            let index_or_letter =
                |g: &str| g.trim().parse::<usize>().ok().or_else(|| letter_index(g));
            let n = item.options.len();
            item.answer = gold(
                &t,
                r,
                "answer",
                n,
                index_or_letter,
                "an option index or letter",
            )?;
            item.question = t.text(r, "question")?;
            item.category = t.opt_text(r, "category");
            item.hint = t.opt_text(r, "hint");
            item.split = t.opt_text(r, "split");
            Ok(item)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_lines_and_mmstar_options_split() {
        let (stem, o) =
            split_options("Which is right?\nA. the cat\nB. the dog\n(C) a bird").unwrap();
        assert_eq!(stem, "Which is right?");
        assert_eq!(o, vec!["the cat", "the dog", "a bird"]);
        assert!(split_options("Which?\nA. x").is_none());
        assert!(split_options("Which?\nB. x\nA. y").is_none());
        let (stem, o) =
            mmstar_options("What is it?\nOptions: A: a cat, B: 3:4, C: x, y, D: none").unwrap();
        assert_eq!(stem, "What is it?");
        assert_eq!(o, vec!["a cat", "3:4", "x, y", "none"]);
        assert!(mmstar_options("no options here").is_none());
    }
}
