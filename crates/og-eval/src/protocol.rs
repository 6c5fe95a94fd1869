//! How a model's answer is asked for and read.
//!
//! - [`Protocol::Paper`]: what the paper's evaluation harness does (lmms-eval tasks and the
//!   CONME script of the released code): the benchmark's prompt with its options in the file's
//!   order and its suffix, greedy generation, the harness's answer extraction. Its quirks are
//!   kept, because they shape Table 1: ARO shows the true caption as `B` in every row and
//!   reads a lower-case `b` as wrong; CONME counts an answer right when the answer string
//!   occurs anywhere in the generation.
//! - [`Protocol::Likelihood`]: every option scored as the assistant's answer to the question;
//!   the highest mean log-probability per token wins.
//! - [`Protocol::Circular`]: the paper prompt once per rotation of the options (MMBench's
//!   CircularEval); an item counts only when every rotation is answered right. This removes
//!   the position bias that a fixed `B` invites.

use crate::EvalError;
use crate::item::{Benchmark, Item, letter};

/// How answers are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Paper,
    Likelihood,
    Circular,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Paper, Protocol::Likelihood, Protocol::Circular];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Paper => "paper",
            Protocol::Likelihood => "likelihood",
            Protocol::Circular => "circular",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Protocol {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, EvalError> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                EvalError::Usage(format!(
                    "unknown protocol {s:?}; one of: paper, likelihood, circular"
                ))
            })
    }
}

/// Under rotation `r` of `n` options, the option shown at each position: `(k + r) mod n`.
pub fn rotation(n: usize, r: usize) -> Vec<usize> {
    (0..n).map(|k| (k + r) % n).collect()
}

const LETTER_SUFFIX: &str = "Answer with the option's letter from the given choices directly.";
const MME_SUFFIX: &str = "Answer the question using a single word or phrase.";

/// The text of the user turn (after the image) for the paper protocol, the options shown in
/// `order` (`order[k]` is the option at position k). With the file's own order a benchmark's
/// verbatim prompt is used where it has one.
pub fn paper_prompt(item: &Item, order: &[usize]) -> String {
    let identity = order.iter().enumerate().all(|(k, &o)| k == o);
    let shown: Vec<&str> = order.iter().map(|&o| item.options[o].as_str()).collect();
    let listed = |fmt: fn(char, &str) -> String, sep: &str| -> String {
        shown
            .iter()
            .enumerate()
            .map(|(k, o)| fmt(letter(k), o))
            .collect::<Vec<_>>()
            .join(sep)
    };
    let verbatim = item.prompt.as_deref().filter(|_| identity);
    match item.bench {
        Benchmark::AroVgr
        | Benchmark::AroVga
        | Benchmark::AroCocoOrder
        | Benchmark::AroFlickrOrder => {
            let letters: Vec<String> = (0..shown.len()).map(|k| letter(k).to_string()).collect();
            let (head, tail) = letters.split_at(letters.len() - 1);
            let (pre, post) = if shown.len() == 2 {
                (
                    "Given one image and two candidate captions (A and B), which caption is the better description of the given image?".to_string(),
                    "Answer with the option's letter from the given choices directly, only give a single character answer - 'A' or 'B' and answer only with one letter without providing any reasoning.".to_string(),
                )
            } else {
                let quoted: Vec<String> = head.iter().map(|l| format!("'{l}'")).collect();
                (
                    format!(
                        "Given one image and the candidate captions ({} and {}), which caption is the better description of the given image?",
                        head.join(", "),
                        tail[0]
                    ),
                    format!(
                        "Answer with the option's letter from the given choices directly, only give a single character answer - {} or '{}' and answer only with one letter without providing any reasoning.",
                        quoted.join(", "),
                        tail[0]
                    ),
                )
            };
            format!(
                "{pre}\n{}\n\n{post}",
                listed(|l, o| format!("{l}.{o}"), "\n")
            )
        }
        Benchmark::Mme => format!("{}\n{MME_SUFFIX}", item.question),
        Benchmark::Mmvp => {
            let body = verbatim.map(str::to_string).unwrap_or_else(|| {
                let opts: Vec<String> = shown
                    .iter()
                    .enumerate()
                    .map(|(k, o)| format!("({}) {o}", letter(k).to_ascii_lowercase()))
                    .collect();
                format!("{} {}", item.question, opts.join(" "))
            });
            format!("{body}\n{LETTER_SUFFIX}")
        }
        Benchmark::CvBench => {
            let body = verbatim.map(str::to_string).unwrap_or_else(|| {
                format!(
                    "{} Select from the following choices.\n{}",
                    item.question,
                    listed(|l, o| format!("({l}) {o}"), "\n")
                )
            });
            format!("{body}\n{LETTER_SUFFIX}")
        }
        Benchmark::MmStar => {
            let body = verbatim.map(str::to_string).unwrap_or_else(|| {
                format!(
                    "{}\nOptions: {}",
                    item.question,
                    listed(|l, o| format!("{l}: {o}"), ", ")
                )
            });
            format!("{body}\n{LETTER_SUFFIX}")
        }
        Benchmark::Conme => {
            let body = verbatim.map(str::to_string).unwrap_or_else(|| {
                format!(
                    "{}\n{}",
                    item.question,
                    listed(|l, o| format!("{l}. {o}"), "\n")
                )
            });
            format!("{body}\n{LETTER_SUFFIX}")
        }
        Benchmark::MmBench | Benchmark::Ai2d | Benchmark::Mcq => {
            letter_prompt(item.hint.as_deref(), &item.question, &shown)
        }
    }
}

/// The lmms-eval multiple-choice prompt (MMBench, AI2D, `mcq`): the hint, the question, one
/// `A. option` line per option, the letter instruction.
pub fn letter_prompt(hint: Option<&str>, question: &str, shown: &[&str]) -> String {
    let hint = hint.map(|h| format!("{h}\n")).unwrap_or_default();
    let listed: Vec<String> = shown
        .iter()
        .enumerate()
        .map(|(k, o)| format!("{}. {o}", letter(k)))
        .collect();
    format!("{hint}{question}\n{}\n{LETTER_SUFFIX}", listed.join("\n"))
}

/// The generation budget: the harness's where its task file sets one (ARO 100, AI2D 16, MME
/// 16), else enough for a letter and a short sentence.
pub fn max_new_tokens(bench: Benchmark) -> usize {
    match bench {
        b if b.is_aro() => 100,
        Benchmark::Ai2d | Benchmark::Mme => 16,
        Benchmark::MmStar | Benchmark::MmBench => 32,
        _ => 128,
    }
}

/// The prompt under which options are ranked by likelihood: the question (with MMBench's
/// hint; ARO: the captioning prompt; MME with its suffix).
pub fn likelihood_prompt(item: &Item) -> String {
    match (item.bench, &item.hint) {
        (Benchmark::Mme, _) => format!("{}\n{MME_SUFFIX}", item.question),
        (_, Some(h)) => format!("{h}\n{}", item.question),
        _ => item.question.clone(),
    }
}

/// A single letter in parentheses, `( B )` included.
fn paren_letter(text: &str, accept: impl Fn(char) -> bool) -> Option<char> {
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c != '(' {
            continue;
        }
        let mut j = i + 1;
        while chars.get(j).is_some_and(|c| *c == ' ') {
            j += 1;
        }
        let Some(&l) = chars.get(j) else { continue };
        let mut k = j + 1;
        while chars.get(k).is_some_and(|c| *c == ' ') {
            k += 1;
        }
        if accept(l) && chars.get(k) == Some(&')') {
            return Some(l);
        }
    }
    None
}

/// ARO's harness: a letter A–E in parentheses, else a whitespace-delimited single letter A–E
/// (either case, returned as written).
pub fn aro_letter(text: &str) -> Option<char> {
    let ae = |c: char| matches!(c.to_ascii_uppercase(), 'A'..='E');
    paren_letter(text, ae).or_else(|| {
        text.split_whitespace().find_map(|w| {
            let mut cs = w.chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) if ae(c) => Some(c),
                _ => None,
            }
        })
    })
}

/// MMVP's harness: a letter in parentheses, else the first alphabetic character; lower case.
pub fn mmvp_letter(text: &str) -> Option<char> {
    paren_letter(text, |c| c.is_ascii_alphabetic())
        .or_else(|| text.chars().find(|c| c.is_ascii_alphabetic()))
        .map(|c| c.to_ascii_lowercase())
}

/// MME's harness: `yes`/`no` as the whole answer, else within its first four characters;
/// `None` for anything else.
pub fn mme_yes_no(text: &str) -> Option<bool> {
    let t = text.trim().to_lowercase();
    match t.as_str() {
        "yes" => return Some(true),
        "no" => return Some(false),
        _ => {}
    }
    let prefix: String = t.chars().take(4).collect();
    if prefix.contains("yes") {
        Some(true)
    } else if prefix.contains("no") {
        Some(false)
    } else {
        None
    }
}

/// MMStar's matcher: the answer letter is the first character, or follows `(`, `option ` or
/// `the answer is `.
pub fn mmstar_letter(text: &str, n: usize) -> Option<usize> {
    let p = text.trim().to_lowercase().replace('\n', " ");
    let at = |s: &str| s.chars().next();
    let c = if let Some(r) = p.strip_prefix("the answer is ") {
        at(r)
    } else if let Some(r) = p.strip_prefix("option ") {
        at(r)
    } else if let Some(r) = p.strip_prefix('(') {
        at(r)
    } else {
        at(&p)
    }?;
    let k = (c as u32).checked_sub('a' as u32)? as usize;
    (k < n).then_some(k)
}

/// AI2D's lmms-eval filter: the first `X.` (any case), else a bare one-letter answer, else an
/// answer equal to one option's text.
pub fn ai2d_letter(text: &str, shown: &[&str]) -> Option<usize> {
    let chars: Vec<char> = text.chars().collect();
    let dotted = chars
        .windows(2)
        .find(|w| w[0].is_ascii_alphabetic() && w[1] == '.')
        .map(|w| w[0]);
    let bare = || {
        let t: String = text
            .chars()
            .filter(|c| c.is_alphanumeric() || c.is_whitespace())
            .collect();
        let t = t.trim();
        let mut cs = t.chars();
        match (cs.next(), cs.next()) {
            (Some(c), None) if c.is_ascii_alphabetic() => Some(c),
            _ => None,
        }
    };
    if let Some(c) = dotted.or_else(bare) {
        let k = (c.to_ascii_uppercase() as u8 - b'A') as usize;
        return (k < shown.len()).then_some(k);
    }
    let norm = |s: &str| s.trim().trim_end_matches('.').to_lowercase();
    shown.iter().position(|o| norm(o) == norm(text))
}

/// MMBench's rule-based matcher (used before any judge model): a capital option letter in
/// parentheses, else exactly one of the shown capital letters as a word, else exactly one
/// option's text inside the answer.
pub fn infer_option(text: &str, shown: &[&str]) -> Option<usize> {
    let n = shown.len();
    let in_range = |c: char| c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < n;
    if let Some(c) = paren_letter(text, in_range) {
        return Some((c as u8 - b'A') as usize);
    }
    let mut found: Vec<usize> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter_map(|w| {
            let mut cs = w.chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) if in_range(c) => Some((c as u8 - b'A') as usize),
                _ => None,
            }
        })
        .collect();
    found.dedup();
    found.sort_unstable();
    found.dedup();
    if found.len() == 1 {
        return Some(found[0]);
    }
    if !found.is_empty() {
        return None;
    }
    let lower = text.to_lowercase();
    let hits: Vec<usize> = (0..n)
        .filter(|&k| !shown[k].trim().is_empty() && lower.contains(&shown[k].trim().to_lowercase()))
        .collect();
    (hits.len() == 1).then(|| hits[0])
}

/// One generated answer, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// What the answer was read as: an option letter of the shown order, `Yes`/`No`, or empty
    /// when nothing could be read.
    pub prediction: String,
    pub correct: bool,
}

/// Reads `text`, the answer to [`paper_prompt`] with the options shown in `order`.
pub fn judge(item: &Item, order: &[usize], text: &str) -> Judged {
    let gold = order.iter().position(|&o| o == item.answer);
    let shown: Vec<&str> = order.iter().map(|&o| item.options[o].as_str()).collect();
    let identity = order.iter().enumerate().all(|(k, &o)| k == o);
    let pos = |k: Option<usize>| Judged {
        prediction: k.map(|k| letter(k).to_string()).unwrap_or_default(),
        correct: k.is_some() && k == gold,
    };
    match item.bench {
        Benchmark::Mme => {
            let yes = mme_yes_no(text);
            Judged {
                prediction: match yes {
                    Some(true) => "Yes".into(),
                    Some(false) => "No".into(),
                    None => String::new(),
                },
                correct: yes == Some(item.answer == 0),
            }
        }
        Benchmark::Conme if identity => {
            let answer = item.answer_text.as_deref().unwrap_or_default();
            Judged {
                prediction: text.trim().to_string(),
                correct: !answer.is_empty() && text.to_lowercase().contains(&answer.to_lowercase()),
            }
        }
        b if b.is_aro() => {
            let l = aro_letter(text);
            Judged {
                prediction: l.map(String::from).unwrap_or_default(),
                correct: l.is_some() && l == gold.map(letter),
            }
        }
        Benchmark::Mmvp => {
            let l = mmvp_letter(text);
            Judged {
                prediction: l
                    .map(|c| c.to_ascii_uppercase().to_string())
                    .unwrap_or_default(),
                correct: l.is_some() && l == gold.map(|g| letter(g).to_ascii_lowercase()),
            }
        }
        Benchmark::MmStar => pos(mmstar_letter(text, shown.len())),
        Benchmark::Ai2d => pos(ai2d_letter(text, &shown)),
        _ => pos(infer_option(text, &shown)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::ImageSource;

    fn item(bench: Benchmark, options: &[&str], answer: usize) -> Item {
        Item {
            bench,
            id: "0".into(),
            category: None,
            image: ImageSource::File("x.png".into()),
            image_name: "x.png".into(),
            crop: None,
            question: "What is it?".into(),
            hint: None,
            prompt: None,
            options: options.iter().map(|s| s.to_string()).collect(),
            answer,
            answer_text: None,
            group: None,
            source: None,
            split: None,
        }
    }

    #[test]
    fn extraction_reads_tricky_generations_as_each_harness_does() {
        let mb = item(Benchmark::MmBench, &["Open", "Closed", "Half"], 1);
        let id = [0, 1, 2];
        for (text, ok) in [
            ("The answer is (B).", true),
            ("B", true),
            ("B. Closed", true),
            ("b", false),
            ("It is a door.", false),
            ("The door is closed", true),
            ("A or B", false),
            ("(A)", false),
        ] {
            assert_eq!(judge(&mb, &id, text).correct, ok, "mmbench {text:?}");
        }
        let vg = item(Benchmark::AroVgr, &["false", "true"], 1);
        for (text, ok) in [
            ("B", true),
            ("(B)", true),
            ("b", false),
            ("A", false),
            ("Answer: B", true),
        ] {
            assert_eq!(judge(&vg, &[0, 1], text).correct, ok, "aro {text:?}");
        }
        let mmvp = item(Benchmark::Mmvp, &["left", "right"], 1);
        for (text, ok) in [
            ("(b) right", true),
            ("b", true),
            ("B. right", true),
            ("a", false),
            ("It is on the right", false),
        ] {
            assert_eq!(judge(&mmvp, &[0, 1], text).correct, ok, "mmvp {text:?}");
        }
        let mme = item(Benchmark::Mme, &["Yes", "No"], 1);
        for (text, ok) in [
            ("No", true),
            ("no, it is not", true),
            ("Yes", false),
            ("Not sure", true),
            ("I cannot tell", false),
        ] {
            assert_eq!(judge(&mme, &[0, 1], text).correct, ok, "mme {text:?}");
        }
        let star = item(Benchmark::MmStar, &["a", "b", "c", "d"], 2);
        for (text, ok) in [
            ("C", true),
            ("(C) x", true),
            ("The answer is C", true),
            ("Option C", true),
            ("c", true),
            ("B", false),
            ("Definitely C", false),
            ("Choose C", true),
        ] {
            assert_eq!(
                judge(&star, &[0, 1, 2, 3], text).correct,
                ok,
                "mmstar {text:?}"
            );
        }
        // A one-character answer that is an option's text (a number), not a letter.
        let counts = item(Benchmark::Ai2d, &["3", "4"], 1);
        assert!(judge(&counts, &[0, 1], "4").correct);
        let ai2d = item(Benchmark::Ai2d, &["sun", "moon"], 0);
        for (text, ok) in [
            ("A.", true),
            ("a", true),
            ("Sun", true),
            ("B. moon", false),
            ("the sun", false),
        ] {
            assert_eq!(judge(&ai2d, &[0, 1], text).correct, ok, "ai2d {text:?}");
        }
    }

    #[test]
    fn rotations_move_the_gold_letter_and_conme_grades_by_substring() {
        let mb = item(Benchmark::MmBench, &["Open", "Closed", "Half"], 1);
        // Rotation 1 shows Closed first.
        let order = rotation(3, 1);
        assert_eq!(order, vec![1, 2, 0]);
        assert!(judge(&mb, &order, "A").correct);
        assert!(!judge(&mb, &order, "B").correct);
        assert!(paper_prompt(&mb, &order).contains("A. Closed\nB. Half\nC. Open"));
        let mut c = item(Benchmark::Conme, &["a red car", "a blue car"], 0);
        c.answer_text = Some("A".into());
        assert!(judge(&c, &[0, 1], "Answer: A").correct);
        assert!(!judge(&c, &[0, 1], "B").correct);
        assert!(judge(&c, &[1, 0], "B").correct);
    }

    #[test]
    fn paper_prompts_follow_the_harness() {
        let vg = item(
            Benchmark::AroVgr,
            &["the horse is on the man", "the man is on the horse"],
            1,
        );
        let p = paper_prompt(&vg, &[0, 1]);
        assert!(p.starts_with("Given one image and two candidate captions (A and B)"));
        assert!(p.contains("\nA.the horse is on the man\nB.the man is on the horse\n\n"));
        let order = item(Benchmark::AroCocoOrder, &["a", "b", "c", "d", "e"], 1);
        let p = paper_prompt(&order, &[0, 1, 2, 3, 4]);
        assert!(
            p.contains("(A, B, C, D and E)") && p.contains("'A', 'B', 'C', 'D' or 'E'"),
            "{p}"
        );
        let mut mb = item(Benchmark::MmBench, &["x", "y"], 0);
        mb.hint = Some("A hint.".into());
        assert_eq!(
            paper_prompt(&mb, &[0, 1]),
            "A hint.\nWhat is it?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly."
        );
        let mut star = item(Benchmark::MmStar, &["x", "y"], 0);
        star.prompt = Some("What is it?\nOptions: A: x, B: y".into());
        assert!(paper_prompt(&star, &[0, 1]).starts_with("What is it?\nOptions: A: x, B: y\n"));
        assert!(paper_prompt(&star, &[1, 0]).starts_with("What is it?\nOptions: A: y, B: x\n"));
        let mme = item(Benchmark::Mme, &["Yes", "No"], 0);
        assert!(
            paper_prompt(&mme, &[0, 1])
                .ends_with("\nAnswer the question using a single word or phrase.")
        );
        assert_eq!(
            "likelihood".parse::<Protocol>().unwrap(),
            Protocol::Likelihood
        );
        assert!("greedy".parse::<Protocol>().is_err());
    }
}
