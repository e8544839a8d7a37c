"""A user's own CSV, .npz and image-folder files load to plain arrays, or fail naming the file, row/column and what was wrong."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datafiles import DataFileError, load_csv_series, load_csv_table, load_npz
from training.imagefiles import load_image_folder, read_image_folder


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def fails(fn, *args, **kwargs) -> str:
    """The DataFileError message that fn(*args, **kwargs) raises."""
    with pytest.raises(DataFileError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


# ---------------------------------------------------------------- CSV table


def test_csv_table_numeric_target(tmp_path):
    f = write(tmp_path / "t.csv", "a,b,price,c\n1,2.5,10,-3\n4, 5e-1 ,20.5,6\n7,8,30,9\n")
    X, y, names = load_csv_table(f, target="price")
    assert names == ["a", "b", "c"]
    assert X.dtype == np.float32 and X.shape == (3, 3)
    np.testing.assert_array_equal(X, [[1, 2.5, -3], [4, 0.5, 6], [7, 8, 9]])
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [10, 20.5, 30])


def test_csv_table_string_labels_and_chosen_features(tmp_path):
    # A BOM, CRLF line ends, a quoted field and a trailing blank line are all ordinary in exported files.
    f = tmp_path / "t.csv"
    f.write_bytes(b'\xef\xbb\xbfx,y,label,z\r\n1,2,cat,"3"\r\n4,5,7,6\r\n7,8, dog ,9\r\n\r\n')
    X, y, names = load_csv_table(f, target="label", features=["z", "x"])
    assert names == ["z", "x"]
    np.testing.assert_array_equal(X, [[3, 1], [6, 4], [9, 7]])
    assert y.dtype.kind == "U"
    assert y.tolist() == ["cat", "7", "dog"]


def test_csv_missing_and_empty_files(tmp_path):
    missing = tmp_path / "nope.csv"
    msg = fails(load_csv_table, missing, target="y")
    assert str(missing) in msg and "not found" in msg
    msg = fails(load_csv_table, tmp_path, target="y")
    assert str(tmp_path) in msg and "not a regular file" in msg
    for text in ["", "\n\n", "  \n"]:
        f = write(tmp_path / "empty.csv", text)
        msg = fails(load_csv_table, f, target="y")
        assert str(f) in msg and "empty" in msg


def test_csv_without_header(tmp_path):
    f = write(tmp_path / "t.csv", "1,2,3\n4,5,6\n7,8,9\n")
    msg = fails(load_csv_table, f, target="y")
    assert str(f) in msg and "row 1" in msg and "no header" in msg
    msg = fails(load_csv_series, write(tmp_path / "s.csv", "1\n2\n3\n"))
    assert "s.csv" in msg and "row 1" in msg and "no header" in msg


def test_csv_bad_header_names(tmp_path):
    f = write(tmp_path / "t.csv", "a,,y\n1,2,3\n4,5,6\n")
    msg = fails(load_csv_table, f, target="y")
    assert str(f) in msg and "row 1" in msg and "column 2 has no name" in msg
    f = write(tmp_path / "t.csv", "a,b,a\n1,2,3\n4,5,6\n")
    msg = fails(load_csv_table, f, target="b")
    assert str(f) in msg and "'a' appears more than once" in msg


def test_csv_unknown_target_or_feature_lists_columns(tmp_path):
    f = write(tmp_path / "t.csv", "a,b,y\n1,2,3\n4,5,6\n")
    msg = fails(load_csv_table, f, target="price")
    assert str(f) in msg and "target column 'price'" in msg and "'a', 'b', 'y'" in msg
    msg = fails(load_csv_table, f, target="y", features=["a", "c"])
    assert str(f) in msg and "feature column 'c'" in msg and "'a', 'b', 'y'" in msg
    msg = fails(load_csv_table, f, target="y", features=["a", "y"])
    assert str(f) in msg and "both the target and a feature" in msg
    msg = fails(load_csv_table, f, target="y", features=[])
    assert str(f) in msg and "at least one feature" in msg
    only = write(tmp_path / "only.csv", "y\n1\n2\n")
    msg = fails(load_csv_table, only, target="y")
    assert str(only) in msg and "at least one feature" in msg


def test_csv_row_with_wrong_field_count(tmp_path):
    f = write(tmp_path / "t.csv", "a,b,y\n1,2,3\n\n4,5\n")
    msg = fails(load_csv_table, f, target="y")
    # Row 3 is the blank line; the short row is row 4, as a spreadsheet numbers it.
    assert str(f) in msg and "row 4 has 2 field(s), expected 3" in msg
    f = write(tmp_path / "t.csv", "a,b,y\n1,2,3\n4,5,6,7\n")
    msg = fails(load_csv_table, f, target="y")
    assert str(f) in msg and "row 3 has 4 field(s), expected 3" in msg


@pytest.mark.parametrize(
    "cell, expect",
    [
        ("abc", "expected a number, found 'abc'"),
        ("", "empty value, expected a number"),
        ("  ", "empty value, expected a number"),
        ("nan", "expected a finite number, found 'nan'"),
        ("-inf", "expected a finite number, found '-inf'"),
        ("1e39", "outside the float32 range"),
    ],
)
def test_csv_bad_feature_value_names_row_and_column(tmp_path, cell, expect):
    f = write(tmp_path / "t.csv", f"a,b,y\n1,2,3\n4,5,6\n7,{cell},9\n")
    msg = fails(load_csv_table, f, target="y")
    assert str(f) in msg and "row 4, column 'b'" in msg and expect in msg


def test_csv_long_bad_value_is_truncated(tmp_path):
    long = "x" * 100
    f = write(tmp_path / "t.csv", f"a,y\n1,2\n{long},3\n")
    msg = fails(load_csv_table, f, target="y")
    assert "row 3, column 'a'" in msg and repr("x" * 40) in msg and "x" * 41 not in msg


def test_csv_bad_target_values(tmp_path):
    f = write(tmp_path / "t.csv", "a,y\n1,2\n3,\n")
    msg = fails(load_csv_table, f, target="y")
    assert str(f) in msg and "row 3, column 'y'" in msg and "empty target value" in msg
    f = write(tmp_path / "t.csv", "a,y\n1,2\n3,inf\n5,6\n")
    msg = fails(load_csv_table, f, target="y")
    assert str(f) in msg and "row 3, column 'y'" in msg and "finite" in msg


def test_csv_needs_two_data_rows(tmp_path):
    f = write(tmp_path / "t.csv", "a,y\n1,2\n")
    msg = fails(load_csv_table, f, target="y")
    assert str(f) in msg and "at least 2 data rows" in msg and "found 1" in msg
    f = write(tmp_path / "t.csv", "a,y\n")
    assert "found 0" in fails(load_csv_table, f, target="y")


def test_csv_not_utf8(tmp_path):
    f = tmp_path / "t.csv"
    f.write_bytes(b"a,y\n1,\xff\xfe\n")
    msg = fails(load_csv_table, f, target="y")
    assert str(f) in msg and "UTF-8" in msg


# ---------------------------------------------------------------- CSV series


def test_csv_series(tmp_path):
    f = write(tmp_path / "s.csv", "passengers\n112\n118.5\n132\n")
    s = load_csv_series(f)
    assert s.dtype == np.float32 and s.shape == (3,)
    np.testing.assert_array_equal(s, [112, 118.5, 132])
    f = write(tmp_path / "s2.csv", "month,passengers\n1949-01,112\n1949-02,118\n1949-03,132\n")
    np.testing.assert_array_equal(load_csv_series(f, column="passengers"), [112, 118, 132])


def test_csv_series_errors(tmp_path):
    f = write(tmp_path / "s.csv", "month,passengers\n1949-01,112\n1949-02,118\n")
    msg = fails(load_csv_series, f)
    assert str(f) in msg and "'month', 'passengers'" in msg and "column=" in msg
    msg = fails(load_csv_series, f, column="sales")
    assert str(f) in msg and "'sales'" in msg and "'month', 'passengers'" in msg
    msg = fails(load_csv_series, f, column="month")
    assert str(f) in msg and "row 2, column 'month'" in msg and "'1949-01'" in msg
    g = write(tmp_path / "g.csv", "v\n1\n2\nNaN\n")
    msg = fails(load_csv_series, g)
    assert str(g) in msg and "row 4, column 'v'" in msg and "finite" in msg
    h = write(tmp_path / "h.csv", "v\n1\n")
    assert "at least 2 data rows" in fails(load_csv_series, h)


# ---------------------------------------------------------------- NPZ


def test_npz(tmp_path):
    f = tmp_path / "d.npz"
    X = np.arange(24, dtype=np.float64).reshape(4, 2, 3)
    np.savez(f, X=X, y=np.array([0, 1, 1, 0]), extra=np.zeros(2))
    Xl, yl = load_npz(f)
    assert Xl.dtype == np.float32 and Xl.shape == (4, 2, 3)
    np.testing.assert_array_equal(Xl, X)
    assert yl.tolist() == [0, 1, 1, 0]
    g = tmp_path / "labels.npz"
    np.savez_compressed(g, X=np.ones((2, 3), dtype=np.int16), y=np.array(["cat", "dog"]))
    Xl, yl = load_npz(g)
    assert Xl.dtype == np.float32 and yl.tolist() == ["cat", "dog"]


def test_npz_missing_or_invalid_file(tmp_path):
    missing = tmp_path / "nope.npz"
    msg = fails(load_npz, missing)
    assert str(missing) in msg and "not found" in msg
    for name, content in [("text.npz", b"hello"), ("empty.npz", b"")]:
        f = tmp_path / name
        f.write_bytes(content)
        msg = fails(load_npz, f)
        assert str(f) in msg and "not a valid .npz" in msg
    npy = tmp_path / "plain.npz"
    with open(npy, "wb") as fh:
        np.save(fh, np.zeros((2, 2)))  # a .npy, not an .npz
    assert "not a valid .npz" in fails(load_npz, npy)


def test_npz_missing_key_lists_keys(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, features=np.zeros((2, 2)), y=np.zeros(2))
    msg = fails(load_npz, f)
    assert str(f) in msg and "no array 'X'" in msg and "'features', 'y'" in msg
    np.savez(f, X=np.zeros((2, 2)), target=np.zeros(2))
    msg = fails(load_npz, f)
    assert str(f) in msg and "no array 'y'" in msg and "'X', 'target'" in msg


UNPICKLED: list[str] = []


def _unpickled(marker: str) -> str:
    """Runs only if someone unpickles the payload below."""
    UNPICKLED.append(marker)
    Path(marker).write_text("unpickled")
    return marker


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (_unpickled, (self.marker,))


def test_npz_object_array_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "was-unpickled"
    f = tmp_path / "evil.npz"
    np.savez(f, X=np.array([Payload(str(marker)), None], dtype=object), y=np.zeros(2))
    msg = fails(load_npz, f)
    assert str(f) in msg and "'X'" in msg and "object" in msg
    assert not marker.exists() and not UNPICKLED
    g = tmp_path / "evil-y.npz"
    np.savez(g, X=np.zeros((2, 1)), y=np.array([Payload(str(marker)), "a"], dtype=object))
    assert "'y'" in fails(load_npz, g)
    assert not marker.exists() and not UNPICKLED


def test_npz_shape_and_value_errors(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, X=np.zeros((3, 2)), y=np.zeros(2))
    msg = fails(load_npz, f)
    assert str(f) in msg and "X has 3 samples but y has 2" in msg
    np.savez(f, X=np.zeros((0, 2)), y=np.zeros(0))
    assert "empty" in fails(load_npz, f)
    np.savez(f, X=np.zeros((2, 0)), y=np.zeros(2))
    assert "empty" in fails(load_npz, f)
    X = np.zeros((3, 2))
    X[1, 1] = np.nan
    X[2, 0] = np.inf
    np.savez(f, X=X, y=np.zeros(3))
    msg = fails(load_npz, f)
    assert str(f) in msg and "2 non-finite" in msg and "X[1, 1] = nan" in msg
    np.savez(f, X=np.array([[1.0], [1e300]]), y=np.zeros(2))
    msg = fails(load_npz, f)
    assert "float32 range" in msg and "X[1, 0] = 1e+300" in msg
    np.savez(f, X=np.zeros((2, 2)), y=np.array([0.0, np.nan]))
    msg = fails(load_npz, f)
    assert "'y'" in msg and "y[1]" in msg
    np.savez(f, X=np.zeros(3), y=np.zeros(3))
    assert "at least 2 dimensions" in fails(load_npz, f)
    np.savez(f, X=np.zeros((3, 2)), y=np.zeros((3, 1)))
    assert "one dimension" in fails(load_npz, f)
    np.savez(f, X=np.array([["a"], ["b"]]), y=np.zeros(2))
    assert "expected numbers" in fails(load_npz, f)


def test_npz_damaged_member(tmp_path):
    f = tmp_path / "d.npz"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("X.npy", b"not an npy array")
        z.writestr("y.npy", b"nor this")
    msg = fails(load_npz, f)
    assert str(f) in msg and "'X'" in msg


# ---------------------------------------------------------------- image folders


def image(path: Path, size: tuple[int, int], color, mode: str = "RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "pets"
    image(root / "dog" / "b.png", (8, 8), 200, mode="L")
    image(root / "dog" / "a.PNG", (20, 10), 50, mode="L")  # non-square, resized; upper-case extension
    image(root / "cat" / "x.jpg", (16, 16), (255, 0, 0), quality=95)  # RGB image, loaded as grayscale
    image(root / "cat" / "y.jpeg", (8, 8), (0, 0, 255), quality=95)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("ignored: not in a class folder")
    (root / ".cache").mkdir()  # hidden: not a class
    return root


def test_image_folder_grayscale(folder):
    X, y, classes = load_image_folder(folder, image_size=4)
    assert classes == ["cat", "dog"]
    assert X.dtype == np.float32 and X.shape == (4, 1, 4, 4)
    assert y.dtype == np.int64 and y.tolist() == [0, 0, 1, 1]
    # Order: cat/x.jpg (red), cat/y.jpeg (blue), dog/a.PNG (50), dog/b.png (200).
    red = 0.299 * 255
    blue = 0.114 * 255
    np.testing.assert_allclose(X[0], red, atol=4)
    np.testing.assert_allclose(X[1], blue, atol=4)
    np.testing.assert_array_equal(X[2], 50)
    np.testing.assert_array_equal(X[3], 200)
    assert X.min() >= 0 and X.max() <= 255


def test_image_folder_rgb(folder):
    X, y, classes = load_image_folder(folder, image_size=6, color="rgb")
    assert X.shape == (4, 3, 6, 6) and X.dtype == np.float32
    np.testing.assert_allclose(X[0].mean(axis=(1, 2)), [255, 0, 0], atol=4)  # channels first
    np.testing.assert_allclose(X[1].mean(axis=(1, 2)), [0, 0, 255], atol=4)
    np.testing.assert_array_equal(X[3], 200)  # a grayscale PNG, as RGB


def test_image_resize_is_bilinear_and_deterministic(tmp_path):
    root = tmp_path / "imgs"
    pixels = np.zeros((10, 20), dtype=np.uint8)
    pixels[:, 10:] = 255  # left half black, right half white
    (root / "a").mkdir(parents=True)
    Image.fromarray(pixels).save(root / "a" / "p.png")
    image(root / "b" / "q.png", (3, 3), 0, mode="L")
    X, _, _ = load_image_folder(root, image_size=5)
    expected = np.asarray(Image.fromarray(pixels).resize((5, 5), Image.Resampling.BILINEAR), dtype=np.float32)
    np.testing.assert_array_equal(X[0, 0], expected)
    assert 0 < X[0, 0, 0, 2] < 255  # the middle column blends both halves
    X2, _, _ = load_image_folder(root, image_size=5)
    np.testing.assert_array_equal(X, X2)


def test_image_folder_errors(tmp_path, folder):
    missing = tmp_path / "nope"
    msg = fails(load_image_folder, missing)
    assert str(missing) in msg and "not found" in msg
    file = image(tmp_path / "one.png", (4, 4), 0, mode="L")
    msg = fails(load_image_folder, file)
    assert str(file) in msg and "not a folder" in msg
    msg = fails(load_image_folder, folder, color="cmyk")
    assert str(folder) in msg and "'cmyk'" in msg and "'grayscale'" in msg and "'rgb'" in msg
    msg = fails(load_image_folder, folder, image_size=0)
    assert "image_size" in msg

    single = tmp_path / "single"
    image(single / "only" / "a.png", (4, 4), 0, mode="L")
    (single / ".hidden").mkdir()
    msg = fails(load_image_folder, single)
    assert str(single) in msg and "at least 2 class sub-folders, found 1" in msg and "'only'" in msg


def test_image_class_without_images(tmp_path, folder):
    (folder / "bird").mkdir()
    (folder / "bird" / "readme.txt").write_text("no images here")
    image(folder / "bird" / ".hidden.png", (4, 4), 0, mode="L")
    msg = fails(load_image_folder, folder)
    assert str(folder / "bird") in msg and "'bird' has no images" in msg


@pytest.mark.parametrize("content", [b"", b"definitely not a png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_image_that_cannot_be_decoded_is_named(folder, content):
    bad = folder / "dog" / "broken.png"
    bad.write_bytes(content)
    msg = fails(load_image_folder, folder)
    assert str(bad) in msg and "cannot be read as an image" in msg


def test_truncated_jpeg_is_named(folder):
    good = (folder / "cat" / "x.jpg").read_bytes()
    bad = folder / "cat" / "z.jpg"
    bad.write_bytes(good[: len(good) // 2])
    msg = fails(load_image_folder, folder)
    assert str(bad) in msg


def test_image_folder_keeps_the_images_own_size(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        for i in range(2):
            image(root / cls / f"{i}.png", (12, 12), 40 * i, mode="L")
    X, y, classes = load_image_folder(root)
    assert X.shape == (4, 1, 12, 12) and classes == ["a", "b"]
    folder = read_image_folder(root, color="rgb")
    assert folder.size == 12 and not folder.resized and folder.sizes == {(12, 12): "a/0.png"}
    assert read_image_folder(root, image_size=6).resized


def test_image_folder_of_mixed_sizes_is_refused_naming_each_size_and_the_fix(folder):
    msg = fails(load_image_folder, folder)
    assert str(folder) in msg and "different sizes" in msg
    for size, example in (("8x8", "cat/y.jpeg"), ("16x16", "cat/x.jpg"), ("20x10", "dog/a.PNG")):
        assert f"{size} ({example})" in msg
    assert "--set data.image_size=N" in msg and "\n" not in msg


def test_non_square_images_are_refused_unless_resized(tmp_path):
    root = tmp_path / "wide"
    image(root / "a" / "p.png", (20, 10), 0, mode="L")
    image(root / "b" / "q.png", (20, 10), 255, mode="L")
    msg = fails(load_image_folder, root)
    assert str(root) in msg and "20x10" in msg and "square" in msg and "--set data.image_size=N" in msg
    X, _, _ = load_image_folder(root, image_size=10)
    assert X.shape == (2, 1, 10, 10)
