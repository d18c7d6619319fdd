#!/usr/bin/env python3
"""Regenerate ``sample_data/``: a small, redistributable image set in the exact
format of the NIPS 2017 adversarial competition.

Output (under ``--out``, default ``sample_data``):

* ``images/<ImageId>.png``  299x299 RGB 8-bit PNG; ImageId = first 16 hex chars
  of the SHA-256 of the *source file bytes* (as stored in the wheel).
* ``dev_dataset.csv``       the competition header
  ``ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,AuthorProfileURL``;
  TrueLabel = label0 + 1 (1..1000), TargetClass = deterministic pseudo-random
  class in 1..1000, != TrueLabel.
* ``SOURCES.md``            provenance and licence of every image.

Sources (this script downloads nothing; fetch the wheels first)::

    pip download --no-deps foolbox==3.3.4 -d WHEELS
    pip download --no-deps --only-binary=:all: --python-version 3.11 \\
        --platform manylinux2014_x86_64 scikit-image==0.25.2 -d WHEELS
    # optional, only used to cross-check the ImageNet class names/indexes:
    pip download --no-deps timm -d WHEELS
    python scripts/make_sample_data.py --wheel-dir WHEELS --out sample_data

Any platform wheel of scikit-image 0.25.2 works (the data files are identical).

Processing: decode with Pillow, convert to RGB (embedded ICC profiles are
ignored, i.e. pixels are taken as sRGB), center-crop to the largest square,
resize to 299x299 with Lanczos (as the competition did), save as PNG without
metadata. Deterministic and idempotent: files are only rewritten when their
content changes, and stale ``<16-hex>.png`` files in ``images/`` are removed.
(JPEG decoding may differ by +-1 between libjpeg builds; the ImageIds do not
depend on that, they hash the source bytes.)
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import os
import random
import re
import sys
import zipfile
from dataclasses import dataclass

from PIL import Image

SIZE = 299
TARGET_SEED = "nips17-sample-data-v1"
CSV_HEADER = [
    "ImageId", "URL", "x1", "y1", "x2", "y2", "TrueLabel", "TargetClass",
    "OriginalLandingURL", "License", "Author", "AuthorProfileURL",
]

FOOLBOX_VERSION = "3.3.4"
SKIMAGE_VERSION = "0.25.2"
FOOLBOX_WHEEL_GLOB = f"foolbox-{FOOLBOX_VERSION}-*.whl"
SKIMAGE_WHEEL_GLOB = f"scikit_image-{SKIMAGE_VERSION}-*.whl"
TIMM_WHEEL_GLOB = "timm-*.whl"

MIT_URL = "https://opensource.org/licenses/MIT"
CC0_URL = "https://creativecommons.org/publicdomain/zero/1.0/"

# label0 -> (WordNet id, class name) for every class used here, standard
# 0-based ImageNet order (sorted wnids; Keras / PyTorch order).  Taken from
# timm's imagenet_synsets.txt + imagenet_synset_to_lemma.txt and re-checked
# against them when a timm wheel is present in --wheel-dir.
CLASSES = {
    22: ("n01614925", "bald eagle, American eagle, Haliaeetus leucocephalus"),
    99: ("n01855672", "goose"),
    129: ("n02006656", "spoonbill"),
    243: ("n02108422", "bull mastiff"),
    251: ("n02110341", "dalmatian, coach dog, carriage dog"),
    281: ("n02123045", "tabby, tabby cat"),
    305: ("n02172182", "dung beetle"),
    317: ("n02259212", "leafhopper"),
    438: ("n02815834", "beaker"),
    455: ("n02877765", "bottlecap"),
    471: ("n02950826", "cannon"),
    541: ("n03249569", "drum, membranophone, tympan"),
    559: ("n03376595", "folding chair"),
    609: ("n03594945", "jeep, landrover"),
    630: ("n03680355", "Loafer"),
    741: ("n03998194", "prayer rug, prayer mat"),
    853: ("n04417672", "thatch, thatched roof"),
    915: ("n04613696", "yurt"),
    949: ("n07745940", "strawberry"),
    967: ("n07920052", "espresso"),
    990: ("n12768682", "buckeye, horse chestnut, conker"),
}


@dataclass(frozen=True)
class Source:
    package: str          # PyPI project name
    version: str
    wheel_glob: str
    path: str             # path inside the wheel
    label0: int
    license_url: str
    license_text: str     # licence as stated by the source
    author: str
    author_url: str
    description: str      # what the photo shows / why this label
    origin: str           # where the photo came from before the package


FOOLBOX_NOTE = (
    "ImageNet sample photo redistributed inside the foolbox package; label0 taken "
    "from the file name (foolbox's own label). The package is MIT-licensed; the "
    "original photo copyright is with its (unrecorded) author, and ImageNet's terms "
    "of access are non-commercial research use."
)
FOOLBOX_DESC = {
    0: "a bull mastiff on grass, on a leash",
    1: "red canvas folding (deck) chairs",
    2: "liquid poured into laboratory beakers",
    3: "horse-chestnut (conker) husks on a branch",
    4: "strawberries on a table",
    5: "thatched-roof cottages",
    6: "a silver off-road SUV (jeep class)",
    7: "a blue off-road SUV on rocks (jeep class)",
    8: "yurts among fir trees",
    9: "a 'BAVIK' crown bottle cap",
    10: "a red snare drum (1024x683 source)",
    11: "a black leather lace-up shoe (labelled 'Loafer' by foolbox)",
    12: "arched Ottoman-style stained-glass windows set in a tiled wall; the "
        "foolbox/ImageNet label 'prayer rug' is debatable (the arched, mihrab-like "
        "design resembles one), kept as shipped",
    13: "an old field cannon",
    14: "spoonbills perched on a wire",
    15: "geese on a lawn",
    16: "a dalmatian sniffing the ground",
    17: "a bald eagle in flight",
    18: "a leafhopper on a leaf",
    19: "a dung beetle",
}
FOOLBOX_LABELS = [243, 559, 438, 990, 949, 853, 609, 609, 915, 455,
                  541, 630, 741, 471, 129, 99, 251, 22, 317, 305]

SOURCES: list[Source] = [
    Source(
        package="foolbox", version=FOOLBOX_VERSION, wheel_glob=FOOLBOX_WHEEL_GLOB,
        path=f"foolbox/data/imagenet_{i:02d}_{lab}.jpg", label0=lab,
        license_url=MIT_URL,
        license_text="MIT (foolbox 3.3.4 wheel: `License: MIT License`, "
                     "`Classifier: License :: OSI Approved :: MIT License`, "
                     "LICENSE `Copyright (c) 2020 Jonas Rauber et al.`)",
        author="unknown (ImageNet sample; distributed by Jonas Rauber et al. in foolbox)",
        author_url="https://github.com/bethgelab/foolbox",
        description=FOOLBOX_DESC[i],
        origin=FOOLBOX_NOTE,
    )
    for i, lab in enumerate(FOOLBOX_LABELS)
] + [
    Source(
        package="scikit-image", version=SKIMAGE_VERSION, wheel_glob=SKIMAGE_WHEEL_GLOB,
        path="skimage/data/chelsea.png", label0=281,
        license_url=CC0_URL,
        license_text="CC0 (skimage.data.chelsea docstring: \"No copyright restrictions. "
                     "CC0 by the photographer (Stefan van der Walt).\")",
        author="Stefan van der Walt",
        author_url="https://github.com/scikit-image/scikit-image",
        description="'Chelsea the cat': close-up of a striped tabby cat's face "
                    "(tabby 281 chosen over tiger cat 282 / Egyptian cat 285: the "
                    "classic mackerel-tabby markings with the forehead 'M')",
        origin="scikit-image sample data (skimage.data.chelsea).",
    ),
    Source(
        package="scikit-image", version=SKIMAGE_VERSION, wheel_glob=SKIMAGE_WHEEL_GLOB,
        path="skimage/data/coffee.png", label0=967,
        license_url=CC0_URL,
        license_text="CC0 (skimage.data.coffee docstring: \"No copyright restrictions. "
                     "CC0 by the photographer (Rachel Michetti).\"; photo courtesy of "
                     "Pikolo Espresso Bar)",
        author="Rachel Michetti (courtesy of Pikolo Espresso Bar)",
        author_url="https://github.com/scikit-image/scikit-image",
        description="a small cup of espresso with crema on a saucer with a spoon, "
                    "seen from above (espresso 967 chosen: the drink fills the "
                    "frame; 'cup' 968 would also be defensible, 'coffee mug' 504 "
                    "is wrong for a demitasse on a saucer)",
        origin="scikit-image sample data (skimage.data.coffee).",
    ),
]

# Looked at and deliberately left out (documented in SOURCES.md).
SKIPPED = [
    ("skimage/data/rocket.jpg", "Falcon 9 with DSCOVR on the launch pad (public domain, "
     "SpaceX). No clearly right ImageNet class: 'missile' 657 / 'projectile, missile' 744 "
     "are what classifiers tend to say, but it is a space launch vehicle, not a missile, "
     "and it is not a space shuttle (812)."),
    ("skimage/data/astronaut.png", "portrait of Eileen Collins (public domain, NASA); no "
     "ImageNet class for a person/portrait."),
    ("skimage/data/motorcycle_left.png / motorcycle_right.png", "Middlebury 2014 stereo "
     "pair; no explicit licence stated in scikit-image, and ImageNet-1k has no "
     "'motorcycle' class (only moped / motor scooter)."),
    ("skimage/data/camera.png, horse.png, coins.png, moon.png, ...", "grayscale, "
     "binary, microscopy, texture or astronomy images without an ImageNet class."),
]


def find_wheel(wheel_dir: str, pattern: str, required: bool = True) -> str | None:
    hits = sorted(glob.glob(os.path.join(wheel_dir, pattern)))
    if not hits:
        if required:
            sys.exit(f"error: no wheel matching {pattern!r} in {wheel_dir!r}; "
                     "see the docstring of this script for the pip download commands")
        return None
    return hits[0]


def crop_box(w: int, h: int) -> tuple[int, int, int, int]:
    """Largest centered square, integer pixel box (left, top, right, bottom)."""
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return left, top, left + s, top + s


def process(data: bytes) -> tuple[bytes, tuple[float, float, float, float], tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        w, h = im.size
        rgb = im.convert("RGB")
    box = crop_box(w, h)
    out = rgb.resize((SIZE, SIZE), Image.Resampling.LANCZOS, box=box)
    out.info.clear()  # no ICC profile / dpi / text chunks in the output
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    norm = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
    return buf.getvalue(), norm, (w, h)


def target_class(image_id: str, true_label: int) -> int:
    """Uniform over 1..1000 minus true_label; seeded per image (order-independent)."""
    r = random.Random(f"{TARGET_SEED}:{image_id}").randrange(1, 1000)  # 1..999
    return r + 1 if r >= true_label else r


def fmt(v: float) -> str:
    return f"{v:.9g}"


def write_if_changed(path: str, data: bytes) -> bool:
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return True


def check_classes(timm_wheel: str | None) -> str:
    if timm_wheel is None:
        return "not re-checked (no timm wheel in --wheel-dir)"
    with zipfile.ZipFile(timm_wheel) as z:
        syn = z.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemma = dict(
            line.split("\t", 1)
            for line in z.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode().splitlines()
            if "\t" in line
        )
    if len(syn) != 1000 or syn != sorted(syn):
        sys.exit("error: timm imagenet_synsets.txt is not the sorted 1000-class list")
    for label0, (wnid, name) in CLASSES.items():
        if syn[label0] != wnid or lemma.get(wnid, "").strip() != name:
            sys.exit(f"error: class {label0}: expected {wnid} {name!r}, timm has "
                     f"{syn[label0]} {lemma.get(syn[label0])!r}")
    return f"verified against `{os.path.basename(timm_wheel)}` (timm/data/_info/)"


def md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel-dir", required=True,
                    help="directory holding the downloaded foolbox / scikit-image (/ timm) wheels")
    ap.add_argument("--out", default="sample_data", help="output directory (default: sample_data)")
    args = ap.parse_args(argv)

    wheels = {
        FOOLBOX_WHEEL_GLOB: find_wheel(args.wheel_dir, FOOLBOX_WHEEL_GLOB),
        SKIMAGE_WHEEL_GLOB: find_wheel(args.wheel_dir, SKIMAGE_WHEEL_GLOB),
    }
    class_check = check_classes(find_wheel(args.wheel_dir, TIMM_WHEEL_GLOB, required=False))

    foolbox_license = ""
    with zipfile.ZipFile(wheels[FOOLBOX_WHEEL_GLOB]) as z:
        foolbox_license = z.read(f"foolbox-{FOOLBOX_VERSION}.dist-info/LICENSE").decode().strip()

    img_dir = os.path.join(args.out, "images")
    os.makedirs(img_dir, exist_ok=True)

    rows, records, changed = [], [], 0
    for src in SOURCES:
        with zipfile.ZipFile(wheels[src.wheel_glob]) as z:
            data = z.read(src.path)
        image_id = hashlib.sha256(data).hexdigest()[:16]
        png, (x1, y1, x2, y2), (w, h) = process(data)
        changed += write_if_changed(os.path.join(img_dir, image_id + ".png"), png)
        true_label = src.label0 + 1
        tgt = target_class(image_id, true_label)
        landing = f"https://pypi.org/project/{src.package}/{src.version}/"
        rows.append([
            image_id, f"{landing}#{src.path}", fmt(x1), fmt(y1), fmt(x2), fmt(y2),
            str(true_label), str(tgt), landing, src.license_url, src.author, src.author_url,
        ])
        records.append((src, image_id, (w, h), (x1, y1, x2, y2), true_label, tgt,
                        hashlib.sha256(data).hexdigest()))

    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        sys.exit("error: duplicate ImageIds")

    # remove stale images from earlier runs
    keep = {i + ".png" for i in ids}
    for name in sorted(os.listdir(img_dir)):
        if re.fullmatch(r"[0-9a-f]{16}\.png", name) and name not in keep:
            os.remove(os.path.join(img_dir, name))
            changed += 1

    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(CSV_HEADER)
    wr.writerows(rows)
    changed += write_if_changed(os.path.join(args.out, "dev_dataset.csv"), buf.getvalue().encode())

    md = render_sources_md(records, class_check, foolbox_license, wheels)
    changed += write_if_changed(os.path.join(args.out, "SOURCES.md"), md.encode())

    print(f"{len(rows)} images -> {args.out} ({changed} file(s) written or removed)")
    return 0


def render_sources_md(records, class_check, foolbox_license, wheels) -> str:
    L = []
    L.append("# sample_data: sources and licences\n")
    L.append("Generated by `scripts/make_sample_data.py` - do not edit by hand.\n")
    L.append(
        f"{len(records)} images in the format of the NIPS 2017 adversarial competition "
        "(`images/<ImageId>.png`, 299x299 RGB 8-bit; `dev_dataset.csv` with the competition "
        "header). `TrueLabel` = label0 + 1 (1..1000, TF-Slim order, 0 = background); "
        "label0 = the standard 0-based ImageNet index (sorted WordNet ids, Keras / PyTorch "
        f"order). `TargetClass` = `random.Random(\"{TARGET_SEED}:<ImageId>\")`, uniform over "
        "1..1000 without TrueLabel.\n")
    L.append("## How to regenerate\n")
    L.append("```sh\n"
             f"pip download --no-deps foolbox=={FOOLBOX_VERSION} -d /tmp/wheels\n"
             "pip download --no-deps --only-binary=:all: --python-version 3.11 \\\n"
             f"    --platform manylinux2014_x86_64 scikit-image=={SKIMAGE_VERSION} -d /tmp/wheels\n"
             "pip download --no-deps timm -d /tmp/wheels   # optional: cross-checks class names\n"
             "python scripts/make_sample_data.py --wheel-dir /tmp/wheels --out sample_data\n"
             "```\n")
    L.append("Wheels used: " + ", ".join(f"`{os.path.basename(w)}`" for w in wheels.values())
             + ".\n")
    L.append("## Processing (every image)\n")
    L.append("1. Read the file bytes from the wheel; `ImageId` = first 16 hex chars of their "
             "SHA-256.\n"
             "2. Decode with Pillow and convert to RGB (embedded ICC profiles ignored).\n"
             "3. Center crop to the largest square (the box is `x1,y1,x2,y2` in the CSV, "
             "normalized to 0..1).\n"
             "4. Resize to 299x299 with Lanczos (`PIL.Image.Resampling.LANCZOS`), as the "
             "competition did.\n"
             "5. Save as 8-bit RGB PNG without metadata.\n")
    L.append(f"ImageNet class names / indexes: {class_check}.\n")
    L.append("## Licences\n")
    L.append(
        "- **foolbox 3.3.4** (20 images, `foolbox/data/imagenet_XX_<label0>.jpg`): the wheel's "
        "metadata says `License: MIT License` and `Classifier: License :: OSI Approved :: MIT "
        "License`; its `LICENSE` file is reproduced below. The photos are ImageNet samples "
        "that the foolbox authors redistribute inside the package under that licence (the only "
        "licence the package states; it does not mention the images separately), and they are "
        "redistributed here on the same basis, with the MIT notice kept. Note that the foolbox "
        "authors are not the photographers: the copyright of each original photo is with its "
        "author (not recorded by foolbox), and ImageNet's terms of access are non-commercial "
        "research use - treat these images as research/test fixtures. The package is also on "
        "GitHub: https://github.com/bethgelab/foolbox (same files under `foolbox/data/`).\n"
        "- **scikit-image 0.25.2** (2 images): the package code is BSD-3-Clause "
        "(`LICENSE.txt`, which does not cover the data files); each sample image's licence is "
        "stated in the docstring of its loader in `skimage/data/_fetchers.py`, quoted per image "
        "below (both CC0).\n")
    L.append("## Images\n")
    L.append("| # | ImageId | source (package version: path) | original size | label0 | wnid | class name | TrueLabel | TargetClass | licence |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for n, (src, iid, (w, h), box, tl, tc, _sha) in enumerate(records):
        wnid, name = CLASSES[src.label0]
        lic = "MIT (foolbox)" if src.package == "foolbox" else "CC0"
        L.append(f"| {n} | `{iid}` | {src.package} {src.version}: `{src.path}` | {w}x{h} | "
                 f"{src.label0} | {wnid} | {md_escape(name)} | {tl} | {tc} | {lic} |")
    L.append("")
    L.append("## Per-image details\n")
    for src, iid, (w, h), box, tl, tc, sha in records:
        wnid, name = CLASSES[src.label0]
        L.append(f"### `{iid}` - {os.path.basename(src.path)}\n")
        L.append(f"- Source: `{src.package}=={src.version}` wheel, path `{src.path}` "
                 f"(original filename `{os.path.basename(src.path)}`, {w}x{h}); "
                 f"SHA-256 of the source bytes `{sha}`.")
        L.append(f"- Shows: {src.description}.")
        L.append(f"- Label: label0 {src.label0} = `{wnid}` \"{name}\" -> TrueLabel {tl}; "
                 f"TargetClass {tc}.")
        L.append(f"- Licence: {src.license_text}.")
        L.append(f"- Author: {src.author}. Origin: {src.origin}")
        L.append(f"- Processing: center crop box (pixels) {crop_box(w, h)} = normalized "
                 f"({', '.join(fmt(v) for v in box)}), Lanczos resize to {SIZE}x{SIZE}, PNG.\n")
    L.append("## Looked at and skipped\n")
    for path, why in SKIPPED:
        L.append(f"- `{path}`: {why}")
    L.append("")
    L.append("## foolbox LICENSE (from `foolbox-3.3.4.dist-info/LICENSE`)\n")
    L.append("```\n" + foolbox_license + "\n```\n")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
