#!/usr/bin/env python3
"""Dev-time fixture for og-llm's tokenizer and chat template (tests never run Python).

Uses the real Llama-3 tokenizer (fixtures/tokenizers/llama3: tokenizer.json.gz, a gzip of the
shared asset, and tokenizer_config.json) with python `tokenizers` and `transformers`, and writes
fixtures/tokenizers/llama3_cases.json: ids of strings (with and without special tokens), and a
rendered chat (text and ids) with an <image> placeholder.

Usage: pip install tokenizers transformers && python3 scripts/make_tokenizer_fixtures.py
"""
import gzip
import json
import os
import shutil
import tempfile

from tokenizers import Tokenizer
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "tokenizers")

STRINGS = [
    "Hello, my dog is cute",
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\n\n\r\n",
    "digits 1234567890 and 3.14159 and 1,000,000",
    "unicode: café naïve Zürich — “quotes” ‘single’",
    "emoji 😀🚀👩‍👩‍👧 and CJK 日本語の文章 中文 한국어",
    "Ünïcödé ßtraße ΑΒΓ αβγ Привет мир",
    "code: fn main() { println!(\"hi\"); }  // comment",
    "whitespace    runs\t\t\tmixed \n \n  end",
    "<|begin_of_text|>special tokens<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is in the <image>?<|eot_id|>",
    "'s 't 're 've 'm 'll 'd contractions: it's they're I'LL",
    "URL https://example.com/path?q=1&r=2#frag",
    "a" * 40,
    "The red circle is left of the blue square.",
    "Is there a green triangle? Answer: yes",
    "    indented\n        more",
    "mixed123abc456DEF",
]

MESSAGES = [
    {"role": "user", "content": "<image>\nWhat colour is the circle left of the square?"},
    {"role": "assistant", "content": "The circle is red."},
    {"role": "user", "content": "  And the square?  "},
]


def main():
    tmp = tempfile.mkdtemp()
    with gzip.open(os.path.join(ROOT, "llama3", "tokenizer.json.gz"), "rb") as f, \
            open(os.path.join(tmp, "tokenizer.json"), "wb") as g:
        shutil.copyfileobj(f, g)
    shutil.copy(os.path.join(ROOT, "llama3", "tokenizer_config.json"), tmp)
    tok = Tokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(tmp)
    cases = []
    for s in STRINGS:
        cases.append({
            "text": s,
            "ids": tok.encode(s, add_special_tokens=False).ids,
            "ids_special": tok.encode(s, add_special_tokens=True).ids,
            "decoded": tok.decode(tok.encode(s, add_special_tokens=False).ids, skip_special_tokens=False),
        })
    rendered = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = hf.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    out = {"cases": cases, "chat": {"messages": MESSAGES, "rendered": rendered, "ids": list(ids)}}
    with open(os.path.join(ROOT, "llama3_cases.json"), "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
    shutil.rmtree(tmp)
    print(f"{len(cases)} strings, chat of {len(ids)} tokens")


if __name__ == "__main__":
    main()
