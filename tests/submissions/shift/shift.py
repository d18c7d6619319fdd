"""Adds 100 (saturating at 255) to every channel of every input image."""
import os
import sys

from PIL import Image

in_dir, out_dir, _eps = sys.argv[1:4]
for name in sorted(os.listdir(in_dir)):
    with Image.open(os.path.join(in_dir, name)) as im:
        im.convert("RGB").point(lambda v: min(255, v + 100)).save(os.path.join(out_dir, name), format="PNG")
