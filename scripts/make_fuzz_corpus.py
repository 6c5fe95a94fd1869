"""Writes the seed corpus of `og-fuzz` (fuzz/corpus/<target>/) from the committed fixtures and
small hand-made inputs. Dev-time only: the corpus is committed; tests never run this."""
import json, os, struct, glob, zipfile, io

ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def fixture(*parts):
    with open(os.path.join(ROOT, "fixtures", *parts), "rb") as f:
        return f.read()


# COCO RLE JSON
put("coco_rle_json", "coffee", fixture("examples", "coffee_masks.json"))
put("coco_rle_json", "uncompressed", json.dumps([{"segmentation": {"size": [2, 3], "counts": [1, 4, 1]}, "predicted_iou": 0.9}]))
put("coco_rle_json", "finding-size-overflow", json.dumps([{"segmentation": {"size": [2000000000000000000, 300], "counts": "Xob1X1P5000"}}]))
put("coco_rle_json", "annotations", json.dumps({"annotations": [{"segmentation": {"size": [4, 4], "counts": "0:0"}}]}))

# .npy masks
def npy(descr, shape, data, fortran=False):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, fortran, shape)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data
put("npy", "bool", npy("|b1", "(2, 3)", bytes([1, 0, 1, 0, 0, 1])))
put("npy", "u8_fortran", npy("|u1", "(3, 2)", bytes([0, 1, 1, 0, 1, 1]), True))

# safetensors
def st(tensors):
    header, blobs, off = {}, b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs += raw
        off += len(raw)
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blobs
put("safetensors", "f32", st([("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))]))
put("safetensors", "mixed", st([("a", "BF16", [2], b"\x80\x3f\x00\x40"), ("b", "F16", [1], b"\x00\x3c"), ("i", "I64", [1], struct.pack("<q", 7))]))

# torch.save files and bare pickles
put("torch_pickle", "non_lora_trainables", fixture("llava", "released", "non_lora_trainables.bin"))
for member in ("non_lora_trainables/data.pkl",):
    with zipfile.ZipFile(io.BytesIO(fixture("llava", "released", "non_lora_trainables.bin"))) as z:
        put("torch_pickle", "data_pkl", z.read(member))

# LLaVA rows
put("llava_rows", "rows", json.dumps([
    {"id": "1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]},
    {"id": 2, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
]))

# model configs
put("llama_config", "gqa", fixture("llm", "gqa", "config.json"))
put("clip_config", "clip_vision_tiny", fixture("vision", "clip_vision_tiny", "config.json"))

# benchmarks: one target per format, seeded with the reader tests' fixtures
benchmarks = {
    "aro_json": ("aro", "visual_genome_relation.json"),
    "aro_parquet": ("aro", "coco_order.parquet"),
    "conme_csv": ("conme", "data", "replace-att.csv"),
    "mmvp_csv": ("mmvp", "Questions.csv"),
    "cvbench_jsonl": ("cvbench", "test.jsonl"),
    "mmbench_tsv": ("mmbench", "MMBench_DEV_EN.tsv"),
    "mme_parquet": ("mme", "data", "test-00000-of-00002.parquet"),
    "mmstar_parquet": ("mmstar", "mmstar.parquet"),
}
for target, parts in benchmarks.items():
    put(target, "fixture", fixture("eval", *parts))
# parquet files the parquet crate once asserted on (found by og-fuzz), kept as regressions
for i, target in enumerate(["mme_parquet", "mmstar_parquet", "mmstar_parquet"]):
    put(target, "finding-panic-%d" % i, fixture("eval", "hostile", "panics-%d.parquet" % i))
# a dictionary page claiming a billion values in a few bytes (the parquet crate sized its
# dictionary by the claim and the allocation aborted the process)
put("aro_parquet", "finding-huge-dictionary", fixture("eval", "hostile", "huge-dictionary.parquet"))

# the hub protocol: hello with the token "token", then two frames of 2 values
hello = struct.pack("<5I", 0x4F474842, 2, 2, 1, 5) + b"token"
frame = struct.pack("<Q2f", 2, 1.5, -2.0)
put("hub_protocol", "two_frames", hello + frame + frame)
put("hub_protocol", "hello_only", hello)
