//! Fuzzing on stable Rust for every parser that reads bytes a user did not write: COCO RLE
//! JSON, `.npy` masks, safetensors, `torch.save` files and their pickles, LLaVA training rows,
//! model configs, every benchmark format, the hub's wire protocol.
//!
//! The engine is a seeded mutator over a committed corpus (`fuzz/corpus/<target>/`): each
//! execution stacks one to four mutations (bit flips, interesting integers, inserted,
//! deleted, duplicated or spliced ranges, dictionary tokens) on a corpus input and runs the
//! target under `catch_unwind`. There is no coverage feedback; an input the parser accepts
//! joins the in-memory corpus, which steers mutation toward inputs that get past the first
//! checks. A panic is a finding (its input is kept); an abort or a hang stops the process,
//! and the run's seed and execution count reproduce it.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod targets;

pub use targets::{TARGETS, Target};

/// The seeded generator behind every mutation (so a seed reproduces a run).
pub use og_fs::SplitMix64 as Rng;

const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

/// Applies one random mutation to `data`.
fn mutate_once(data: &mut Vec<u8>, rng: &mut Rng, dict: &[&[u8]], corpus: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(10) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING[rng.below(5)] as u8;
        }
        2 if len > 0 => {
            let width = [2usize, 4, 8][rng.below(3)].min(len);
            let at = rng.below(len - width + 1);
            let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            data[at..at + width].copy_from_slice(&v[..width]);
        }
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            data.splice(at..at, bytes);
        }
        4 if len > 1 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        5 if len > 1 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            let chunk = data[at..at + n].to_vec();
            let to = rng.below(len + 1);
            data.splice(to..to, chunk);
        }
        6 if !dict.is_empty() => {
            let token = dict[rng.below(dict.len())];
            let at = rng.below(len + 1);
            if rng.below(2) == 0 || at + token.len() > len {
                data.splice(at..at, token.iter().copied());
            } else {
                data[at..at + token.len()].copy_from_slice(token);
            }
        }
        7 if !corpus.is_empty() => {
            let other = &corpus[rng.below(corpus.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let at = rng.below(len + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
        }
        8 if len > 0 => data.truncate(rng.below(len)),
        _ => {
            let at = rng.below(len + 1);
            let n = rng.below(4) + 1;
            data.splice(
                at..at,
                std::iter::repeat_n(data.get(at).copied().unwrap_or(0), n),
            );
        }
    }
}

/// How long a run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Execs(u64),
    Time(Duration),
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub execs: u64,
    /// Executions the parser accepted.
    pub accepted: u64,
    /// Inputs that panicked, with the panic message.
    pub panics: Vec<(Vec<u8>, String)>,
    pub corpus: usize,
    pub seconds: f64,
}

/// Reads every file of a corpus folder (none when it does not exist).
pub fn read_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// The committed corpus of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Fuzzes `target` from `seeds` with the generator seeded by `seed` until `budget` is spent.
/// Panics are caught and reported, silently (the default hook is replaced meanwhile).
pub fn fuzz(target: &Target, seeds: Vec<Vec<u8>>, seed: u64, budget: Budget) -> Report {
    let mut rng = Rng(seed);
    let mut corpus = if seeds.is_empty() {
        vec![Vec::new()]
    } else {
        seeds
    };
    let limit = corpus.len() + 256;
    let start = Instant::now();
    let mut report = Report::default();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let scratch = targets::Scratch::new(target.name);
    loop {
        let done = match budget {
            Budget::Execs(n) => report.execs >= n,
            Budget::Time(t) => start.elapsed() >= t,
        };
        if done {
            break;
        }
        let mut input = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate_once(&mut input, &mut rng, target.dict, &corpus);
        }
        input.truncate(1 << 20);
        report.execs += 1;
        match std::panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input, &scratch))) {
            Ok(true) => {
                report.accepted += 1;
                if corpus.len() < limit && !corpus.contains(&input) {
                    corpus.push(input);
                }
            }
            Ok(false) => {}
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report.panics.push((input, message));
            }
        }
    }
    std::panic::set_hook(hook);
    report.corpus = corpus.len();
    report.seconds = start.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target on its committed corpus: the seeds parse as the corpus says (at least one
    /// accepted where the target has valid seeds), and a short mutation run finds no panic.
    #[test]
    fn every_target_survives_a_short_run() {
        for target in TARGETS {
            let seeds = read_corpus(&corpus_dir(target.name));
            assert!(!seeds.is_empty(), "{}: no committed corpus", target.name);
            let scratch = targets::Scratch::new(target.name);
            assert!(
                seeds.iter().any(|s| (target.run)(s, &scratch)),
                "{}: no seed is accepted: the target does not reach the parser's happy path",
                target.name
            );
            let report = fuzz(target, seeds, 7, Budget::Execs(300));
            assert!(
                report.panics.is_empty(),
                "{}: {} panics, first: {:?}",
                target.name,
                report.panics.len(),
                report.panics[0].1
            );
        }
    }

    #[test]
    fn mutation_is_deterministic_for_a_seed() {
        let run = |seed| {
            let mut rng = Rng(seed);
            let mut d = b"{\"a\": [1, 2, 3]}".to_vec();
            for _ in 0..50 {
                mutate_once(&mut d, &mut rng, &[b"null"], &[b"xyz".to_vec()]);
            }
            d
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
