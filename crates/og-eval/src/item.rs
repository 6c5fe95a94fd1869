//! The benchmarks of the paper's Table 1 and the question items read from them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::EvalError;

/// A benchmark of the paper's Table 1 (ARO's four subsets, CONME, MMVP, CV-Bench, AI2D, MME,
/// MMStar, MMBench).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Benchmark {
    AroVgr,
    AroVga,
    AroCocoOrder,
    AroFlickrOrder,
    Conme,
    Mmvp,
    CvBench,
    Ai2d,
    Mme,
    MmStar,
    MmBench,
    /// Any multiple-choice set in a plain JSONL layout (not in Table 1): the nano world's
    /// tasks, a user's own questions.
    Mcq,
}

impl Benchmark {
    /// Every benchmark, in Table 1's column order.
    pub const ALL: [Benchmark; 11] = [
        Benchmark::AroVgr,
        Benchmark::AroVga,
        Benchmark::AroCocoOrder,
        Benchmark::AroFlickrOrder,
        Benchmark::Conme,
        Benchmark::Mmvp,
        Benchmark::CvBench,
        Benchmark::Ai2d,
        Benchmark::Mme,
        Benchmark::MmStar,
        Benchmark::MmBench,
    ];

    /// The name on the command line and in result files.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::AroVgr => "aro-vgr",
            Benchmark::AroVga => "aro-vga",
            Benchmark::AroCocoOrder => "aro-coco-order",
            Benchmark::AroFlickrOrder => "aro-flickr-order",
            Benchmark::Conme => "conme",
            Benchmark::Mmvp => "mmvp",
            Benchmark::CvBench => "cvbench",
            Benchmark::Ai2d => "ai2d",
            Benchmark::Mme => "mme",
            Benchmark::MmStar => "mmstar",
            Benchmark::MmBench => "mmbench",
            Benchmark::Mcq => "mcq",
        }
    }

    /// ARO's caption subsets: the true caption against perturbed ones.
    pub fn is_aro(self) -> bool {
        matches!(
            self,
            Benchmark::AroVgr
                | Benchmark::AroVga
                | Benchmark::AroCocoOrder
                | Benchmark::AroFlickrOrder
        )
    }

    /// MME asks Yes/No questions; every other benchmark is multiple choice with letters.
    pub fn is_yes_no(self) -> bool {
        self == Benchmark::Mme
    }
}

impl std::fmt::Display for Benchmark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Benchmark {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, EvalError> {
        Benchmark::ALL
            .into_iter()
            .chain([Benchmark::Mcq])
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                EvalError::Usage(format!(
                    "unknown benchmark {s:?}; one of: {}, mcq",
                    Benchmark::ALL.map(Benchmark::name).join(", ")
                ))
            })
    }
}

/// Where an item's image comes from: a file, or encoded bytes inside the benchmark's table.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    File(PathBuf),
    Bytes(Arc<[u8]>),
}

/// One question about one image, with its options and the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub bench: Benchmark,
    /// The benchmark's own id (see `items.jsonl` in the crate docs), else the 0-based row.
    pub id: String,
    /// The benchmark's category (ARO relation or attribute pair, MME category, MMBench and
    /// MMStar category, CV-Bench task, CONME file).
    pub category: Option<String>,
    pub image: ImageSource,
    /// The image's name relative to its folder or as its table names it: mask files are
    /// looked up under this name.
    pub image_name: String,
    /// ARO's crop box `[x, y, width, height]` in pixels, cut from the image before use.
    pub crop: Option<[f64; 4]>,
    /// The question without its options (ARO: the captioning prompt of likelihood ranking).
    pub question: String,
    /// MMBench's hint, shown before the question.
    pub hint: Option<String>,
    /// The benchmark's own prompt text with its options written in (CV-Bench's `prompt`,
    /// MMStar's and CONME's question, MMVP's `Options`), used verbatim when the options are
    /// shown in their original order.
    pub prompt: Option<String>,
    pub options: Vec<String>,
    /// Index of the right option.
    pub answer: usize,
    /// CONME's answer as the file writes it (the harness grades by substring).
    pub answer_text: Option<String>,
    /// Items graded together: MME's two questions of an image, MMVP's pairs, MMBench's
    /// circular copies of one question.
    pub group: Option<String>,
    /// CV-Bench's source dataset (ADE20K, COCO: 2D; Omni3D: 3D).
    pub source: Option<String>,
    /// `seen` / `heldout` where the file says (the nano world's evaluation files).
    pub split: Option<String>,
}

/// The letter of option `k`: `A`, `B`, …
pub fn letter(k: usize) -> char {
    (b'A' + (k as u8 % 26)) as char
}

/// An option letter written `B`, `b`, `(B)`, `(b)`, `B.` or `B)`, as its 0-based index.
pub fn letter_index(s: &str) -> Option<usize> {
    let t = s.trim().trim_start_matches('(');
    let t = t.trim_end_matches(['.', ')', ':']).trim();
    let mut chars = t.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => {
            Some((c.to_ascii_uppercase() as u8 - b'A') as usize)
        }
        _ => None,
    }
}

impl Item {
    /// The right answer as `items.jsonl` writes it: the option letter, or `Yes`/`No` (MME).
    pub fn gold(&self) -> String {
        if self.bench.is_yes_no() {
            self.options[self.answer].clone()
        } else {
            letter(self.answer).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_letters_parse() {
        for b in Benchmark::ALL.into_iter().chain([Benchmark::Mcq]) {
            assert_eq!(b.name().parse::<Benchmark>().unwrap(), b);
        }
        let e = "mmmu".parse::<Benchmark>().unwrap_err().to_string();
        assert!(e.contains("mmmu") && e.contains("aro-vgr"), "{e}");
        for (s, k) in [("B", 1), ("(c)", 2), ("a.", 0), (" (D) ", 3), ("E)", 4)] {
            assert_eq!(letter_index(s), Some(k), "{s}");
        }
        for s in ["", "AB", "(1)", "yes"] {
            assert_eq!(letter_index(s), None, "{s}");
        }
        assert_eq!((letter(0), letter(4)), ('A', 'E'));
    }
}
