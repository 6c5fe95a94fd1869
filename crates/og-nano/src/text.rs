//! The world's language: captions, question–answer conversations, and evaluation items in the
//! formats of the real benchmarks (ARO's VG-Relation / VG-Attribution / COCO-Order, MMVP).

use og_fs::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::scene::{Colour, Object, Relation, Scene, Shape, Size};

const NUMBERS: [&str; 6] = ["zero", "one", "two", "three", "four", "five"];

fn pick<'a, T>(rng: &mut SplitMix64, v: &'a [T]) -> &'a T {
    &v[rng.below(v.len())]
}

/// Objects left to right (ties by top to bottom).
fn reading_order(scene: &Scene) -> Vec<&Object> {
    let mut v: Vec<&Object> = scene.objects.iter().collect();
    v.sort_by(|a, b| a.cx.total_cmp(&b.cx).then(a.cy.total_cmp(&b.cy)));
    v
}

/// Pairs of distinct objects with a defined relation, in a fixed order.
pub fn related_pairs(scene: &Scene) -> Vec<(usize, usize, Relation)> {
    let mut v = Vec::new();
    for i in 0..scene.objects.len() {
        for j in 0..scene.objects.len() {
            if i != j
                && let Some(r) = Relation::between(&scene.objects[i], &scene.objects[j])
            {
                v.push((i, j, r));
            }
        }
    }
    v
}

/// "a large red circle, a small blue square and a green triangle. the red circle is left of
/// the blue square."
pub fn caption(scene: &Scene, rng: &mut SplitMix64) -> String {
    let list = object_list(scene);
    let pairs = related_pairs(scene);
    if pairs.is_empty() {
        return format!("{list}.");
    }
    let (i, j, r) = *pick(rng, &pairs);
    let (a, b) = (&scene.objects[i], &scene.objects[j]);
    format!(
        "{list}. the {} is {} the {}.",
        a.noun_phrase(false),
        r.words(),
        b.noun_phrase(false)
    )
}

/// "a large red circle, a small blue square and a green triangle": the objects in reading
/// order.
fn object_list(scene: &Scene) -> String {
    let phrases: Vec<String> = reading_order(scene)
        .iter()
        .map(|o| format!("a {}", o.noun_phrase(true)))
        .collect();
    match phrases.len() {
        1 => phrases[0].clone(),
        n => format!("{} and {}", phrases[..n - 1].join(", "), phrases[n - 1]),
    }
}

/// The scene in words, for language-model pre-training on questions asked about a described
/// scene: the caption's object list and every relation with a clear margin, one sentence each.
pub fn description(scene: &Scene) -> String {
    let mut s = format!("{}.", object_list(scene));
    for (i, j, r) in related_pairs(scene) {
        let (a, b) = (&scene.objects[i], &scene.objects[j]);
        s += &format!(
            " the {} is {} the {}.",
            a.noun_phrase(false),
            r.words(),
            b.noun_phrase(false)
        );
    }
    s
}

/// The kinds of question the SFT conversations ask; each is also evaluated on held-out scenes
/// against its closed set of answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Colour,
    Shape,
    Relation,
    Count,
    Existence,
    Size,
    /// MMVP's question: "is the X left or right of the Y?", answered "left" or "right".
    LeftRight,
}

impl Task {
    pub const ALL: [Task; 7] = [
        Task::Colour,
        Task::Shape,
        Task::Relation,
        Task::Count,
        Task::Existence,
        Task::Size,
        Task::LeftRight,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Task::Colour => "colour",
            Task::Shape => "shape",
            Task::Relation => "relation",
            Task::Count => "count",
            Task::Existence => "existence",
            Task::Size => "size",
            Task::LeftRight => "left-right",
        }
    }

    /// Every answer the task can have, written exactly as training writes it; `objects` is
    /// the range of object counts a scene can hold.
    pub fn answers(self, objects: std::ops::RangeInclusive<usize>) -> Vec<String> {
        let dot = |w: &str| format!("{w}.");
        match self {
            Task::Colour => Colour::ALL.iter().map(|c| dot(c.word())).collect(),
            Task::Shape => Shape::ALL.iter().map(|s| dot(s.word())).collect(),
            Task::Relation => Relation::ALL.iter().map(|r| dot(r.words())).collect(),
            Task::Count => objects.map(|n| dot(NUMBERS[n])).collect(),
            Task::Existence => vec![dot("yes"), dot("no")],
            Task::Size => vec![dot("small"), dot("large")],
            Task::LeftRight => vec!["left".into(), "right".into()],
        }
    }
}

/// One question of kind `task` about the scene, or `None` when this draw found none (a colour
/// question needs a shape unique in the scene, …). `absent` proposes a (colour, shape) pair
/// for existence questions with a "no" answer.
pub fn ask(
    scene: &Scene,
    task: Task,
    rng: &mut SplitMix64,
    absent: &mut dyn FnMut(&mut SplitMix64) -> (Colour, Shape),
) -> Option<(String, String)> {
    let objs = &scene.objects;
    match task {
        Task::Colour => {
            let o = pick(rng, objs);
            (objs.iter().filter(|p| p.shape == o.shape).count() == 1).then(|| {
                (
                    format!("what colour is the {}?", o.shape.word()),
                    format!("{}.", o.colour.word()),
                )
            })
        }
        Task::Shape => {
            let o = pick(rng, objs);
            (objs.iter().filter(|p| p.colour == o.colour).count() == 1).then(|| {
                (
                    format!("what shape is the {} object?", o.colour.word()),
                    format!("{}.", o.shape.word()),
                )
            })
        }
        Task::Relation => {
            let pairs = related_pairs(scene);
            if pairs.is_empty() {
                return None;
            }
            let (i, j, r) = *pick(rng, &pairs);
            Some((
                format!(
                    "where is the {} relative to the {}?",
                    objs[i].noun_phrase(false),
                    objs[j].noun_phrase(false)
                ),
                format!("{}.", r.words()),
            ))
        }
        Task::Count => Some((
            "how many shapes are there?".into(),
            format!("{}.", NUMBERS[objs.len()]),
        )),
        Task::Existence => {
            if rng.below(2) == 0 {
                let o = pick(rng, objs);
                return Some((
                    format!("is there a {} {}?", o.colour.word(), o.shape.word()),
                    "yes.".into(),
                ));
            }
            let (c, s) = absent(rng);
            (!objs.iter().any(|o| o.colour == c && o.shape == s)).then(|| {
                (
                    format!("is there a {} {}?", c.word(), s.word()),
                    "no.".into(),
                )
            })
        }
        Task::Size => {
            let o = pick(rng, objs);
            let size = match o.size {
                Size::Small => "small",
                Size::Large => "large",
            };
            Some((
                format!("is the {} small or large?", o.noun_phrase(false)),
                format!("{size}."),
            ))
        }
        Task::LeftRight => mmvp_pair(scene, rng).map(|p| {
            let answer = p.options[p.answers[0]].clone();
            (p.question, answer)
        }),
    }
}

/// A question about the scene, its kind drawn by `rng`: (kind, question, answer).
pub fn question(
    scene: &Scene,
    rng: &mut SplitMix64,
    absent: &mut dyn FnMut(&mut SplitMix64) -> (Colour, Shape),
) -> (Task, String, String) {
    loop {
        let task = Task::ALL[rng.below(Task::ALL.len())];
        if let Some((q, a)) = ask(scene, task, rng, absent) {
            return (task, q, a);
        }
    }
}

/// The question as a multiple-choice turn: the task's whole answer set in a shuffled order, in
/// og-eval's letter format; the answer is the right option's letter.
pub fn multiple_choice(
    task: Task,
    question: &str,
    answer: &str,
    objects: std::ops::RangeInclusive<usize>,
    rng: &mut SplitMix64,
) -> (String, String) {
    let mut options = task.answers(objects);
    for k in (1..options.len()).rev() {
        options.swap(k, rng.below(k + 1));
    }
    let shown: Vec<&str> = options.iter().map(String::as_str).collect();
    let right = options.iter().position(|o| o == answer).unwrap_or(0);
    (
        og_eval::protocol::letter_prompt(None, question, &shown),
        og_eval::item::letter(right).to_string(),
    )
}

/// One item per task for the scene where a question of that kind exists (up to 20 draws
/// each): the training question and the task's closed answer set, in og-eval's `mcq` layout.
pub fn task_items(
    scene: &Scene,
    image: &str,
    id: &str,
    objects: std::ops::RangeInclusive<usize>,
    rng: &mut SplitMix64,
    absent: &mut dyn FnMut(&mut SplitMix64) -> (Colour, Shape),
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for task in Task::ALL {
        let Some((q, a)) = (0..20).find_map(|_| ask(scene, task, rng, absent)) else {
            continue;
        };
        let options = task.answers(objects.clone());
        let answer = options
            .iter()
            .position(|o| *o == a)
            .expect("closed answer set");
        out.push(serde_json::json!({
            "id": format!("{id}-{}", task.name()), "image": image, "question": q,
            "options": options, "answer": answer, "category": task.name(),
        }));
    }
    out
}

/// An ARO VG-Relation item (`true_caption` vs the caption with the objects swapped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelationItem {
    pub image_path: String,
    pub true_caption: String,
    pub false_caption: String,
    pub relation_name: String,
}

/// An ARO VG-Attribution item (colours swapped between two objects).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionItem {
    pub image_path: String,
    pub true_caption: String,
    pub false_caption: String,
    pub attributes: [String; 2],
}

/// An ARO COCO/Flickr-Order item: `caption_options[0]` is right, the others are perturbed
/// word orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderItem {
    pub image_path: String,
    pub caption_options: Vec<String>,
}

pub fn relation_item(
    scene: &Scene,
    image_path: &str,
    rng: &mut SplitMix64,
) -> Option<RelationItem> {
    let pairs = related_pairs(scene);
    if pairs.is_empty() {
        return None;
    }
    let (i, j, r) = *pick(rng, &pairs);
    let (a, b) = (
        scene.objects[i].noun_phrase(false),
        scene.objects[j].noun_phrase(false),
    );
    Some(RelationItem {
        image_path: image_path.into(),
        true_caption: format!("the {a} is {} the {b}", r.words()),
        false_caption: format!("the {b} is {} the {a}", r.words()),
        relation_name: r.words().into(),
    })
}

pub fn attribution_item(
    scene: &Scene,
    image_path: &str,
    rng: &mut SplitMix64,
) -> Option<AttributionItem> {
    let objs = &scene.objects;
    let mut pairs = Vec::new();
    for i in 0..objs.len() {
        for j in i + 1..objs.len() {
            let (a, b) = (&objs[i], &objs[j]);
            // Swapping colours must give a different, nameable scene.
            if a.colour != b.colour && a.shape != b.shape {
                pairs.push((i, j));
            }
        }
    }
    if pairs.is_empty() {
        return None;
    }
    let (i, j) = *pick(rng, &pairs);
    let (a, b) = (&objs[i], &objs[j]);
    Some(AttributionItem {
        image_path: image_path.into(),
        true_caption: format!(
            "the {} {} and the {} {}",
            a.colour.word(),
            a.shape.word(),
            b.colour.word(),
            b.shape.word()
        ),
        false_caption: format!(
            "the {} {} and the {} {}",
            b.colour.word(),
            a.shape.word(),
            a.colour.word(),
            b.shape.word()
        ),
        attributes: [a.colour.word().into(), b.colour.word().into()],
    })
}

/// The caption's first sentence and four perturbations of its word order (ARO's: shuffle
/// nouns and adjectives, shuffle everything else, reverse, shuffle trigrams).
pub fn order_item(scene: &Scene, image_path: &str, rng: &mut SplitMix64) -> OrderItem {
    let text = caption(scene, rng);
    let first = text.split('.').next().unwrap_or("").trim().to_string();
    let words: Vec<&str> = first.split(' ').collect();
    let content = |w: &str| {
        Shape::ALL
            .iter()
            .any(|s| s.word() == w.trim_end_matches(','))
            || Colour::ALL.iter().any(|c| c.word() == w)
            || matches!(w, "small" | "large" | "striped")
    };
    let shuffle = |idx: &mut Vec<usize>, rng: &mut SplitMix64| {
        for k in (1..idx.len()).rev() {
            idx.swap(k, rng.below(k + 1));
        }
    };
    let mut options = vec![first.clone()];
    let mut tries = 0;
    while options.len() < 5 && tries < 50 {
        tries += 1;
        let kind = options.len();
        let mut out: Vec<&str> = words.clone();
        match kind {
            1 | 2 => {
                let mut pos: Vec<usize> = (0..words.len())
                    .filter(|&k| content(words[k]) == (kind == 1))
                    .collect();
                let orig = pos.clone();
                shuffle(&mut pos, rng);
                for (a, b) in orig.iter().zip(&pos) {
                    out[*a] = words[*b];
                }
            }
            3 => out.reverse(),
            _ => {
                let mut chunks: Vec<Vec<&str>> = words.chunks(3).map(|c| c.to_vec()).collect();
                let mut idx: Vec<usize> = (0..chunks.len()).collect();
                shuffle(&mut idx, rng);
                out = idx
                    .iter()
                    .flat_map(|&k| std::mem::take(&mut chunks[k]))
                    .collect();
            }
        }
        let s = out.join(" ");
        if !options.contains(&s) {
            options.push(s);
        }
    }
    OrderItem {
        image_path: image_path.into(),
        caption_options: options,
    }
}

/// An MMVP-style pair question: asked of two images that differ (one mirrored), with options
/// `(a)` and `(b)` and the right answer for each image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmvpPair {
    pub question: String,
    pub options: [String; 2],
    /// Index into `options` of the right answer for the original and the mirrored image.
    pub answers: [usize; 2],
}

/// A left/right question whose answer flips under a horizontal mirror.
pub fn mmvp_pair(scene: &Scene, rng: &mut SplitMix64) -> Option<MmvpPair> {
    let pairs: Vec<(usize, usize, Relation)> = related_pairs(scene)
        .into_iter()
        .filter(|p| matches!(p.2, Relation::LeftOf | Relation::RightOf))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let (i, j, r) = *pick(rng, &pairs);
    let (a, b) = (
        scene.objects[i].noun_phrase(false),
        scene.objects[j].noun_phrase(false),
    );
    let left = usize::from(r != Relation::LeftOf);
    Some(MmvpPair {
        question: format!("is the {a} left or right of the {b}?"),
        options: ["left".into(), "right".into()],
        answers: [left, 1 - left],
    })
}

/// The scene mirrored left–right.
pub fn mirrored(scene: &Scene) -> Scene {
    let mut s = scene.clone();
    for o in &mut s.objects {
        o.cx = scene.size as f32 - o.cx;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::SceneSpec;

    fn scene(seed: u64) -> Scene {
        let all = |_: Colour, _: Shape| true;
        (seed..)
            .find_map(|s| Scene::sample(&SceneSpec::default(), &mut SplitMix64(s), &all))
            .unwrap()
    }

    #[test]
    fn descriptions_hold_every_object_and_every_relation() {
        for seed in 0..30 {
            let s = scene(seed * 100);
            let d = description(&s);
            let c = caption(&s, &mut SplitMix64(seed));
            assert!(c.starts_with(d.split('.').next().unwrap()), "{c} / {d}");
            let pairs = related_pairs(&s);
            assert_eq!(d.matches('.').count(), 1 + pairs.len(), "{d}");
            for (i, j, r) in pairs {
                let sentence = format!(
                    "the {} is {} the {}.",
                    s.objects[i].noun_phrase(false),
                    r.words(),
                    s.objects[j].noun_phrase(false)
                );
                assert!(d.contains(&sentence), "{d} lacks {sentence}");
            }
        }
    }

    #[test]
    fn captions_questions_and_items_describe_the_scene() {
        for seed in 0..30 {
            let s = scene(seed * 100);
            let mut rng = SplitMix64(seed);
            let c = caption(&s, &mut rng);
            for o in &s.objects {
                assert!(c.contains(&o.noun_phrase(true)), "{c}");
            }
            let mut absent = |r: &mut SplitMix64| (*pick(r, Colour::ALL), *pick(r, Shape::ALL));
            let (task, q, a) = question(&s, &mut rng, &mut absent);
            assert!(q.ends_with('?'), "{q}");
            assert!(task.answers(2..=5).contains(&a), "{task:?}: {a}");
            if let Some(item) = relation_item(&s, "x.png", &mut rng) {
                assert_ne!(item.true_caption, item.false_caption);
            }
            if let Some(item) = attribution_item(&s, "x.png", &mut rng) {
                assert_ne!(item.true_caption, item.false_caption);
            }
            let o = order_item(&s, "x.png", &mut rng);
            assert!(o.caption_options.len() >= 2);
            let mut sorted: Vec<_> = o.caption_options[1].split(' ').collect();
            let mut orig: Vec<_> = o.caption_options[0].split(' ').collect();
            sorted.sort();
            orig.sort();
            assert_eq!(sorted, orig, "perturbations keep the words");
            if let Some(p) = mmvp_pair(&s, &mut rng) {
                assert_ne!(p.answers[0], p.answers[1]);
                let m = mirrored(&s);
                let q = mmvp_pair(&m, &mut SplitMix64(0));
                assert!(q.is_some());
            }
        }
    }
}
