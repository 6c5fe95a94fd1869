//! Every benchmark family read from fixture files in its public layout
//! (fixtures/eval, written by scripts/make_eval_fixtures.py), images decoded.

use std::path::{Path, PathBuf};

use og_eval::item::letter;
use og_eval::score::load_image;
use og_eval::{Benchmark, ImageSource, Item, read_benchmark};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/eval")
}

fn read(bench: Benchmark, rel: &str) -> Vec<Item> {
    let items = read_benchmark(bench, &fixtures().join(rel), None)
        .unwrap_or_else(|e| panic!("{bench}: {e}"));
    for item in &items {
        assert_eq!(item.bench, bench);
        assert!(
            item.answer < item.options.len().max(1),
            "{bench} {}",
            item.id
        );
        let img = load_image(item).unwrap_or_else(|e| panic!("{bench} {}: {e}", item.id));
        assert!(img.width() > 0);
    }
    items
}

#[test]
fn aro_json_crops_to_the_box_and_puts_the_true_caption_second() {
    let items = read(Benchmark::AroVgr, "aro/visual_genome_relation.json");
    assert_eq!(items.len(), 2);
    let first = &items[0];
    assert_eq!(
        first.options,
        vec!["the table is on the cup", "the cup is on the table"]
    );
    assert_eq!((first.answer, first.gold()), (1, "B".to_string()));
    assert_eq!(first.category.as_deref(), Some("on"));
    assert_eq!(first.crop, Some([5.0, 0.0, 5.0, 8.0]));
    // The box covers the blue right half of the 10x8 image.
    let img = load_image(first).unwrap();
    assert_eq!(img.dimensions(), (5, 8));
    assert!(img.pixels().all(|p| p.0 == [0, 0, 255]));
    // A box reaching past the image is padded with black, as PIL's crop does.
    let img = load_image(&items[1]).unwrap();
    assert_eq!(img.dimensions(), (4, 4));
    assert_eq!(img.get_pixel(3, 3).0, [0, 0, 0]);
    let att = read(Benchmark::AroVga, "aro/visual_genome_attribution.json");
    assert_eq!(att[0].category.as_deref(), Some("red-wooden"));
    let pq = read(Benchmark::AroVgr, "aro/vgr_parquet");
    assert_eq!(pq.len(), 2);
    assert_eq!(pq[0].image_name, "a.png");
    assert_eq!(pq[1].image_name, "1.png");
    assert_eq!(pq[1].category.as_deref(), Some("riding"));
    assert!(matches!(pq[0].image, ImageSource::Bytes(_)) && pq[0].crop.is_none());
}

#[test]
fn aro_order_shows_the_true_caption_as_b() {
    let items = read(Benchmark::AroCocoOrder, "aro/coco_order.parquet");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].options.len(), 5);
    assert_eq!(items[0].options[1], "a man rides a horse");
    assert_eq!(items[0].options[0], "a horse rides a man");
    assert_eq!(items[0].gold(), "B");
}

#[test]
fn conme_parses_options_from_the_question_and_keeps_the_answer_text() {
    let items = read(Benchmark::Conme, "conme/data");
    assert_eq!(items.len(), 3);
    assert_eq!(items[0].category.as_deref(), Some("replace-att"));
    assert_eq!(items[0].question, "Which caption fits the image?");
    assert_eq!(items[0].options, vec!["a green field", "a red field"]);
    assert_eq!(items[0].answer, 0);
    // An answer written as the option's text.
    assert_eq!(items[1].options, vec!["blue", "green", "white"]);
    assert_eq!(
        (items[1].answer, items[1].answer_text.as_deref()),
        (1, Some("green"))
    );
    assert_eq!(items[2].category.as_deref(), Some("replace-rel"));
    assert_eq!(items[2].question, "Is the field, or the sky, bigger?");
    assert_eq!(items[2].gold(), "B");
}

#[test]
fn mmvp_reads_mmvp_images_and_pairs() {
    let items = read(Benchmark::Mmvp, "mmvp");
    assert_eq!(items.len(), 4);
    assert_eq!(items[0].image_name, "MMVP Images/1.jpg");
    assert_eq!(items[0].options, vec!["Left", "Right"]);
    assert_eq!((items[0].gold(), items[1].gold()), ("A".into(), "B".into()));
    assert_eq!(items[0].group, items[1].group);
    assert_ne!(items[1].group, items[2].group);
    assert_eq!(
        items[2].question,
        "Are the door's handles, seen from here, on the left?"
    );
    // A missing image is an error naming it, never a silent stand-in.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("mmvp/Questions.csv"),
        dir.path().join("Questions.csv"),
    )
    .unwrap();
    let e = read_benchmark(Benchmark::Mmvp, dir.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("MMVP Images/1.jpg") && e.contains("row 0"),
        "{e}"
    );
}

#[test]
fn cvbench_from_jsonl_and_parquet_with_sources() {
    let items = read(Benchmark::CvBench, "cvbench/test.jsonl");
    assert_eq!(items.len(), 4);
    assert_eq!(items[0].id, "0");
    assert_eq!(items[0].gold(), "B");
    assert_eq!(items[0].options, vec!["3", "2", "1", "0"]);
    assert_eq!(items[0].category.as_deref(), Some("Count"));
    assert_eq!(items[2].source.as_deref(), Some("Omni3D"));
    assert!(items[0].prompt.as_deref().unwrap().ends_with("(D) 0"));
    assert!(matches!(items[0].image, ImageSource::File(_)));
    let pq = read(Benchmark::CvBench, "cvbench/parquet");
    assert_eq!(pq.len(), 2);
    assert_eq!(pq[1].gold(), "A");
    assert_eq!(pq[1].source.as_deref(), Some("COCO"));
}

#[test]
fn ai2d_answers_are_option_indices() {
    let items = read(Benchmark::Ai2d, "ai2d");
    assert_eq!(items.len(), 2);
    assert_eq!((items[0].gold(), items[1].gold()), ("A".into(), "C".into()));
    assert_eq!(items[1].options, vec!["sun", "moon", "earth"]);
}

#[test]
fn mme_pairs_two_questions_per_image_across_shards() {
    let items = read(Benchmark::Mme, "mme");
    assert_eq!(items.len(), 4);
    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "code_reasoning/0020.png#0",
            "code_reasoning/0020.png#1",
            "000000006471.jpg#0",
            "000000006471.jpg#1"
        ]
    );
    assert_eq!(
        (items[0].gold(), items[1].gold()),
        ("Yes".into(), "No".into())
    );
    assert_eq!(items[0].group, items[1].group);
    assert_eq!(items[2].category.as_deref(), Some("existence"));
}

#[test]
fn mmstar_options_come_out_of_the_question() {
    let items = read(Benchmark::MmStar, "mmstar/mmstar.parquet");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].options.len(), 4);
    assert_eq!(items[0].options[2], "The suitcase is beneath the bed.");
    assert_eq!(
        items[0].question,
        "Which option describes the object relationship in the image correctly?"
    );
    assert_eq!(items[1].options, vec!["3:4", "4:3", "1:1"]);
    assert_eq!(
        (items[1].id.as_str(), items[1].gold()),
        ("1", "B".to_string())
    );
}

#[test]
fn mmbench_rows_with_two_to_four_options_missing_hints_and_circular_copies() {
    let items = read(Benchmark::MmBench, "mmbench/MMBench_DEV_EN.tsv");
    assert_eq!(items.len(), 4);
    let n: Vec<usize> = items.iter().map(|i| i.options.len()).collect();
    assert_eq!(n, vec![4, 3, 2, 3]);
    assert_eq!(items[0].hint.as_deref(), Some("The map shows Europe."));
    assert_eq!(items[1].hint, None);
    assert_eq!(
        items[1].question,
        "What season is shown?\n(look at the trees)"
    );
    assert_eq!(items[1].group, items[3].group);
    assert_eq!(items[3].id, "1000001");
    assert_eq!(
        items[3].options[items[3].answer],
        items[1].options[items[1].answer]
    );
    assert_eq!(items[2].gold(), "B");
    assert_eq!(letter(items[0].answer), 'A');
}

#[test]
fn malformed_rows_name_file_row_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("bench.tsv");
    std::fs::write(
        &tsv,
        "index\tquestion\thint\tA\tB\tanswer\tcategory\timage\n0\tq\t\tx\ty\tC\tc\tiVBO\n",
    )
    .unwrap();
    let e = read_benchmark(Benchmark::MmBench, &tsv, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bench.tsv") && e.contains("row 0") && e.contains("answer"),
        "{e}"
    );
    std::fs::write(&tsv, "index\tquestion\tA\tB\tanswer\n0\tq\tx\ty\tA\n").unwrap();
    let e = read_benchmark(Benchmark::MmBench, &tsv, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no column \"image\""), "{e}");
    let csv = dir.path().join("Questions.csv");
    std::fs::write(
        &csv,
        "Index,Question,Options,Correct Answer\n1,q,(a) x (b) y,(c)\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("1.jpg"), b"").unwrap();
    let e = read_benchmark(Benchmark::Mmvp, dir.path(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Correct Answer") && e.contains("row 0"), "{e}");
    let e = read_benchmark(Benchmark::Mme, &dir.path().join("absent"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent") && e.contains("not found"), "{e}");
    // An image cell that is not an image is reported when the item is loaded.
    std::fs::write(
        &tsv,
        "index\tquestion\tA\tB\tanswer\timage\n7\tq\tx\ty\tA\tbm90IGFuIGltYWdl\n",
    )
    .unwrap();
    let items = read_benchmark(Benchmark::MmBench, &tsv, None).unwrap();
    let e = load_image(&items[0]).unwrap_err().to_string();
    assert!(e.contains("mmbench item 7"), "{e}");
}

#[test]
fn mcq_jsonl_takes_index_or_letter_answers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("aro/images/2345.png"),
        dir.path().join("a.png"),
    )
    .unwrap();
    let file = dir.path().join("set.jsonl");
    std::fs::write(
        &file,
        "{\"id\": \"q1\", \"image\": \"a.png\", \"question\": \"what colour?\", \"options\": [\"red.\", \"blue.\"], \"answer\": 1, \"category\": \"colour\", \"split\": \"heldout\"}\n\
         {\"image\": \"a.png\", \"question\": \"how many?\", \"options\": [\"one.\", \"two.\", \"three.\"], \"answer\": \"C\"}\n",
    )
    .unwrap();
    let items = read_benchmark(Benchmark::Mcq, &file, None).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!((items[0].id.as_str(), items[0].answer), ("q1", 1));
    assert_eq!(items[0].split.as_deref(), Some("heldout"));
    assert_eq!((items[1].id.as_str(), items[1].answer), ("1", 2));
    assert!(load_image(&items[1]).is_ok());
}

/// Parquet files on which the parquet crate asserts instead of returning an error (found by
/// `og-fuzz`): each is a typed error naming the file, no panic.
#[test]
fn parquet_files_the_reader_panics_on_are_errors() {
    for (i, bench) in [Benchmark::Mme, Benchmark::MmStar, Benchmark::MmStar]
        .into_iter()
        .enumerate()
    {
        let path = fixtures().join(format!("hostile/panics-{i}.parquet"));
        let e = read_benchmark(bench, &path, None).unwrap_err().to_string();
        assert!(
            e.contains(&format!("panics-{i}.parquet")) && e.contains("malformed parquet"),
            "{e}"
        );
    }
}

/// A dictionary page claiming about a billion values in a few bytes (found by `og-fuzz`): the
/// parquet crate would size its dictionary by the claim and abort the process on the failed
/// allocation; it is a typed error naming the file and the column.
#[test]
fn a_forged_dictionary_size_is_an_error_not_an_abort() {
    let path = fixtures().join("hostile/huge-dictionary.parquet");
    let e = read_benchmark(Benchmark::AroCocoOrder, &path, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("huge-dictionary.parquet") && e.contains("dictionary page claiming"),
        "{e}"
    );
}
