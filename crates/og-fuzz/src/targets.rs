//! The fuzz targets: each feeds bytes to one parser through the public API a user's files
//! reach, and says whether the parser accepted them.

use std::path::{Path, PathBuf};

use og_eval::Benchmark;
use og_llava::og_llm::LlamaConfig;
use og_llava::og_segment::{MaskSet, npy};
use og_llava::og_vision::clip::ClipVisionConfig;
use og_weights::Weights;

/// A folder a target may write its input into (for parsers that read paths).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("og-fuzz-{}-{target}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder in the temp dir");
        Self(dir)
    }

    /// Writes `bytes` as `name` in the scratch folder; its path.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("writing to the scratch folder");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8], &Scratch) -> bool,
    /// Tokens the mutator splices in.
    pub dict: &'static [&'static [u8]],
}

const JSON: &[&[u8]] = &[
    b"null",
    b"true",
    b"-1",
    b"1e309",
    b"\"\"",
    b"[]",
    b"{}",
    b"\"counts\"",
    b"\"size\"",
    b"\"segmentation\"",
    b"4294967296",
    b"18446744073709551616",
    b"\\u0000",
    b"NaN",
];

const CONFIG: &[&[u8]] = &[
    b"\"hidden_size\"",
    b"\"num_hidden_layers\"",
    b"\"rope_scaling\"",
    b"\"rope_theta\"",
    b"\"rms_norm_eps\"",
    b"\"layer_norm_eps\"",
    b"\"image_size\"",
    b"\"patch_size\"",
    b"0",
    b"-1",
    b"1e308",
    b"4294967297",
];

const TABLE: &[&[u8]] = &[
    b"\t",
    b",",
    b"\"",
    b"\n",
    b"PAR1",
    b"\"answer\"",
    b"\"question\"",
    b"A",
    b"(a)",
    b"null",
    b"\"image\"",
];

const fn bench(name: &'static str, run: fn(&[u8], &Scratch) -> bool) -> Target {
    Target {
        name,
        run,
        dict: TABLE,
    }
}

/// Every target, in the order `og-fuzz --target all` runs them.
pub static TARGETS: &[Target] = &[
    Target {
        name: "coco_rle_json",
        run: coco_rle_json,
        dict: JSON,
    },
    Target {
        name: "npy",
        run: npy_mask,
        dict: &[
            b"\x93NUMPY",
            b"'descr'",
            b"'|b1'",
            b"'<u1'",
            b"'fortran_order'",
            b"True",
            b"(1, 2)",
            b"(0,)",
        ],
    },
    Target {
        name: "safetensors",
        run: safetensors,
        dict: &[
            b"\"dtype\"",
            b"\"F32\"",
            b"\"BF16\"",
            b"\"shape\"",
            b"\"data_offsets\"",
            b"[0,4]",
            b"__metadata__",
        ],
    },
    Target {
        name: "torch_pickle",
        run: torch_pickle,
        dict: &[
            b"\x80\x02",
            b"ctorch._utils\n_rebuild_tensor_v2\n",
            b"X\x07\x00\x00\x00storage",
            b"ctorch\nFloatStorage\n",
            b"(",
            b"t",
            b"R",
            b"Q",
            b"q\x00",
            b"h\x00",
            b"u",
            b"}",
            b"]",
            b"PK\x03\x04",
            b"data.pkl",
            b"data/0",
        ],
    },
    Target {
        name: "llava_rows",
        run: llava_rows,
        dict: &[
            b"\"conversations\"",
            b"\"from\"",
            b"\"human\"",
            b"\"gpt\"",
            b"\"value\"",
            b"<image>\\n",
            b"\"image\"",
            b"\"id\"",
            b"null",
            b"[]",
        ],
    },
    Target {
        name: "llama_config",
        run: llama_config,
        dict: CONFIG,
    },
    Target {
        name: "clip_config",
        run: clip_config,
        dict: CONFIG,
    },
    bench("aro_json", aro_json),
    bench("aro_parquet", aro_parquet),
    bench("conme_csv", conme_csv),
    bench("mmvp_csv", mmvp_csv),
    bench("cvbench_jsonl", cvbench_jsonl),
    bench("mmbench_tsv", mmbench_tsv),
    bench("mme_parquet", mme_parquet),
    bench("mmstar_parquet", mmstar_parquet),
    Target {
        name: "hub_protocol",
        run: hub_protocol,
        dict: &[
            b"BHGO",
            b"\x02\x00\x00\x00",
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x00\x00\x80\x7f",
        ],
    },
];

fn coco_rle_json(b: &[u8], _: &Scratch) -> bool {
    MaskSet::from_coco_json_str(&String::from_utf8_lossy(b), "fuzz").is_ok()
}

fn npy_mask(b: &[u8], s: &Scratch) -> bool {
    npy::read_npy_mask(s.file("mask.npy", b)).is_ok()
}

/// Opens the file and reads every tensor as f32 (what loading does).
fn read_all(w: og_weights::Result<Weights>) -> bool {
    let Ok(w) = w else { return false };
    let names: Vec<String> = w.names().into_iter().map(str::to_string).collect();
    names.iter().all(|n| w.f32(n).is_ok() || w.i64(n).is_ok())
}

fn safetensors(b: &[u8], s: &Scratch) -> bool {
    read_all(Weights::open(s.file("model.safetensors", b)))
}

fn torch_pickle(b: &[u8], s: &Scratch) -> bool {
    let _ = og_weights::pickle::read(b, og_weights::pickle::Limits::default());
    read_all(Weights::open_pytorch(s.file("weights.bin", b)))
}

fn llava_rows(b: &[u8], s: &Scratch) -> bool {
    let mut bad = og_train::data::BadRows::default();
    og_train::data::read_rows(&s.file("rows.json", b), false, &mut bad).is_ok()
}

fn json(b: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(b).ok()
}

fn llama_config(b: &[u8], _: &Scratch) -> bool {
    json(b).is_some_and(|v| {
        LlamaConfig::from_hf_value(&v)
            .and_then(|c| c.validate())
            .is_ok()
    })
}

fn clip_config(b: &[u8], _: &Scratch) -> bool {
    json(b).is_some_and(|v| {
        ClipVisionConfig::from_hf_value(&v)
            .and_then(|c| c.validate())
            .is_ok()
    })
}

/// `bytes` as the benchmark's file `name`, read as `bench` reads it; accepted when the file
/// parses into rows (items, or rows refused one by one: images are not in the scratch folder).
fn benchmark(bench: Benchmark, name: &str, bytes: &[u8], s: &Scratch) -> bool {
    let path = s.file(name, bytes);
    matches!(
        og_eval::readers::read_benchmark_skipping(bench, &path, Some(Path::new(&s.0))),
        Ok((items, bad)) if !items.is_empty() || !bad.is_empty()
    )
}

fn aro_json(b: &[u8], s: &Scratch) -> bool {
    benchmark(Benchmark::AroVgr, "visual_genome_relation.json", b, s)
}
fn aro_parquet(b: &[u8], s: &Scratch) -> bool {
    benchmark(Benchmark::AroCocoOrder, "coco_order.parquet", b, s)
}
fn conme_csv(b: &[u8], s: &Scratch) -> bool {
    benchmark(Benchmark::Conme, "conme.csv", b, s)
}
fn mmvp_csv(b: &[u8], s: &Scratch) -> bool {
    benchmark(Benchmark::Mmvp, "Questions.csv", b, s)
}
fn cvbench_jsonl(b: &[u8], s: &Scratch) -> bool {
    benchmark(Benchmark::CvBench, "test.jsonl", b, s)
}
fn mmbench_tsv(b: &[u8], s: &Scratch) -> bool {
    benchmark(Benchmark::MmBench, "mmbench.tsv", b, s)
}
fn mme_parquet(b: &[u8], s: &Scratch) -> bool {
    benchmark(Benchmark::Mme, "mme.parquet", b, s)
}
fn mmstar_parquet(b: &[u8], s: &Scratch) -> bool {
    benchmark(Benchmark::MmStar, "mmstar.parquet", b, s)
}

fn hub_protocol(b: &[u8], _: &Scratch) -> bool {
    let config = og_train::hub::HubConfig {
        token: Some("token".into()),
        max_values: 1 << 16,
        ..Default::default()
    };
    og_train::hub::replay(b, &config).is_ok()
}
