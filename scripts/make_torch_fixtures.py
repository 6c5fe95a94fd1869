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
