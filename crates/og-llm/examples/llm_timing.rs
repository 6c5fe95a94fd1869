//! Prefill and decode timing on the CPU for `scripts/compare_llm.py`.
//!
//! `cargo run --release -p og-llm --example llm_timing -- [smollm2|tiny] PROMPT NEW [flex|ndarray] [REPEATS]`
//! prints one JSON line: prefill seconds (median of REPEATS) and decode tokens per second
//! (greedy, KV cache).

use std::time::Instant;

use burn::tensor::backend::Backend;
use og_llm::{KvCache, LlamaConfig};

// The og-llava binary's allocator: every CPU op allocates its output, which mimalloc reuses
// where the system allocator maps and faults in fresh pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn run<B: Backend>(cfg: &LlamaConfig, prompt: usize, new: usize, repeats: usize) -> (f64, f64) {
    let device = B::Device::default();
    let model = cfg.init::<B>(&device).expect("valid config");
    let ids: Vec<u32> = (0..prompt as u32).map(|i| 3 + (i * 7) % 1000).collect();
    let step = |cache: &mut KvCache<B>, tokens: &[u32], start: usize| {
        let pos = vec![(start as i64..(start + tokens.len()) as i64).collect()];
        let logits = model
            .forward(
                model.embed(&[tokens.to_vec()]).unwrap(),
                &pos,
                None,
                Some(cache),
            )
            .unwrap();
        let [_, t, v] = logits.dims();
        let last = logits.slice([0..1, t - 1..t, 0..v]).argmax(2);
        last.into_data().convert::<i64>().to_vec::<i64>().unwrap()[0] as u32
    };
    // Warm-up.
    let mut cache = KvCache::new(model.num_layers());
    step(&mut cache, &ids, 0);
    let mut prefills: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let mut cache = KvCache::new(model.num_layers());
            let t0 = Instant::now();
            step(&mut cache, &ids, 0);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    prefills.sort_by(f64::total_cmp);
    let prefill = prefills[prefills.len() / 2];
    let mut cache = KvCache::new(model.num_layers());
    let mut next = step(&mut cache, &ids, 0);
    let t1 = Instant::now();
    for i in 0..new {
        next = step(&mut cache, &[next % cfg.vocab_size as u32], prompt + i);
    }
    let decode = new as f64 / t1.elapsed().as_secs_f64();
    (prefill, decode)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "smollm2".into());
    let prompt: usize = args
        .next()
        .map(|s| s.parse().expect("PROMPT"))
        .unwrap_or(32);
    let new: usize = args.next().map(|s| s.parse().expect("NEW")).unwrap_or(32);
    let backend = args.next().unwrap_or_else(|| "flex".into());
    let repeats: usize = args
        .next()
        .map(|s| s.parse().expect("REPEATS"))
        .unwrap_or(5);
    let cfg = match which.as_str() {
        "tiny" => LlamaConfig::tiny(),
        _ => LlamaConfig::smollm2_135m(),
    };
    let (prefill, tps) = og_kernels::in_thread_pool(|| match backend.as_str() {
        "ndarray" => run::<burn::backend::NdArray<f32>>(&cfg, prompt, new, repeats),
        _ => run::<burn::backend::Flex<f32>>(&cfg, prompt, new, repeats),
    });
    println!(
        "{{\"model\": \"{which}\", \"backend\": \"{backend}\", \"prefill_s\": {prefill:.4}, \"decode_tok_s\": {tps:.2}}}"
    );
}
