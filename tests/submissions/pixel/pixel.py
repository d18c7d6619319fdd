"""Labels each image 2 + the red value of its pixel (0, 0); 0 for an unreadable file.

Logs the names it saw to $HGD_TEST_MARKER if set.
"""
import os
import sys

from PIL import Image

in_dir, out_file = sys.argv[1:3]
names = sorted(os.listdir(in_dir))
marker = os.environ.get("HGD_TEST_MARKER")
if marker:
    with open(marker, "a") as f:
        f.write(f"pixel {' '.join(names)}\n")
lines = []
for name in names:
    try:
        with Image.open(os.path.join(in_dir, name)) as im:
            label = 2 + im.convert("RGB").getpixel((0, 0))[0]
    except Exception:
        label = 0
    lines.append(f"{name},{label}\n")
with open(out_file, "w") as f:
    f.writelines(lines)
