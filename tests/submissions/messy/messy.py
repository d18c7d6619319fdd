"""Writes every kind of broken output, by the input's position k in the sorted listing:

k % 4 == 0: the image at 150x150 (wrong size); 1: a corrupt file; 2: nothing; 3: an exact copy.
Also files with names that were not inputs (foreign.png, IMG999999.png, notes.txt) and a sub-folder.
"""
import os
import shutil
import sys

from PIL import Image

in_dir, out_dir, _eps = sys.argv[1:4]
names = sorted(n for n in os.listdir(in_dir) if n.endswith(".png"))
for k, name in enumerate(names):
    src, dst = os.path.join(in_dir, name), os.path.join(out_dir, name)
    if k % 4 == 0:
        with Image.open(src) as im:
            im.convert("RGB").resize((150, 150)).save(dst, format="PNG")
    elif k % 4 == 1:
        with open(dst, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n this is not a PNG")
    elif k % 4 == 3:
        shutil.copyfile(src, dst)
if names:
    shutil.copyfile(os.path.join(in_dir, names[0]), os.path.join(out_dir, "foreign.png"))
    shutil.copyfile(os.path.join(in_dir, names[0]), os.path.join(out_dir, "IMG999999.png"))
with open(os.path.join(out_dir, "notes.txt"), "w") as f:
    f.write("not an image\n")
os.mkdir(os.path.join(out_dir, "subfolder"))
