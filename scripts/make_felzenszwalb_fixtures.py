"""Felzenszwalb parity fixtures: scikit-image's partitions of four public-domain photos.

Each photo (scikit-image's own sample images, from ../shared/assets/images) is shrunk to a
quarter of its size with Pillow and stored as PNG, so the test reads exactly the pixels
scikit-image saw. For every parameter set, scikit-image's label map is stored as a 16-bit
greyscale PNG (one label per pixel), described in manifest.json.

    python scripts/make_felzenszwalb_fixtures.py   # needs scikit-image, pillow, numpy
"""

import json
from pathlib import Path

import numpy as np
import skimage
from PIL import Image
from skimage.segmentation import felzenszwalb

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT.parent / "shared" / "assets" / "images"
OUT = ROOT / "fixtures" / "felzenszwalb"

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
# (scale, sigma, min_size): scikit-image's defaults, its gallery's setting, coarser ones,
# a wide kernel (radius 10) and no smoothing.
PARAMS = [(1.0, 0.8, 20), (100.0, 0.5, 50), (300.0, 1.0, 30), (500.0, 2.5, 100), (50.0, 0.0, 10)]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for photo in PHOTOS:
        im = Image.open(ASSETS / photo).convert("RGB")
        im = im.resize((im.width // 4, im.height // 4), Image.BILINEAR)
        stem = Path(photo).stem
        im.save(OUT / f"{stem}.png")
        rgb = np.asarray(Image.open(OUT / f"{stem}.png").convert("RGB"))
        for i, (scale, sigma, min_size) in enumerate(PARAMS):
            labels = felzenszwalb(rgb, scale=scale, sigma=sigma, min_size=min_size, channel_axis=-1)
            name = f"{stem}_{i}_labels.png"
            Image.fromarray(labels.astype(np.uint16)).save(OUT / name)
            assert (np.asarray(Image.open(OUT / name)) == labels).all()
            cases.append({
                "image": f"{stem}.png", "width": rgb.shape[1], "height": rgb.shape[0],
                "scale": scale, "sigma": sigma, "min_size": min_size,
                "labels": name, "count": int(labels.max()) + 1,
            })
    manifest = {"scikit_image": skimage.__version__, "numpy": np.__version__, "cases": cases}
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(cases)} cases in {OUT}")


if __name__ == "__main__":
    main()
