"""The harness tests' dataset: sample images labelled so the ``pixel`` test defense is right on them.

Shared by the runner's tests on one machine and on a cluster (a helper module, not a test module).
"""

from __future__ import annotations

import pathlib
import shutil

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBMISSIONS = ROOT / "tests" / "submissions"
SAMPLE = ROOT / "sample_data"


def make_dataset(folder: pathlib.Path, n: int) -> dict[str, tuple[int, int]]:
    """The first ``n`` sample images, labelled TrueLabel = 2 + R(0,0), TargetClass = 2 + (R +- 2)."""
    (folder / "images").mkdir(parents=True)
    lines = ["ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,AuthorProfileURL"]
    labels = {}
    for path in sorted((SAMPLE / "images").glob("*.png"))[:n]:
        shutil.copyfile(path, folder / "images" / path.name)
        with Image.open(path) as im:
            red = im.convert("RGB").getpixel((0, 0))[0]
        target = red + 2 if red + 2 <= 255 else red - 2
        labels[path.stem] = (2 + red, 2 + target)
        lines.append(f"{path.stem},u,0,0,1,1,{2 + red},{2 + target},u,l,a,p")
    (folder / "dev_dataset.csv").write_text("\n".join(lines) + "\n")
    return labels
