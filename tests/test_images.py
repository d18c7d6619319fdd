"""Tests for hgd.io.images: every image this toolkit reads or writes passes through it."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hgd.io import images
from hgd.io.competition_csv import read_dataset_csv, read_predictions_csv, write_predictions_csv
from hgd.io.images import Batch, IMAGE_SIZE, ImageError, iter_batches, list_input_files, load_image, save_png

RNG = np.random.default_rng(0)
DATASET_HEADER = (
    "ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,"
    "OriginalLandingURL,License,Author,AuthorProfileURL\n"
)


def rgb(size: int = IMAGE_SIZE) -> np.ndarray:
    return RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path, format="PNG")
    return path


def opened_mode(path: Path) -> str:
    with Image.open(path) as picture:
        return picture.mode


def read_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.array(picture)


# 16-bit colour PNGs: Pillow cannot write them, so build them by hand, using every
# PNG row filter (Sub / Average / Paeth depend on the bytes per pixel) and
# optionally Adam7 interlacing, to exercise real-world encodings.

# Adam7 passes as (x0, y0, dx, dy).
_ADAM7 = (
    (0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)
)
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _filter_rows(rows: np.ndarray, bpp: int) -> bytes:
    """PNG-filters raw scanlines (uint8, one row each), cycling filter types 0..4."""
    out = []
    previous = np.zeros(rows.shape[1], np.int32)
    for index, row in enumerate(rows.astype(np.int32)):
        kind = index % 5
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int32), previous[:-bpp]])
        if kind == 0:
            predicted = np.zeros_like(row)
        elif kind == 1:
            predicted = left
        elif kind == 2:
            predicted = previous
        elif kind == 3:
            predicted = (left + previous) // 2
        else:
            p = left + previous - up_left
            pa, pb, pc = abs(p - left), abs(p - previous), abs(p - up_left)
            predicted = np.where(
                (pa <= pb) & (pa <= pc), left, np.where(pb <= pc, previous, up_left)
            )
        out.append(bytes([kind]) + ((row - predicted) % 256).astype(np.uint8).tobytes())
        previous = row
    return b"".join(out)


def write_png16(path: Path, values: np.ndarray, interlace: bool = False) -> Path:
    """Writes a (h, w) or (h, w, c) uint16 array as a 16-bit PNG (c = 1..4)."""
    values = values.reshape(values.shape[:2] + (-1,))
    height, width, channels = values.shape
    bpp = 2 * channels
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    data = b""
    for x0, y0, dx, dy in passes:
        sub = values[y0::dy, x0::dx]
        if sub.size:
            rows = sub.astype(">u2").reshape(sub.shape[0], -1).view(np.uint8)
            data += _filter_rows(rows, bpp)
    colour_type = _COLOUR_TYPES[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, int(interlace))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(data))
        + _chunk(b"IEND", b"")
    )
    return path


def expected_8bit(values16: np.ndarray) -> np.ndarray:
    return np.round(values16.astype(np.float64) / 257.0).astype(np.uint8)


# ------------------------------------------------------------------------- modes


def test_rgb_png_is_read_exactly(tmp_path):
    pixels = rgb()
    loaded, warnings = load_image(write_png(tmp_path / "a.png", pixels))
    assert loaded.dtype == np.uint8 and loaded.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(loaded, pixels)
    assert warnings == []
    loaded[0, 0] = 0  # the result is the caller's to modify


def test_rgba_drops_alpha_keeping_colour(tmp_path):
    pixels = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    pixels[0, 0, 3] = 0  # fully transparent pixels keep their colour, as convert("RGB")
    loaded, _ = load_image(write_png(tmp_path / "a.png", pixels), size=8)
    np.testing.assert_array_equal(loaded, pixels[:, :, :3])


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_grey_is_replicated_to_three_channels(tmp_path, mode):
    grey = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    if mode == "LA":
        array = np.stack([grey, RNG.integers(0, 256, (8, 8), dtype=np.uint8)], axis=2)
    else:
        array = grey
    Image.fromarray(array, mode).save(tmp_path / "g.png")
    loaded, _ = load_image(tmp_path / "g.png", size=8)
    np.testing.assert_array_equal(loaded, np.repeat(grey[:, :, None], 3, axis=2))


def test_one_bit_becomes_black_and_white(tmp_path):
    bits = RNG.integers(0, 2, (8, 8)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert opened_mode(tmp_path / "b.png") == "1"
    loaded, _ = load_image(tmp_path / "b.png", size=8)
    np.testing.assert_array_equal(loaded, np.repeat(np.where(bits, 255, 0)[:, :, None], 3, 2))


def _palette_image() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = RNG.integers(0, 4, (8, 8), dtype=np.uint8)
    picture = Image.fromarray(indices, "P")
    picture.putpalette(palette.tobytes())
    return picture, palette, indices


@pytest.mark.filterwarnings("error")  # no Pillow UserWarning about palette transparency
@pytest.mark.parametrize("transparency", [None, 2, bytes([0, 128, 255, 7])])
def test_palette_gives_palette_colours(tmp_path, transparency):
    picture, palette, indices = _palette_image()
    params = {} if transparency is None else {"transparency": transparency}
    picture.save(tmp_path / "p.png", **params)
    with Image.open(tmp_path / "p.png") as opened:
        assert opened.mode == "P" and ("transparency" in opened.info) == (transparency is not None)
    loaded, _ = load_image(tmp_path / "p.png", size=8)
    np.testing.assert_array_equal(loaded, palette[indices])


def test_16bit_grey_written_by_pillow_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128, 129, 257, 384, 385, 32896, 65407, 65535]] * 9, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert opened_mode(tmp_path / "g16.png").startswith("I")
    loaded, _ = load_image(tmp_path / "g16.png", size=9)
    want = expected_8bit(values)
    assert list(want[0]) == [0, 0, 1, 1, 1, 1, 128, 255, 255]
    np.testing.assert_array_equal(loaded, np.repeat(want[:, :, None], 3, axis=2))


@pytest.mark.parametrize("interlace", [False, True], ids=["plain", "adam7"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey+alpha", "rgb", "rgba"])
def test_16bit_png_is_rounded_to_8bit(tmp_path, channels, interlace):
    values = RNG.integers(0, 65536, (13, 13, channels), dtype=np.uint16)
    values[0, 0, 0], values[0, 1, 0] = 200, 65407  # v >> 8 would give 0 and 254
    colour = values[:, :, :3] if channels >= 3 else np.repeat(values[:, :, :1], 3, axis=2)
    want = expected_8bit(colour)
    assert np.any(want != colour >> 8), "the test must tell rounding from truncation"
    loaded, _ = load_image(write_png16(tmp_path / "deep.png", values, interlace), size=13)
    np.testing.assert_array_equal(loaded, want)


def test_32bit_integer_grey_is_clipped_to_16bit_then_scaled(tmp_path):
    values = np.array([[-5, 0, 257, 65535, 70000, 2**30]] * 6, dtype=np.int32)
    Image.fromarray(values, "I").save(tmp_path / "deep.tif")
    loaded, warnings = load_image(tmp_path / "deep.tif", size=6)
    assert list(loaded[0, :, 0]) == [0, 0, 1, 255, 255, 255]
    assert warnings == ["deep.tif: decoded as TIFF, not PNG"]


# -------------------------------------------------------------- sizes and formats


def test_wrong_size_is_resized_bicubic_with_a_warning(tmp_path):
    pixels = np.zeros((200, 300, 3), np.uint8) + np.array([10, 200, 77], np.uint8)
    pixels[50:60, 50:60] = 255
    path = write_png(tmp_path / "small one.png", pixels)
    loaded, warnings = load_image(path)
    want = np.asarray(Image.fromarray(pixels).resize((299, 299), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(loaded, want)
    assert loaded[-1, -1].tolist() == [10, 200, 77]
    assert len(warnings) == 1
    assert "small one.png" in warnings[0] and "300x200" in warnings[0]


def test_jpeg_named_png_loads_with_a_warning(tmp_path):
    # It IS an image: the content decides. Lossy, so only approximately equal.
    colour = np.array([30, 140, 220], np.uint8)
    picture = Image.fromarray(np.zeros((299, 299, 3), np.uint8) + colour)
    picture.save(tmp_path / "x.png", format="JPEG")
    loaded, warnings = load_image(tmp_path / "x.png")
    assert np.abs(loaded.astype(int) - colour).max() <= 3
    assert warnings == ["x.png: decoded as JPEG, not PNG"]


def test_animated_image_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    loaded, warnings = load_image(tmp_path / "anim.png", size=4)
    assert loaded[0, 0].tolist() == [255, 0, 0]
    assert warnings == ["anim.png: animated; only the first frame is used"]


def _truncated_png(tmp_path: Path) -> Path:
    data = (write_png(tmp_path / "full.png", rgb())).read_bytes()
    (tmp_path / "full.png").unlink()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("cut.png", None, "truncated"),
        ("zero.png", b"", "empty"),
        ("x.png", b"this is not an image\n", "not an image"),
        ("notes.txt", b"hello", "not an image"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, ""),
    ],
)
def test_unreadable_files_raise_image_error_with_name_and_reason(tmp_path, name, content, reason):
    path = _truncated_png(tmp_path) if content is None else tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as caught:
        load_image(path)
    assert caught.value.name == name
    assert reason in caught.value.reason and caught.value.reason
    assert str(caught.value).startswith(f"{name}: ")


def test_missing_file_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="gone.png"):
        load_image(tmp_path / "gone.png")


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    write_png(tmp_path / "big.png", rgb(20))  # 400 pixels
    write_png(tmp_path / "over.png", rgb(12))  # 144 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(tmp_path / "big.png")  # Pillow raises: over twice the limit
    with pytest.warns(Image.DecompressionBombWarning):
        with pytest.raises(ImageError, match="decompression bomb"):
            load_image(tmp_path / "over.png")  # Pillow only warns; we refuse


def test_photo_jpg_name_is_fine(tmp_path):
    pixels = rgb()
    loaded, warnings = load_image(write_png(tmp_path / "photo.jpg", pixels))
    np.testing.assert_array_equal(loaded, pixels)  # PNG content: exact, no warning
    assert warnings == []


# ------------------------------------------------------------------------ folders


def test_list_input_files_takes_every_file_sorted_and_skips_folders(tmp_path):
    names = ["b.png", "a b.png", "été 🙂.png", "photo.jpg", "notes.txt", "A.PNG", ".hidden"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.png").write_bytes(b"x")
    files = list_input_files(tmp_path)
    assert [f.name for f in files] == sorted(names)
    assert all(f.parent == tmp_path for f in files)


def test_list_input_files_empty_missing_and_not_a_folder(tmp_path):
    assert list_input_files(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_input_files(tmp_path / "nope")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        list_input_files(str(tmp_path / "file"))


def test_unicode_and_space_names_load(tmp_path):
    pixels = rgb()
    write_png(tmp_path / "été 🙂 1.png", pixels)
    (file,) = list_input_files(tmp_path)
    assert file.name == "été 🙂 1.png"
    loaded, _ = load_image(file)
    np.testing.assert_array_equal(loaded, pixels)


# ------------------------------------------------------------------------ batches


def _mixed_folder(tmp_path: Path) -> tuple[list[Path], dict[str, int]]:
    """Ten files: good ones are uniform images whose value encodes their index."""
    good: dict[str, int] = {}
    for index in range(10):
        name = f"img{index:02d}.png"
        if index in (2, 5, 6):
            (tmp_path / name).write_bytes(b"broken" if index != 5 else b"")
        else:
            write_png(tmp_path / name, np.full((IMAGE_SIZE, IMAGE_SIZE, 3), index * 20, np.uint8))
            good[name] = index * 20
    return list_input_files(tmp_path), good


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_iter_batches_keeps_order_and_counts(tmp_path, batch_size, caplog):
    files, good = _mixed_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hgd.io.images"):
        batches = list(iter_batches(files, batch_size, workers=3))
    assert len(batches) == -(-len(files) // batch_size)
    seen = []
    for index, batch in enumerate(batches):
        assert isinstance(batch, Batch)
        chunk = [f.name for f in files[index * batch_size : (index + 1) * batch_size]]
        assert len(batch.names) + len(batch.failed) == len(chunk)
        assert batch.names == [n for n in chunk if n in good]
        assert [name for name, _ in batch.failed] == [n for n in chunk if n not in good]
        assert batch.images.shape == (len(batch.names), IMAGE_SIZE, IMAGE_SIZE, 3)
        assert batch.images.dtype == np.uint8
        for name, image in zip(batch.names, batch.images):
            assert (image == good[name]).all()
        seen += batch.names + [name for name, _ in batch.failed]
    assert sorted(seen) == [f.name for f in files]
    failures = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert [m.split(":")[0] for m in failures] == ["img02.png", "img05.png", "img06.png"]
    assert "empty" in failures[1]


def test_iter_batches_all_failed_batch_has_empty_images(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (batch,) = iter_batches(list_input_files(tmp_path), 4, size=8)
    assert batch.names == [] and batch.images.shape == (0, 8, 8, 3)
    assert batch.failed == [("a.png", "empty file (0 bytes)")]


def test_iter_batches_logs_one_line_per_file_with_warnings(tmp_path, caplog):
    write_png(tmp_path / "small.png", rgb(10))
    write_png(tmp_path / "ok.png", rgb())
    with caplog.at_level(logging.WARNING, logger="hgd.io.images"):
        (batch,) = iter_batches(list_input_files(tmp_path), 5)
    assert batch.names == ["ok.png", "small.png"]
    assert [r.name for r in caplog.records] == ["hgd.io.images"]
    assert caplog.records[0].getMessage() == "small.png: resized from 10x10 to 299x299 (bicubic)"


def test_iter_batches_empty_and_bad_arguments(tmp_path):
    assert list(iter_batches([], 4)) == []
    with pytest.raises(ValueError, match="batch_size.*0"):
        iter_batches([tmp_path / "a.png"], 0)  # raised at the call, not at next()
    with pytest.raises(ValueError, match="-1"):
        iter_batches([], 1, prefetch=-1)
    with pytest.raises(ValueError, match="workers"):
        iter_batches([], 1, workers=0)
    with pytest.raises(ValueError, match="size"):
        load_image(tmp_path / "a.png", size=0)


@pytest.mark.parametrize("prefetch", [0, 1, 5])
def test_iter_batches_prefetch_and_early_stop(tmp_path, prefetch):
    for index in range(7):
        write_png(tmp_path / f"{index}.png", np.full((8, 8, 3), index, np.uint8))
    files = list_input_files(tmp_path)
    batches = iter_batches(files, 2, size=8, prefetch=prefetch, workers=2)
    first = next(batches)
    assert first.names == ["0.png", "1.png"]
    batches.close()  # stopping early must not hang or raise
    again = iter_batches(files, 2, 8, prefetch=prefetch)
    assert [b.images[:, 0, 0, 0].tolist() for b in again] == [[0, 1], [2, 3], [4, 5], [6]]


# ----------------------------------------------------------------------- save_png


def test_save_png_round_trip_is_exact(tmp_path):
    pixels = rgb()
    save_png(tmp_path / "out.png", pixels)
    with Image.open(tmp_path / "out.png") as written:
        assert written.format == "PNG" and written.mode == "RGB"
    loaded, warnings = load_image(tmp_path / "out.png")
    np.testing.assert_array_equal(loaded, pixels)
    assert warnings == []
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary left


def test_save_png_non_contiguous_and_other_sizes(tmp_path):
    pixels = rgb(40)[::2, ::-1]
    save_png(tmp_path / "o.png", pixels)
    np.testing.assert_array_equal(read_pixels(tmp_path / "o.png"), pixels)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4, 3), np.float32), "uint8"),
        (np.zeros((4, 4, 3), np.float64) + 0.5, "uint8"),
        (np.zeros((4, 4, 3), np.int64), "uint8"),
        (np.zeros((4, 4), np.uint8), "shape"),
        (np.zeros((4, 4, 4), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "shape"),
        ([[[0, 0, 0]]], "uint8"),
    ],
)
def test_save_png_refuses_anything_but_uint8_hw3(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        save_png(tmp_path / "out.png", bad)
    assert list(tmp_path.iterdir()) == []


def test_save_png_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    old = rgb(8)
    save_png(target, old)

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_png(target, rgb(8))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_pixels(target), old)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


# --------------------------------------------------------------------------- CSVs


def test_read_dataset_csv(tmp_path):
    path = tmp_path / "dev_dataset.csv"
    path.write_text(
        DATASET_HEADER
        + "0c7ac4a8c9dfa802,http://x,1,2,3,4,1,1000,http://l,CC,A,http://a\n"
        + '"1a2b3c4d5e6f7a8b","http://y,with comma",5,6,7,8,243,17,http://l,CC,B,http://b\n'
    )
    assert read_dataset_csv(path) == {"0c7ac4a8c9dfa802": (1, 1000), "1a2b3c4d5e6f7a8b": (243, 17)}


def test_read_dataset_csv_finds_columns_by_name(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("\ufeffTargetClass,Extra,ImageId,TrueLabel\n5,?,abc,7\n", encoding="utf-8")
    assert read_dataset_csv(path) == {"abc": (7, 5)}


@pytest.mark.parametrize(
    "row, match",
    [
        ("id2,u,1,2,3,4,12\n", "missing value for TargetClass"),
        ("id2,u,1,2,3,4,seven,3,l,c,a,p\n", "TrueLabel 'seven' is not an integer"),
        ("id2,u,1,2,3,4,1.5,3,l,c,a,p\n", "not an integer"),
        ("id2,u,1,2,3,4,0,3,l,c,a,p\n", "TrueLabel 0 is outside 1..1000"),
        ("id2,u,1,2,3,4,5,1001,l,c,a,p\n", "TargetClass 1001 is outside"),
        (",u,1,2,3,4,5,6,l,c,a,p\n", "missing value for ImageId"),
        ("id1,u,1,2,3,4,5,6,l,c,a,p\n", "appears twice"),
    ],
)
def test_read_dataset_csv_malformed_row_names_the_line(tmp_path, row, match):
    path = tmp_path / "d.csv"
    path.write_text(DATASET_HEADER + "id1,u,1,2,3,4,5,6,l,c,a,p\n" + row)
    with pytest.raises(ValueError, match=match) as caught:
        read_dataset_csv(path)
    assert "line 3" in str(caught.value)


def test_read_dataset_csv_missing_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("ImageId,TrueLabel\nabc,3\n")
    with pytest.raises(ValueError, match="TargetClass"):
        read_dataset_csv(path)


def test_read_predictions_csv_follows_the_competition_parser(tmp_path):
    path = tmp_path / "result.csv"
    path.write_text(
        "filename,label\n"  # header: label not an integer, skipped
        "a.png,1\n"
        "b.jpg,2,extra,columns\n"
        "c,3\n"
        "d.PNG,4\n"  # the original parser's suffix test is case-sensitive
        "e.png\n"  # no label: skipped
        "f.png,oops\n"
        "\n"
        "a.png,9\n"  # last duplicate wins
        '"g,h.png",5\n'
        "ADVBATCH012_IMG000123.png, 7\n"
    )
    assert read_predictions_csv(path) == {
        "a": 9,
        "b": 2,
        "c": 3,
        "d.PNG": 4,
        "g,h": 5,
        "ADVBATCH012_IMG000123": 7,
    }


def test_read_predictions_csv_survives_garbage_bytes(tmp_path):
    path = tmp_path / "result.csv"
    path.write_bytes(b"a.png,1\n\xff\xfe\x00garbage,zz\nb.png,2\n")
    assert read_predictions_csv(path) == {"a": 1, "b": 2}


def test_write_predictions_csv_creates_folder_and_quotes(tmp_path):
    path = tmp_path / "output_data" / "deeper" / "result.csv"
    rows = [("a.png", 1), ("with, comma.png", np.int64(2)), ('quo"te.png', 1000), ("été.png", 3)]
    write_predictions_csv(path, rows)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "a.png,1"
    assert '"with, comma.png",2' in text and '"quo""te.png",1000' in text
    assert not text.startswith("filename")
    assert read_predictions_csv(path) == {"a": 1, "with, comma": 2, 'quo"te': 1000, "été": 3}
    assert [p.name for p in path.parent.iterdir()] == ["result.csv"]


def test_write_predictions_csv_rejects_non_integer_labels(tmp_path):
    path = tmp_path / "result.csv"
    with pytest.raises(TypeError):
        write_predictions_csv(path, [("a.png", 1.0)])
    assert not path.exists()


def test_write_predictions_csv_empty(tmp_path):
    write_predictions_csv(tmp_path / "r.csv", [])
    assert (tmp_path / "r.csv").read_text() == ""


def test_module_has_no_deep_learning_import():
    source = Path(images.__file__).read_text()
    assert "import keras" not in source and "tensorflow" not in source


def test_replace_atomically_keeps_the_old_file_when_the_writer_fails(tmp_path):
    """The one atomic-write rule: the temporary name ends as asked (Keras insists on ``.weights.h5``), a
    failing writer leaves the old file and no temporary file behind."""
    from hgd.io.files import replace_atomically

    target = tmp_path / "d.weights.h5"
    target.write_bytes(b"old")
    seen = []

    def fail(temporary):
        seen.append(temporary)
        temporary.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(target, fail, suffix=".weights.h5")
    assert seen[0].name.endswith(".weights.h5") and seen[0].parent == tmp_path
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    replace_atomically(target, lambda temporary: temporary.write_bytes(b"new"), suffix=".weights.h5")
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target]


def test_the_label_convention_round_trips_and_matches_the_competition_files():
    """Competition labels 1..1000 <-> 0-based ImageNet classes, one rule for ints and arrays."""
    from hgd.io.labels import to_competition_label, to_label0

    assert to_label0(1) == 0 and to_competition_label(999) == 1000
    classes = np.arange(1000)
    np.testing.assert_array_equal(to_label0(to_competition_label(classes)), classes)
    labels = read_dataset_csv(Path(__file__).resolve().parents[1] / "sample_data" / "dev_dataset.csv")
    assert all(0 <= to_label0(true) < 1000 for true, _ in labels.values())
