//! `report.html`: the experiment at a glance — results table and bar charts, training loss
//! curves, and sample scenes with their masks and the grid cells each mask keeps.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use og_llava::og_fusion::{Selection, SelectionConfig};
use og_llava::og_segment::MaskSet;
use og_llava::og_vision::FrameConfig;

use crate::experiment::{ExperimentError, ExperimentReport};

const PALETTE: [[u8; 3]; 6] = [
    [255, 64, 64],
    [64, 200, 255],
    [255, 200, 0],
    [160, 255, 80],
    [255, 96, 255],
    [255, 255, 255],
];

fn err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Step {
        step: "report",
        message: e.to_string(),
    }
}

/// A 4× enlarged scene with mask outlines and, per mask, the kept encoder cells tinted.
fn overlay(image: &Path, masks: &Path, patch: usize, out: &Path) -> Result<(), ExperimentError> {
    let img = og_llava::og_vision::load_rgb(image).map_err(err)?;
    let set = MaskSet::read_coco_json(masks).map_err(err)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let frame = FrameConfig {
        pad_to_square: false,
        ..FrameConfig::square(w, patch)
    }
    .frame(w, h)
    .map_err(err)?;
    let sel = Selection::from_masks(&set, &frame, &SelectionConfig::default()).map_err(err)?;
    let grid = sel.grid.1;
    let z = 4;
    let mut big = image::RgbImage::new((w * z) as u32, (h * z) as u32);
    for (x, y, p) in big.enumerate_pixels_mut() {
        *p = *img.get_pixel(x / z as u32, y / z as u32);
    }
    for (k, cells) in sel.per_mask.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        for &cell in cells {
            let (r, q) = (cell as usize / grid, cell as usize % grid);
            for y in r * patch * z..(r + 1) * patch * z {
                for x in q * patch * z..(q + 1) * patch * z {
                    let p = big.get_pixel_mut(x as u32, y as u32);
                    for (v, t) in p.0.iter_mut().zip(c) {
                        *v = ((*v as u16 * 3 + t as u16) / 4) as u8;
                    }
                }
            }
        }
        let bitmap = set.masks()[k].rle.to_bitmap();
        for y in 0..h {
            for x in 0..w {
                let inside = bitmap.get(y, x);
                let edge = inside
                    && (x == 0
                        || y == 0
                        || x + 1 == w
                        || y + 1 == h
                        || !bitmap.get(y - 1, x)
                        || !bitmap.get(y + 1, x)
                        || !bitmap.get(y, x - 1)
                        || !bitmap.get(y, x + 1));
                if edge {
                    for dy in 0..z {
                        for dx in 0..z {
                            big.put_pixel((x * z + dx) as u32, (y * z + dy) as u32, image::Rgb(c));
                        }
                    }
                }
            }
        }
    }
    big.save(out).map_err(err)
}

fn bar_chart(report: &ExperimentReport, bench: &str, split: &str, title: &str) -> String {
    let bars: Vec<(String, f64)> = report
        .evaluations
        .iter()
        .filter_map(|e| {
            e.results
                .accuracy
                .get(bench)
                .and_then(|m| m.get(split))
                .map(|a| {
                    (
                        format!("{}{}", e.arm, if e.masks_at_inference { " +m" } else { "" }),
                        a.value(),
                    )
                })
        })
        .collect();
    let (bw, gap, hgt) = (26.0, 8.0, 160.0);
    let width = 40.0 + bars.len() as f64 * (bw + gap);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-size=\"10\" font-family=\"sans-serif\">\
         <text x=\"4\" y=\"12\" font-size=\"12\">{title}</text>",
        hgt + 110.0
    );
    let y0 = hgt + 20.0;
    let _ = write!(
        s,
        "<line x1=\"30\" y1=\"{y0}\" x2=\"{width}\" y2=\"{y0}\" stroke=\"#888\"/>"
    );
    let chance = y0 - 0.5 * hgt;
    let _ = write!(
        s,
        "<line x1=\"30\" y1=\"{chance}\" x2=\"{width}\" y2=\"{chance}\" stroke=\"#ccc\" stroke-dasharray=\"4\"/>"
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let x = 36.0 + i as f64 * (bw + gap);
        let bh = v * hgt;
        let colour = if label.starts_with("llava") {
            "#999"
        } else {
            "#1f77b4"
        };
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{}\" width=\"{bw}\" height=\"{bh}\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0}</text>\
             <text transform=\"translate({},{}) rotate(60)\">{label}</text>",
            y0 - bh,
            x + bw / 2.0,
            y0 - bh - 3.0,
            100.0 * v,
            x + 4.0,
            y0 + 8.0
        );
    }
    s + "</svg>"
}

/// Writes `report.html` (and its scene pictures under `report/`) into `out`.
pub fn write_html(report: &ExperimentReport, out: &Path) -> Result<PathBuf, ExperimentError> {
    let scenes = sample_scenes(report, out)?;
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>OG-LLaVA nano world</title>\
         <style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}\
         img{margin:4px;image-rendering:pixelated}</style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>OG-LLaVA in the nano world</h1><p>seed {} · {} training scenes of {} px · held-out pairs: {} · \
         vocabulary {} · {:.0} s</p>",
        report.config.seed,
        report.world.align_rows,
        report.config.world.image_size,
        report
            .world
            .heldout
            .iter()
            .map(|(c, s)| format!("{} {}", c.word(), s.word()))
            .collect::<Vec<_>>()
            .join(", "),
        report.vocab_size,
        report.seconds
    );
    html += "<h2>Results (accuracy %, log-likelihood ranking)</h2><pre>";
    html += &crate::experiment::table(report);
    html += "</pre>";
    for (bench, split, title) in [
        ("aro-vgr", "all", "VG-Relation-like"),
        ("aro-vga", "all", "VG-Attribution-like"),
        ("aro-vga", "heldout", "VG-Attribution, held-out pairs"),
        ("aro-coco-order", "all", "COCO-Order-like"),
        ("mmvp", "all", "MMVP-like"),
    ] {
        html += &bar_chart(report, bench, split, title);
    }
    html += "<p>Dashed line: chance for two options. Grey: the LLaVA baseline; blue: OG-LLaVA \
             variants; “+m”: masks given at inference.</p><h2>Sample scenes</h2>\
             <p>Mask outlines and the encoder cells each mask keeps (tinted, patch-aligned Φ).</p>";
    html += &scenes;
    html += &training_section(report, out);
    html += "</body></html>\n";
    let path = out.join("report.html");
    og_segment::write_atomic(&path, html.as_bytes()).map_err(err)?;
    Ok(path)
}

/// The first training scenes with their masks and kept cells drawn over them, written under
/// `report/`; their `<img>` tags.
fn sample_scenes(report: &ExperimentReport, out: &Path) -> Result<String, ExperimentError> {
    let dir = out.join("report");
    std::fs::create_dir_all(&dir).map_err(err)?;
    let world = out.join("world");
    let patch = report.config.vision.patch_size;
    let mut scenes = String::new();
    for k in 0..6 {
        let name = format!("{k:06}");
        let img = world.join(format!("images/train/{name}.png"));
        let masks = world.join(format!("masks/train/{name}.json"));
        if !img.is_file() || !masks.is_file() {
            continue;
        }
        let file = format!("report/scene-{name}.png");
        overlay(&img, &masks, patch, &out.join(&file))?;
        let _ = write!(scenes, "<img src=\"{file}\" width=\"256\">");
    }
    Ok(scenes)
}

/// The training section: every stage's steps and losses, stage 2's loss curves, and the
/// pre-trainings' losses.
fn training_section(report: &ExperimentReport, out: &Path) -> String {
    let mut html = String::from(
        "<h2>Training</h2><table><tr><th>arm</th><th>stage</th><th>steps</th><th>first loss</th>\
         <th>last loss</th><th>seconds</th></tr>",
    );
    for s in &report.stages {
        let _ = write!(
            html,
            "<tr><td style=\"text-align:left\">{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.1}</td></tr>",
            s.arm,
            s.stage,
            s.steps,
            s.first_loss.unwrap_or(f64::NAN),
            s.last_loss.unwrap_or(f64::NAN),
            s.seconds
        );
    }
    html += "</table><p>Loss curves (stage 2):</p>";
    for arm in &report.arms {
        let slug = arm.slug();
        let svg = format!("runs/{slug}-sft/loss.svg");
        if out.join(&svg).is_file() {
            let _ = write!(
                html,
                "<figure style=\"display:inline-block\"><img src=\"{svg}\" width=\"400\"><figcaption>{}</figcaption></figure>",
                arm.name
            );
        }
    }
    let (c0, c1) = report.clip.first_last(10);
    let objective = &report.config.clip_objects;
    let objective = if objective.is_active() {
        let names: Vec<&str> = objective.attributes.iter().map(|a| a.name()).collect();
        format!(
            " (contrastive + {} × object objective: {})",
            objective.weight,
            names.join(", ")
        )
    } else {
        " (contrastive)".to_string()
    };
    let (l0, l1) = report.lm.first_last(10);
    let _ = write!(
        html,
        "<p>Tiny CLIP loss{objective} {c0:.3} → {c1:.3} ({} steps, {:.0} s); tiny Llama LM loss {l0:.3} → {l1:.3} ({} steps, {:.0} s).</p>",
        report.clip.steps, report.clip.seconds, report.lm.steps, report.lm.seconds
    );
    html
}

/// An inline SVG of one cell: the interval as a whisker, the mean as a dot, chance as a red
/// tick, on a 0–100% axis.
fn whisker(c: &crate::summary::Cell, chance: f64) -> String {
    let x = |v: f64| 4.0 + 92.0 * v.clamp(0.0, 1.0);
    format!(
        "<svg width=\"100\" height=\"16\" viewBox=\"0 0 100 16\"><line x1=\"4\" y1=\"8\" x2=\"96\" y2=\"8\" stroke=\"#ddd\"/>\
         <line x1=\"{ch:.1}\" y1=\"1\" x2=\"{ch:.1}\" y2=\"15\" stroke=\"#d33\" stroke-width=\"1.5\"/>\
         <line x1=\"{lo:.1}\" y1=\"8\" x2=\"{hi:.1}\" y2=\"8\" stroke=\"#236\" stroke-width=\"2\"/>\
         <line x1=\"{lo:.1}\" y1=\"4\" x2=\"{lo:.1}\" y2=\"12\" stroke=\"#236\"/><line x1=\"{hi:.1}\" y1=\"4\" x2=\"{hi:.1}\" y2=\"12\" stroke=\"#236\"/>\
         <circle cx=\"{m:.1}\" cy=\"8\" r=\"3\" fill=\"#236\"/></svg>",
        ch = x(chance),
        lo = x(c.ci95[0]),
        hi = x(c.ci95[1]),
        m = x(c.mean)
    )
}

fn summary_table(
    title: &str,
    arms: &[String],
    rows: &std::collections::BTreeMap<String, crate::summary::TaskRow>,
) -> String {
    let mut html = format!(
        "<h2>{title}</h2><table><tr><th style=\"text-align:left\">task</th><th>chance %</th>"
    );
    for a in arms {
        let _ = write!(html, "<th colspan=\"2\">{a}</th>");
    }
    html += "</tr>";
    for (task, row) in rows {
        let _ = write!(
            html,
            "<tr><td style=\"text-align:left\">{task}</td><td>{:.1}</td>",
            100.0 * row.chance
        );
        for a in arms {
            match row.arms.get(a) {
                Some(c) => {
                    let above = c.ci95[0] > row.chance;
                    let _ = write!(
                        html,
                        "<td title=\"seeds: {}\"{}>{:.1} <small>[{:.1}, {:.1}]</small></td><td>{}</td>",
                        c.seeds
                            .iter()
                            .map(|v| format!("{:.1}", 100.0 * v))
                            .collect::<Vec<_>>()
                            .join(", "),
                        if above {
                            " style=\"font-weight:bold\""
                        } else {
                            ""
                        },
                        100.0 * c.mean,
                        100.0 * c.ci95[0],
                        100.0 * c.ci95[1],
                        whisker(c, row.chance)
                    );
                }
                None => html += "<td>–</td><td></td>",
            }
        }
        html += "</tr>";
    }
    html + "</table>"
}

/// `report.html` of a run over several seeds: the tasks table (mean, 95% interval, a whisker
/// against chance per cell), the training-fit table, the paired differences in words, and
/// links to each seed's own report.
pub fn write_summary_html(
    summary: &crate::summary::Summary,
    seed_dirs: &[String],
    seconds: f64,
    out: &Path,
) -> Result<PathBuf, ExperimentError> {
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>OG-LLaVA nano world: summary</title>\
         <style>body{font-family:sans-serif;max-width:1350px;margin:2em auto}table{border-collapse:collapse;margin-bottom:1em}\
         td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;white-space:nowrap;font-size:14px}th{background:#eee}svg{vertical-align:middle}</style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>OG-LLaVA in the nano world</h1><p>{} seeds ({}) · {:.0} s. Accuracy % on held-out \
         evaluation scenes, each arm in its own inference mode (OG arms with masks). Brackets and \
         whiskers: 95% bootstrap interval over evaluation items (stratified by seed); red tick: \
         chance; bold: interval above chance; hover a cell for the per-seed values.</p>",
        summary.seeds.len(),
        summary
            .seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        seconds
    );
    html += &summary_table("Tasks (held-out scenes)", &summary.arms, &summary.tasks);
    html += "<h2>Differences from the LLaVA baseline (paired bootstrap)</h2><ul>";
    let pairs: Vec<_> = summary.differences.iter().zip(&summary.verdicts).collect();
    for (_, v) in pairs.iter().filter(|(d, _)| d.distinguishable) {
        let _ = write!(html, "<li><b>{v}</b></li>");
    }
    let noise: Vec<_> = pairs.iter().filter(|(d, _)| !d.distinguishable).collect();
    let _ = write!(
        html,
        "</ul><details><summary>{} differences not distinguishable from noise</summary><ul>",
        noise.len()
    );
    for (_, v) in noise {
        let _ = write!(html, "<li>{v}</li>");
    }
    html += "</ul></details>";
    html += &summary_table(
        "Fit (the same questions on training scenes, likelihood)",
        &summary.arms,
        &summary.fit,
    );
    html += "<h2>Linear probe of the frozen tiny CLIP</h2><p>Ridge classifiers on each object's \
             mean patch feature (the layer the connector reads), fit on training scenes, scored on \
             evaluation scenes; chance: the majority class. <i>taught</i>: the CLIP's object \
             objective supervised the attribute in pre-training (on training scenes).</p><table><tr><th style=\"text-align:left\">\
             attribute</th><th>chance %</th><th>train %</th><th>test %</th><th>seeds</th></tr>";
    for (k, p) in &summary.probe {
        let taught = if p.taught { " <i>taught</i>" } else { "" };
        let _ = write!(
            html,
            "<tr><td style=\"text-align:left\">{k}{taught}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
            100.0 * p.chance,
            100.0 * p.train,
            100.0 * p.test,
            p.seeds
                .iter()
                .map(|v| format!("{:.1}", 100.0 * v))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    html += "</table><h2>Each seed</h2><ul>";
    for d in seed_dirs {
        let _ = write!(html, "<li><a href=\"{d}/report.html\">{d}</a></li>");
    }
    html += "</ul></body></html>\n";
    let path = out.join("report.html");
    og_segment::write_atomic(&path, html.as_bytes()).map_err(err)?;
    Ok(path)
}
