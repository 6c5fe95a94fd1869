#!/usr/bin/env python3
"""Talks to `og-llava serve` with the official `openai` Python client (pip install openai):
a plain and a streamed completion of the same greedy request (they must agree), the OG path
with masks given inline, usage, and the typed errors the client raises for a bad image and an
unknown model.

    python3 scripts/openai_client.py --base-url http://127.0.0.1:8080/v1 --image IMG \
        [--masks MASKS.json] [--question TEXT] [--max-tokens N]
"""
import argparse
import base64
import json
import mimetypes

import openai


def image_part(path, masks=None):
    mime = mimetypes.guess_type(path)[0] or "image/png"
    with open(path, "rb") as f:
        url = f"data:{mime};base64,{base64.b64encode(f.read()).decode()}"
    part = {"type": "image_url", "image_url": {"url": url}}
    if masks is not None:
        part["masks"] = masks
    return part


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--image", required=True)
    ap.add_argument("--masks")
    ap.add_argument("--question", default="what is in the image?")
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key="unused")
    model = client.models.list().data[0].id
    print("model:", model)

    def messages(masks=None):
        return [{"role": "user",
                 "content": [image_part(a.image, masks), {"type": "text", "text": a.question}]}]

    plain = client.chat.completions.create(
        model=model, messages=messages(), max_tokens=a.max_tokens, temperature=0)
    text = plain.choices[0].message.content
    print(f"plain: {text!r} ({plain.choices[0].finish_reason}, {plain.usage})")
    stream = client.chat.completions.create(
        model=model, messages=messages(), max_tokens=a.max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    streamed = "".join(pieces)
    print(f"streamed: {streamed!r} in {len(pieces)} pieces ({usage})")
    assert streamed == text, "the stream differs from the plain completion"
    assert usage.completion_tokens == plain.usage.completion_tokens

    if a.masks:
        with open(a.masks) as f:
            masks = json.load(f)
        og = client.chat.completions.create(
            model=model, messages=messages(masks), max_tokens=a.max_tokens, temperature=0)
        print(f"OG path ({len(masks)} masks): {og.choices[0].message.content!r} ({og.usage})")

    bad = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
        {"type": "text", "text": a.question}]}]
    try:
        client.chat.completions.create(model=model, messages=bad, max_tokens=4)
        raise SystemExit("a bad image was accepted")
    except openai.BadRequestError as e:
        print("bad image:", e.status_code, e.body["code"])
    try:
        client.chat.completions.create(model="no-such-model", messages=messages(), max_tokens=4)
        raise SystemExit("an unknown model was accepted")
    except openai.NotFoundError as e:
        print("unknown model:", e.status_code, e.body["code"])
    print("ok")


if __name__ == "__main__":
    main()
