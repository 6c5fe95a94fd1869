"""Writes fixtures/weights/: torch.save files (zip and legacy layouts) holding views that
share storages, a transposed (non-contiguous) tensor, an offset slice and several dtypes, plus
the same tensors made contiguous in safetensors, for og-weights' reader tests."""
import os, torch
from safetensors.torch import save_file

out = os.path.join(os.path.dirname(__file__), "..", "fixtures", "weights")
os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(0)
base = torch.randn(4, 6, generator=g)
sd = {
    "plain": torch.randn(3, 5, generator=g),
    "transposed": base.t(),                # non-contiguous view of `base`'s storage
    "slice": base[1:3, 2:5],              # offset + strides into the same storage
    "half": torch.randn(2, 3, generator=g).half(),
    "bf16": torch.randn(5, generator=g).bfloat16(),
    "double": torch.randn(2, 2, generator=g).double(),
    "ids": torch.arange(-3, 4, dtype=torch.int64),
    "flags": torch.tensor([True, False, True]),
    "nested.inner": torch.ones(2),
}
torch.save(sd, os.path.join(out, "views_zip.pt"))
torch.save(sd, os.path.join(out, "views_legacy.pt"), _use_new_zipfile_serialization=False)
torch.save({"state_dict": sd}, os.path.join(out, "wrapped.pt"))
expected = {k: (v.float() if v.is_floating_point() else v.long()).contiguous() for k, v in sd.items()}
save_file(expected, os.path.join(out, "views_expected.safetensors"))

# The released learned positional encoding (`mm_masks_pos_encoding.seg_embed`, 301 rows) in a
# released-layout non_lora_trainables.bin, and the connector output the released code computes
# with it (`learnable_positional_encoding_1d`): span s (from 0) of the concatenated groups adds
# row s of the table. No delimiter, so every token lies in a span.
g = torch.Generator().manual_seed(7)
f, d, grid = 4, 6, (2, 3)
projector = torch.nn.Sequential(torch.nn.Linear(f, d), torch.nn.GELU(), torch.nn.Linear(d, d))
with torch.no_grad():
    for p in projector.parameters():
        p.copy_(torch.randn(p.shape, generator=g))
table = torch.randn(301, d, generator=g)
trainables = {f"base_model.model.model.mm_projector.{k}": v for k, v in projector.state_dict().items()}
trainables["base_model.model.model.mm_masks_pos_encoding.seg_embed.weight"] = table
torch.save(trainables, os.path.join(out, "released_pe.bin"))
features = torch.randn(1, grid[0] * grid[1], f, generator=g)
groups = [[0, 1, 4], [2], [3, 5]]
with torch.no_grad():
    y = projector(torch.cat([features[0, grp] for grp in groups], 0))
    seg_idx = torch.cat([torch.full((len(grp),), s, dtype=torch.long) for s, grp in enumerate(groups)])
    expected = (y + table[seg_idx]).unsqueeze(0)
save_file({"features": features, "groups": torch.tensor(sum(groups, [])),
           "group_lengths": torch.tensor([len(grp) for grp in groups]),
           "tokens": expected.contiguous()}, os.path.join(out, "released_pe_io.safetensors"))
