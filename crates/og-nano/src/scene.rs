//! Scenes: 2–5 coloured shapes with sizes, optional stripes, positions without heavy overlap;
//! rendered with 4×4 supersampling (anti-aliased edges) together with their visible instance
//! masks (a pixel belongs to an object when most of its sub-samples show it).

use og_fs::SplitMix64;
use og_segment::Bitmap;
use serde::{Deserialize, Serialize};

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($v),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The word used in captions and questions.
            pub fn word(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }
    };
}

named_enum!(
    /// Object shapes.
    Shape { Circle => "circle", Square => "square", Triangle => "triangle", Diamond => "diamond", Cross => "cross" }
);
named_enum!(
    /// Object colours.
    Colour { Red => "red", Green => "green", Blue => "blue", Yellow => "yellow", Purple => "purple", Orange => "orange", Cyan => "cyan", White => "white" }
);
named_enum!(
    /// Object sizes (radius 11–13% or 17–20% of the image side).
    Size { Small => "small", Large => "large" }
);
named_enum!(
    /// Surface: plain, or stripes of the colour and a darker shade.
    Texture { Plain => "plain", Striped => "striped" }
);

impl Colour {
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 180, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [235, 215, 40],
            Colour::Purple => [150, 60, 190],
            Colour::Orange => [245, 140, 30],
            Colour::Cyan => [40, 200, 210],
            Colour::White => [245, 245, 245],
        }
    }
}

/// One object: what it is and where (centre and radius in pixels).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub texture: Texture,
    pub cx: f32,
    pub cy: f32,
    pub r: f32,
}

impl Object {
    /// Whether the point (x, y) (pixel units, continuous) lies inside the shape.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = ((x - self.cx) / self.r, (y - self.cy) / self.r);
        match self.shape {
            Shape::Circle => dx * dx + dy * dy <= 1.0,
            Shape::Square => dx.abs() <= 0.8 && dy.abs() <= 0.8,
            Shape::Diamond => dx.abs() + dy.abs() <= 1.0,
            Shape::Cross => {
                (dx.abs() <= 0.3 && dy.abs() <= 1.0) || (dy.abs() <= 0.3 && dx.abs() <= 1.0)
            }
            // Upward triangle with apex at the top, base at dy = 0.8.
            Shape::Triangle => (-1.0..=0.8).contains(&dy) && dx.abs() <= (dy + 1.0) / 1.8 * 0.95,
        }
    }

    /// The colour at (x, y) inside the object.
    pub fn colour_at(&self, x: f32, y: f32) -> [u8; 3] {
        let c = self.colour.rgb();
        match self.texture {
            Texture::Plain => c,
            Texture::Striped => {
                let band = ((x + y) / (self.r * 0.35)).floor() as i64;
                if band.rem_euclid(2) == 0 {
                    c
                } else {
                    c.map(|v| (v as f32 * 0.55) as u8)
                }
            }
        }
    }

    /// "large red striped circle" style description (texture only when striped).
    pub fn noun_phrase(&self, with_size: bool) -> String {
        let mut words = Vec::new();
        if with_size {
            words.push(self.size.word());
        }
        words.push(self.colour.word());
        if self.texture == Texture::Striped {
            words.push("striped");
        }
        words.push(self.shape.word());
        words.join(" ")
    }
}

/// A scene: its objects back to front.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub size: u32,
    pub background: [u8; 3],
    pub objects: Vec<Object>,
}

/// What a scene may contain.
#[derive(Debug, Clone)]
pub struct SceneSpec {
    pub size: u32,
    pub min_objects: usize,
    pub max_objects: usize,
    /// Probability that an object is striped.
    pub striped: f64,
    /// Object centres on multiples of this many pixels, one radius per size (0: centres and
    /// radii drawn from continuous ranges). On a lattice of the patch size every object of a
    /// given shape and size covers the same pixels of its patches wherever it stands.
    pub grid: u32,
}

impl Default for SceneSpec {
    fn default() -> Self {
        Self {
            size: 80,
            min_objects: 2,
            max_objects: 5,
            striped: 0.2,
            grid: 0,
        }
    }
}

fn uniform(rng: &mut SplitMix64) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

impl Scene {
    /// Samples a scene whose (colour, shape) pairs all pass `allowed`, with distinct
    /// (colour, shape) pairs so every object can be named unambiguously; centres keep
    /// `0.9 × (r1 + r2)` apart (little overlap). `None` if placement fails (rare; the caller
    /// draws again).
    pub fn sample(
        spec: &SceneSpec,
        rng: &mut SplitMix64,
        allowed: &dyn Fn(Colour, Shape) -> bool,
    ) -> Option<Scene> {
        let n = spec.min_objects + rng.below(spec.max_objects - spec.min_objects + 1);
        let s = spec.size as f32;
        let mut objects: Vec<Object> = Vec::with_capacity(n);
        let mut tries = 0;
        while objects.len() < n {
            tries += 1;
            if tries > 400 {
                return None;
            }
            let shape = Shape::ALL[rng.below(Shape::ALL.len())];
            let colour = Colour::ALL[rng.below(Colour::ALL.len())];
            if !allowed(colour, shape)
                || objects
                    .iter()
                    .any(|o| o.shape == shape && o.colour == colour)
            {
                continue;
            }
            let size = Size::ALL[rng.below(2)];
            let (r, cx, cy) = if spec.grid == 0 {
                let r = s * match size {
                    Size::Small => 0.11 + 0.02 * uniform(rng),
                    Size::Large => 0.17 + 0.03 * uniform(rng),
                };
                let cx = r + (s - 2.0 * r) * uniform(rng);
                let cy = r + (s - 2.0 * r) * uniform(rng);
                (r, cx, cy)
            } else {
                let r = s * match size {
                    Size::Small => 0.12,
                    Size::Large => 0.185,
                };
                let g = spec.grid as f32;
                let (first, last) = ((r / g).ceil() as usize, ((s - r) / g).floor() as usize);
                if last < first {
                    return None;
                }
                let mut on_grid = || (first + rng.below(last - first + 1)) as f32 * g;
                (r, on_grid(), on_grid())
            };
            if objects
                .iter()
                .any(|o| ((o.cx - cx).powi(2) + (o.cy - cy).powi(2)).sqrt() < 0.9 * (o.r + r))
            {
                continue;
            }
            let texture = if (uniform(rng) as f64) < spec.striped {
                Texture::Striped
            } else {
                Texture::Plain
            };
            objects.push(Object {
                shape,
                colour,
                size,
                texture,
                cx,
                cy,
                r,
            });
        }
        let g = 90 + rng.below(60) as u8;
        Some(Scene {
            size: spec.size,
            background: [g, g, g],
            objects,
        })
    }

    /// The image and each object's visible instance mask (objects later in the list cover
    /// earlier ones).
    pub fn render(&self) -> (image::RgbImage, Vec<Bitmap>) {
        const SS: usize = 4;
        let n = self.size as usize;
        let mut img = image::RgbImage::new(self.size, self.size);
        let mut votes = vec![vec![0u8; n * n]; self.objects.len()];
        for y in 0..n {
            for x in 0..n {
                let mut acc = [0u32; 3];
                for sy in 0..SS {
                    for sx in 0..SS {
                        let px = x as f32 + (sx as f32 + 0.5) / SS as f32;
                        let py = y as f32 + (sy as f32 + 0.5) / SS as f32;
                        let top = self
                            .objects
                            .iter()
                            .enumerate()
                            .rev()
                            .find(|(_, o)| o.contains(px, py));
                        let c = match top {
                            Some((k, o)) => {
                                votes[k][y * n + x] += 1;
                                o.colour_at(px, py)
                            }
                            None => self.background,
                        };
                        for ch in 0..3 {
                            acc[ch] += c[ch] as u32;
                        }
                    }
                }
                let div = (SS * SS) as u32;
                img.put_pixel(
                    x as u32,
                    y as u32,
                    image::Rgb(acc.map(|v| ((v + div / 2) / div) as u8)),
                );
            }
        }
        let masks = votes
            .iter()
            .map(|v| Bitmap::from_fn(n, n, |y, x| v[y * n + x] as usize * 2 > SS * SS))
            .collect();
        (img, masks)
    }
}

/// Spatial relation of object a to object b, by centres; `None` unless the label is clear:
/// the dominant axis separates the centres by more than the radius sum and by at least twice
/// the other axis's offset (a diagonal neighbour has no relation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    pub fn words(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    pub fn inverse(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }

    /// The dominant-axis relation of a to b.
    pub fn between(a: &Object, b: &Object) -> Option<Relation> {
        let (dx, dy) = (a.cx - b.cx, a.cy - b.cy);
        let margin = a.r + b.r;
        let (major, minor) = (dx.abs().max(dy.abs()), dx.abs().min(dy.abs()));
        if major <= margin || major < 2.0 * minor {
            return None;
        }
        if dx.abs() >= dy.abs() {
            (dx.abs() > margin).then_some(if dx < 0.0 {
                Relation::LeftOf
            } else {
                Relation::RightOf
            })
        } else {
            (dy.abs() > margin).then_some(if dy < 0.0 {
                Relation::Above
            } else {
                Relation::Below
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(a: [u8; 3], b: [u8; 3]) -> i32 {
        (0..3).map(|i| (a[i] as i32 - b[i] as i32).abs()).sum()
    }

    #[test]
    fn grid_scenes_stand_on_the_lattice_with_one_radius_per_size() {
        let spec = SceneSpec {
            size: 64,
            grid: 8,
            ..Default::default()
        };
        let all = |_: Colour, _: Shape| true;
        let mut seen = 0;
        for seed in 0..40 {
            let Some(scene) = Scene::sample(&spec, &mut SplitMix64(seed), &all) else {
                continue;
            };
            for o in &scene.objects {
                seen += 1;
                assert_eq!(o.cx % 8.0, 0.0, "{o:?}");
                assert_eq!(o.cy % 8.0, 0.0, "{o:?}");
                let r = match o.size {
                    Size::Small => 64.0 * 0.12,
                    Size::Large => 64.0 * 0.185,
                };
                assert_eq!(o.r, r);
                assert!(o.cx >= r && o.cx <= 64.0 - r && o.cy >= r && o.cy <= 64.0 - r);
            }
        }
        assert!(seen > 60, "{seen} objects");
    }

    #[test]
    fn sampling_is_deterministic_and_masks_match_pixels() {
        let spec = SceneSpec {
            striped: 0.0,
            ..Default::default()
        };
        let all = |_: Colour, _: Shape| true;
        let a = Scene::sample(&spec, &mut SplitMix64(9), &all).unwrap();
        let b = Scene::sample(&spec, &mut SplitMix64(9), &all).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Scene::sample(&spec, &mut SplitMix64(10), &all).unwrap());
        for seed in 0..20 {
            let Some(scene) = Scene::sample(&spec, &mut SplitMix64(seed), &all) else {
                continue;
            };
            assert!((2..=5).contains(&scene.objects.len()));
            let (img, masks) = scene.render();
            assert_eq!(masks.len(), scene.objects.len());
            let mut owner = vec![None; 80 * 80];
            for (k, m) in masks.iter().enumerate() {
                assert!(m.count_ones() > 20, "object {k} is visible");
                for y in 0..80 {
                    for x in 0..80 {
                        if m.get(y, x) {
                            assert!(owner[y * 80 + x].is_none(), "masks do not overlap");
                            owner[y * 80 + x] = Some(k);
                            // A mask pixel shows mostly its object's colour.
                            let p = img.get_pixel(x as u32, y as u32).0;
                            let own = dist(p, scene.objects[k].colour.rgb());
                            assert!(
                                own <= dist(p, scene.background),
                                "pixel ({x},{y}) of object {k}"
                            );
                        }
                    }
                }
            }
            // Pixels no mask claims whose 4×4 samples all miss every object are background.
            for y in 0..80 {
                for x in 0..80 {
                    let p = img.get_pixel(x as u32, y as u32).0;
                    let any = scene.objects.iter().any(|o| {
                        (0..4).any(|s| {
                            (0..4).any(|t| {
                                o.contains(
                                    x as f32 + (s as f32 + 0.5) / 4.0,
                                    y as f32 + (t as f32 + 0.5) / 4.0,
                                )
                            })
                        })
                    });
                    if !any {
                        assert_eq!(p, scene.background);
                        assert!(owner[y * 80 + x].is_none());
                    }
                }
            }
        }
    }

    #[test]
    fn allowed_pairs_are_respected_and_relations_invert() {
        let only = |c: Colour, s: Shape| c != Colour::Red || s != Shape::Circle;
        for seed in 0..50 {
            if let Some(s) = Scene::sample(&SceneSpec::default(), &mut SplitMix64(seed), &only) {
                assert!(
                    !s.objects
                        .iter()
                        .any(|o| o.colour == Colour::Red && o.shape == Shape::Circle)
                );
                for a in &s.objects {
                    for b in &s.objects {
                        if let Some(r) = Relation::between(a, b) {
                            assert_eq!(Relation::between(b, a), Some(r.inverse()));
                        }
                    }
                }
            }
        }
    }
}
