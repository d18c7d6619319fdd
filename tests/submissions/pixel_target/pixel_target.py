"""Sets the red value of pixel (0, 0) to target - 2, which the test's pixel defense reads as the label.

Logs the input listing and target_class.csv to $HGD_TEST_MARKER if set.
"""
import csv
import os
import sys

from PIL import Image

in_dir, out_dir, eps = sys.argv[1:4]
with open(os.path.join(in_dir, "target_class.csv"), newline="") as f:
    targets = {row[0]: int(row[1]) for row in csv.reader(f) if len(row) >= 2}
marker = os.environ.get("HGD_TEST_MARKER")
if marker:
    with open(marker, "a") as f:
        f.write(f"pixel_target eps={eps} {' '.join(sorted(os.listdir(in_dir)))} "
                f"targets={';'.join(f'{k}:{v}' for k, v in sorted(targets.items()))}\n")
for name, target in targets.items():
    with Image.open(os.path.join(in_dir, name)) as im:
        im = im.convert("RGB")
    r, g, b = im.getpixel((0, 0))
    im.putpixel((0, 0), (max(0, min(255, target - 2)), g, b))
    im.save(os.path.join(out_dir, name), format="PNG")
