#!/usr/bin/env python3
"""Dev-time fixtures for og-eval (tests never run Python).

1. fixtures/eval/<benchmark>/: tiny files in each benchmark's public layout (contents invented
   here, never copied): ARO's JSON with crop boxes and its Hugging Face parquet, CONME's CSVs,
   MMVP's Questions.csv with `MMVP Images/`, CV-Bench's test.jsonl with img/ and its parquet,
   lmms-lab's AI2D and MME parquet (MME in two shards), MMStar's parquet, MMBench's TSV.
2. fixtures/eval/likelihood/: option log-likelihoods of transformers' LlavaForConditionalGeneration
   (fixtures/vision/llava_tiny) for a few multiple-choice rows, under the word-level tokenizer of
   og_llm::testing and the chat template `{{ bos_token }}{% for m in messages %}{{ m['content'] }}
   {% endfor %}` (prompt ids: BOS, the image, the question's words), with the pixel values saved.

Usage: pip install torch transformers safetensors pillow pyarrow pandas
       python3 scripts/make_eval_fixtures.py
"""
import io
import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
OUT = os.path.join(ROOT, "eval")


def png(color, size=(8, 6)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path, color, size=(8, 6)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png(color, size))


IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def image_cell(color, name):
    return {"bytes": png(color), "path": name}


def write_parquet(path, columns, schema):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path, compression="snappy")


def aro():
    d = os.path.join(OUT, "aro")
    # A 10x8 image whose left half is red and right half blue: the crop box picks the blue part.
    img = Image.new("RGB", (10, 8), (255, 0, 0))
    img.paste((0, 0, 255), (5, 0, 10, 8))
    os.makedirs(os.path.join(d, "images"), exist_ok=True)
    img.save(os.path.join(d, "images", "2345.png"))
    rel = [
        {"image_id": "2345", "relation_name": "on", "bbox_x": 5, "bbox_y": 0, "bbox_w": 5, "bbox_h": 8,
         "true_caption": "the cup is on the table", "false_caption": "the table is on the cup",
         "image_path": "2345.png"},
        {"image_id": "2345", "relation_name": "under", "bbox_x": 8, "bbox_y": 6, "bbox_w": 4, "bbox_h": 4,
         "true_caption": "the cat is under the chair", "false_caption": "the chair is under the cat",
         "image_path": "2345.png"},
    ]
    with open(os.path.join(d, "visual_genome_relation.json"), "w") as f:
        json.dump(rel, f)
    att = [{"image_id": "2345", "attributes": ["red", "wooden"], "bbox_x": 0, "bbox_y": 0, "bbox_w": 5,
            "bbox_h": 8, "true_caption": "the red cup and the wooden table",
            "false_caption": "the wooden cup and the red table", "image_path": "2345.png"}]
    with open(os.path.join(d, "visual_genome_attribution.json"), "w") as f:
        json.dump(att, f)
    schema = pa.schema([("image", IMAGE), ("true_caption", pa.string()), ("false_caption", pa.string()),
                        ("relation_name", pa.string())])
    write_parquet(os.path.join(d, "vgr_parquet", "test-00000-of-00001.parquet"), {
        "image": [image_cell((1, 2, 3), "a.png"), image_cell((4, 5, 6), None)],
        "true_caption": ["a dog on a mat", "a man riding a horse"],
        "false_caption": ["a mat on a dog", "a horse riding a man"],
        "relation_name": ["on", "riding"],
    }, schema)
    schema = pa.schema([("images", IMAGE), ("correct_caption", pa.string())] +
                       [(f"hard_text_{k}", pa.string()) for k in range(1, 5)])
    write_parquet(os.path.join(d, "coco_order.parquet"), {
        "images": [image_cell((9, 9, 9), "coco.png")],
        "correct_caption": ["a man rides a horse"],
        "hard_text_1": ["a horse rides a man"],
        "hard_text_2": ["rides a man a horse"],
        "hard_text_3": ["man a rides horse a"],
        "hard_text_4": ["a man horse a rides"],
    }, schema)


def conme():
    d = os.path.join(OUT, "conme")
    save_png(os.path.join(d, "images", "val2017", "1.png"), (10, 200, 10))
    att = pd.DataFrame({
        "image": ["images/val2017/1.png", "images/val2017/1.png"],
        "question": ["Which caption fits the image?\nA. a green field\nB. a red field",
                     "What colour is the grass?\n(A) blue\n(B) green\n(C) white"],
        "answer": ["A", "green"],
    })
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    att.to_csv(os.path.join(d, "data", "replace-att.csv"), index=False)
    rel = pd.DataFrame({"image": ["images/val2017/1.png"],
                        "question": ["Is the field, or the sky, bigger?\nA. the field\nB. the sky"],
                        "answer": ["B"]})
    rel.to_csv(os.path.join(d, "data", "replace-rel.csv"), index=False)


def mmvp():
    d = os.path.join(OUT, "mmvp")
    os.makedirs(os.path.join(d, "MMVP Images"), exist_ok=True)
    for i in range(1, 5):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(os.path.join(d, "MMVP Images", f"{i}.jpg"))
    pd.DataFrame({
        "Index": [1, 2, 3, 4],
        "Question": ["Is the dog facing left or right?", "Is the dog facing left or right?",
                     "Are the door's handles, seen from here, on the left?", "Is the door open?"],
        "Options": ["(a) Left (b) Right", "(a) Left (b) Right", "(a) Yes (b) No", "(a) Yes (b) No"],
        "Correct Answer": ["(a)", "(b)", "(b)", "(a)"],
    }).to_csv(os.path.join(d, "Questions.csv"), index=False)


def cvbench():
    d = os.path.join(OUT, "cvbench")
    rows = []
    specs = [("2D", "Count", "ADE20K", ["3", "2", "1", "0"], "(B)"),
             ("2D", "Relation", "COCO", ["left", "right"], "(A)"),
             ("3D", "Depth", "Omni3D", ["lamp", "chair"], "(B)"),
             ("3D", "Distance", "Omni3D", ["table", "sofa"], "(A)")]
    for idx, (typ, task, source, choices, answer) in enumerate(specs):
        name = f"img/{typ}/{task.lower()}/{source.lower()}_{idx}.png"
        save_png(os.path.join(d, name), (idx * 50, 100, 100))
        question = f"Which {task.lower()} fits?"
        listed = "\n".join(f"({chr(65 + k)}) {c}" for k, c in enumerate(choices))
        rows.append({"idx": idx, "type": typ, "task": task, "image": name, "question": question,
                     "choices": choices, "answer": answer,
                     "prompt": f"{question} Select from the following choices.\n{listed}",
                     "filename": name, "source": source, "source_dataset": f"{source} set",
                     "source_filename": f"{idx}.jpg", "target_class": None, "target_size": None, "bbox": None})
    with open(os.path.join(d, "test.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    schema = pa.schema([("idx", pa.int32()), ("type", pa.string()), ("task", pa.string()), ("image", IMAGE),
                        ("question", pa.string()), ("choices", pa.list_(pa.string())),
                        ("answer", pa.string()), ("prompt", pa.string()), ("source", pa.string())])
    write_parquet(os.path.join(d, "parquet", "test_2d.parquet"), {
        "idx": [r["idx"] for r in rows[:2]], "type": [r["type"] for r in rows[:2]],
        "task": [r["task"] for r in rows[:2]],
        "image": [image_cell((r["idx"], 1, 1), r["filename"]) for r in rows[:2]],
        "question": [r["question"] for r in rows[:2]], "choices": [r["choices"] for r in rows[:2]],
        "answer": [r["answer"] for r in rows[:2]], "prompt": [r["prompt"] for r in rows[:2]],
        "source": [r["source"] for r in rows[:2]],
    }, schema)


def ai2d():
    schema = pa.schema([("question", pa.string()), ("options", pa.list_(pa.string())),
                        ("answer", pa.string()), ("image", IMAGE)])
    write_parquet(os.path.join(OUT, "ai2d", "data", "test-00000-of-00001.parquet"), {
        "question": ["Which stage comes after the egg?", "What does the arrow point to?"],
        "options": [["larva", "adult", "pupa", "egg"], ["sun", "moon", "earth"]],
        "answer": ["0", "2"],
        "image": [image_cell((0, 0, 0), None), image_cell((255, 255, 255), None)],
    }, schema)


def mme():
    schema = pa.schema([("question_id", pa.string()), ("image", IMAGE), ("question", pa.string()),
                        ("answer", pa.string()), ("category", pa.string())])
    shards = [
        [("code_reasoning/0020.png", "Is the output 3? Please answer yes or no.", "Yes", "code_reasoning"),
         ("code_reasoning/0020.png", "Is the output 4? Please answer yes or no.", "No", "code_reasoning")],
        [("000000006471.jpg", "Is there a dog in this image? Please answer yes or no.", "Yes", "existence"),
         ("000000006471.jpg", "Is there a cat in this image? Please answer yes or no.", "No", "existence")],
    ]
    for k, rows in enumerate(shards):
        write_parquet(os.path.join(OUT, "mme", "data", f"test-0000{k}-of-00002.parquet"), {
            "question_id": [r[0] for r in rows],
            "image": [image_cell((k, k, k), None) for _ in rows],
            "question": [r[1] for r in rows], "answer": [r[2] for r in rows],
            "category": [r[3] for r in rows],
        }, schema)


def mmstar():
    meta = pa.struct([("source", pa.string()), ("split", pa.string()), ("image_path", pa.string())])
    schema = pa.schema([("index", pa.int64()), ("question", pa.string()), ("image", IMAGE),
                        ("answer", pa.string()), ("category", pa.string()), ("l2_category", pa.string()),
                        ("meta_info", meta)])
    write_parquet(os.path.join(OUT, "mmstar", "mmstar.parquet"), {
        "index": [0, 1],
        "question": ["Which option describes the object relationship in the image correctly?\n"
                     "Options: A: The suitcase is on the book., B: The suitcase is beneath the cat., "
                     "C: The suitcase is beneath the bed., D: The suitcase is beneath the book.",
                     "What is the ratio of width to height?\nOptions: A: 3:4, B: 4:3, C: 1:1"],
        "image": [image_cell((3, 3, 3), None), image_cell((4, 4, 4), None)],
        "answer": ["A", "B"], "category": ["coarse perception", "math"],
        "l2_category": ["image scene and topic", "geometry"],
        "meta_info": [{"source": "MMBench", "split": "val", "image_path": "images/0.jpg"},
                      {"source": "MathVista", "split": "testmini", "image_path": "images/1.jpg"}],
    }, schema)


def mmbench():
    import base64
    b64 = lambda c: base64.b64encode(png(c)).decode()
    df = pd.DataFrame({
        "index": [0, 1, 2, 1000001],
        "question": ["Which is the capital of France?", "What season is shown?\n(look at the trees)",
                     "Is the light on?", "What season is shown?\n(look at the trees)"],
        "hint": ["The map shows Europe.", None, None, None],
        "A": ["Paris", "winter", "yes", "summer"],
        "B": ["Rome", "summer", "no", "autumn"],
        "C": ["Berlin", "autumn", None, "winter"],
        "D": ["Madrid", None, None, None],
        "answer": ["A", "B", "B", "A"],
        "category": ["geography", "season", "light", "season"],
        "image": [b64((1, 1, 1)), b64((2, 2, 2)), b64((3, 3, 3)), b64((2, 2, 2))],
        "source": ["s", "s", "s", "s"], "l2-category": ["k", "k", "k", "k"],
        "comment": [None, None, None, None], "split": ["dev"] * 4,
    })
    os.makedirs(os.path.join(OUT, "mmbench"), exist_ok=True)
    df.to_csv(os.path.join(OUT, "mmbench", "MMBench_DEV_EN.tsv"), sep="\t", index=False)


def likelihood():
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(os.path.join(ROOT, "vision", "llava_tiny")).eval()
    img, v, bos, eos = model.config.image_token_index, 25, 1, 2
    words = lambda s: [int(w[1:]) for w in s.split()]
    rows = [
        {"question": "w5 w6 w7", "options": ["w10 w11", "w12", "w13 w14 w15"]},
        {"question": "w20 w21", "options": ["w30", "w31 w32"]},
        {"question": "w40 w41 w42 w43", "options": ["w50", "w51", "w52", "w53"]},
    ]
    torch.manual_seed(5)
    pixel_values = torch.randn(1, 3, 30, 30)
    for row in rows:
        prompt = [bos, img] + words(row["question"])
        expanded = [bos] + [img] * v + words(row["question"])
        sums = []
        for option in row["options"]:
            cand = words(option) + [eos]
            ids = torch.tensor([expanded + cand])
            with torch.no_grad():
                logits = model(input_ids=ids, pixel_values=pixel_values).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            start = len(expanded)
            sums.append(sum(logp[start - 1 + k, t].item() for k, t in enumerate(cand)))
        row["prompt_ids"] = prompt
        row["sums"] = sums
    d = os.path.join(OUT, "likelihood")
    os.makedirs(d, exist_ok=True)
    save_file({"pixel_values": pixel_values.contiguous()}, os.path.join(d, "pixel_values.safetensors"))
    with open(os.path.join(d, "rows.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("likelihood rows:", [r["sums"] for r in rows])


def main():
    aro()
    conme()
    mmvp()
    cvbench()
    ai2d()
    mme()
    mmstar()
    mmbench()
    likelihood()
    print("eval fixtures written to", OUT)


if __name__ == "__main__":
    main()
