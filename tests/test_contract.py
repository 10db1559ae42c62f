"""The prepared-dataset contract itself (dginstyle.data.contract), called directly.

The end-to-end tests (test_prepare_real, test_minicity) build datasets through `prepare`;
these pin the pieces a caller relies on that those never look at: `find_image`, the record a
worker reports, captions, the manifest's fixed keys, exact class totals and error messages.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import dginstyle
from dginstyle.data import contract
from dginstyle.io import DataError, sha256_bytes
from dginstyle.labels import NUM_CLASSES


def counts(**by_class: int) -> list[int]:
    """A 20-entry class pixel list (19 train classes + ignore) with the given classes set."""
    out = [0] * (NUM_CLASSES + 1)
    for key, n in by_class.items():
        out[int(key[1:])] = n
    return out


# --- find_image -------------------------------------------------------------------------


def test_find_image_returns_the_one_image_of_a_stem(tmp_path):
    folder = contract.image_dir(tmp_path, "val")
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"x")
    (folder / "ab.png").write_bytes(b"x")  # another stem sharing the prefix
    assert contract.find_image(tmp_path, "val", "a") == tmp_path / "images" / "val" / "a.png"
    # A str root works as a Path does.
    assert contract.find_image(str(tmp_path), "val", "ab") == folder / "ab.png"


def test_find_image_accepts_upper_case_suffixes_and_skips_non_images(tmp_path):
    folder = contract.image_dir(tmp_path, "train")
    folder.mkdir(parents=True)
    (folder / "s.JPG").write_bytes(b"x")
    (folder / "s.txt").write_bytes(b"x")
    (folder / "t.json").write_bytes(b"x")
    assert contract.find_image(tmp_path, "train", "s") == folder / "s.JPG"
    with pytest.raises(DataError, match=r"no image for sample 't'"):
        contract.find_image(tmp_path, "train", "t")


def test_find_image_picks_the_first_in_sorted_order(tmp_path):
    folder = contract.image_dir(tmp_path, "train")
    folder.mkdir(parents=True)
    for suffix in (".png", ".jpeg", ".jpg"):
        (folder / f"s{suffix}").write_bytes(b"x")
    assert contract.find_image(tmp_path, "train", "s") == folder / "s.jpeg"


def test_find_image_looks_only_in_the_named_split(tmp_path):
    contract.image_dir(tmp_path, "train").mkdir(parents=True)
    (contract.image_dir(tmp_path, "train") / "s.png").write_bytes(b"x")
    contract.image_dir(tmp_path, "val").mkdir(parents=True)
    with pytest.raises(DataError, match=r"images/val: no image for sample 's'"):
        contract.find_image(tmp_path, "val", "s")


# --- what a worker writes and reports ---------------------------------------------------


def test_class_pixel_counts_puts_ignore_last():
    label = np.array([[0, 0, 18], [255, 255, 255]], dtype=np.uint8)
    assert contract.class_pixel_counts(label) == counts(c0=2, c18=1, c19=3)


def test_write_label_reports_checksum_counts_and_size(tmp_path):
    label = np.zeros((3, 5), dtype=np.uint8)
    label[0, :2] = 7
    label[2, 4] = 255
    record = contract.write_label(tmp_path, "train", "s", label)
    assert (record.split, record.stem) == ("train", "s")
    assert record.size == (3, 5)
    assert record.class_pixels == counts(c0=12, c7=2, c19=1)
    data = contract.label_path(tmp_path, "train", "s").read_bytes()
    assert record.label_sha256 == sha256_bytes(data)


def test_write_label_uses_the_class_pixels_it_is_given(tmp_path):
    """prepare passes the counts it derived from the raw histogram: they are not recomputed."""
    label = np.zeros((2, 2), dtype=np.uint8)
    given = counts(c3=4)  # deliberately not the map's own counts, to see which are used
    record = contract.write_label(tmp_path, "train", "s", label, class_pixels=given)
    assert record.class_pixels is given


def test_link_image_creates_the_split_folder(tmp_path):
    original = tmp_path / "src" / "Photo.JPG"
    original.parent.mkdir()
    original.write_bytes(b"jpeg")
    staging = tmp_path / "staging"  # neither staging/ nor staging/images/ exists yet
    contract.link_image(staging, "val", "s", original)
    link = staging / "images" / "val" / "s.jpg"
    assert link.is_symlink() and link.resolve() == original.resolve()
    assert contract.find_image(staging, "val", "s") == link


def test_write_image_creates_the_split_folder(tmp_path):
    staging = tmp_path / "staging"
    contract.write_image(staging, "train", "s", np.zeros((2, 3, 3), dtype=np.uint8))
    assert contract.find_image(staging, "train", "s") == staging / "images" / "train" / "s.png"


# --- class statistics -------------------------------------------------------------------


def test_class_stats_totals_are_exact_integers():
    """Totals are summed as integers: a float sum would round counts past 2**53."""
    big = 2**53 + 1
    records = [
        contract.Record("train", "a", "x", counts(c0=big, c19=5)),
        contract.Record("train", "b", "y", counts(c0=2, c1=3)),
    ]
    stats = contract.class_stats(records, min_pixels=2)
    assert stats["class_pixels"][:2] == [big + 2, 3]
    assert all(type(t) is int for t in stats["class_pixels"])
    assert stats["images_by_class"]["road"] == ["a"]  # > min_pixels, not >=
    assert stats["images_by_class"]["sidewalk"] == ["b"]
    assert stats["image_class_pixels"]["a"] == counts(c0=big)[:NUM_CLASSES]  # ignore dropped


# --- finalize and its manifest ----------------------------------------------------------


def _labelled(staging, split, stem, value=0):
    return contract.write_label(staging, split, stem, np.full((2, 2), value, dtype=np.uint8))


def test_finalize_manifest_of_a_labelled_dataset(tmp_path):
    out = tmp_path / "out"
    staging = contract.start(out)
    records = [_labelled(staging, "val", "b", 1), _labelled(staging, "train", "a")]
    manifest = contract.finalize(staging, out, records, {"dataset": "d"}, rcs_min_pixels=1)
    assert manifest["labelled"] is True
    assert manifest["label_format"] == "uint8 Cityscapes train IDs, 255 = ignore"
    assert manifest["dginstyle_version"] == dginstyle.__version__
    assert manifest["splits"] == {"train": 1, "val": 1}
    assert list(manifest["label_sha256"]) == ["train/a", "val/b"]
    assert contract.read_manifest(out) == manifest
    assert not (out / "captions.jsonl").exists()


def test_finalize_manifest_of_an_unlabelled_caption_corpus(tmp_path):
    out = tmp_path / "prior"
    staging = contract.start(out)
    records = [
        contract.Record("train", "b", extra={"caption": "a foggy street"}),
        contract.Record("train", "a", extra={"caption": "a city at night", "condition": "night"}),
        contract.Record("val", "c", extra={"caption": "rain"}),
        contract.Record("val", "d"),  # no caption: not a line of captions.jsonl
    ]
    manifest = contract.finalize(staging, out, records, {"dataset": "prior"})
    assert manifest["labelled"] is False
    assert manifest["label_format"] is None
    assert manifest["label_sha256"] == {}
    assert manifest["dginstyle_version"] == dginstyle.__version__
    assert manifest["conditions"] == {"train": {"night": 1}}
    assert not (out / "class_stats").exists()
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert lines == [
        {"split": "train", "stem": "a", "caption": "a city at night", "condition": "night"},
        {"split": "train", "stem": "b", "caption": "a foggy street"},
        {"split": "val", "stem": "c", "caption": "rain"},
    ]
    assert contract.read_split(out, "val") == ["c", "d"]


def test_finalize_refuses_duplicate_stems_within_a_split(tmp_path):
    out = tmp_path / "out"
    staging = contract.start(out)
    records = [_labelled(staging, "train", "s"), _labelled(staging, "val", "s"), _labelled(staging, "train", "s")]
    with pytest.raises(DataError, match=r"two samples share the name 's' in split 'train'"):
        contract.finalize(staging, out, records, {})
    assert not out.exists()


# --- reading ----------------------------------------------------------------------------


def test_read_manifest_names_the_missing_manifest(tmp_path):
    with pytest.raises(DataError, match=r"not a prepared dataset \(no manifest\.json\); run `dginstyle prepare` first"):
        contract.read_manifest(tmp_path)


def test_read_split_names_the_missing_split(tmp_path):
    (tmp_path / "train.txt").write_text("a\n\nb\n")
    assert contract.read_split(tmp_path, "train") == ["a", "b"]
    with pytest.raises(DataError, match=r"no split 'val' \(missing val\.txt\)"):
        contract.read_split(tmp_path, "val")
