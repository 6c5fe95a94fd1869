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

# model configs: first byte 0 = Llama, 1 = CLIP vision
put("model_config", "llama", b"\x00" + fixture("llm", "gqa", "config.json"))
put("model_config", "clip", b"\x01" + fixture("vision", "clip_vision_tiny", "config.json"))

# benchmarks: first byte picks the format (og-fuzz's FORMATS order)
formats = [
    ("aro", "visual_genome_relation.json"),
    ("aro", "coco_order.parquet"),
    ("conme", "data", "replace-att.csv"),
    ("mmvp", "Questions.csv"),
    ("cvbench", "test.jsonl"),
    ("mmbench", "MMBench_DEV_EN.tsv"),
    ("mme", "data", "test-00000-of-00002.parquet"),
    ("mmstar", "mmstar.parquet"),
]
for i, parts in enumerate(formats):
    put("benchmarks", "%d_%s" % (i, parts[-1].replace(" ", "_")), bytes([i]) + fixture("eval", *parts))

# the hub protocol: hello with the token "token", then two frames of 2 values
hello = struct.pack("<5I", 0x4F474842, 2, 2, 1, 5) + b"token"
frame = struct.pack("<Q2f", 2, 1.5, -2.0)
put("hub_protocol", "two_frames", hello + frame + frame)
put("hub_protocol", "hello_only", hello)
