"""Contact sheets of labelled and unlabelled prepared datasets."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from dginstyle.data import contract
from dginstyle.data.contact_sheet import CAPTION_WIDTH, GAP, ROW_HEIGHT, TITLE_HEIGHT, contact_sheet
from dginstyle.data.minicity import prepare_minicity
from dginstyle.io import DataError
from dginstyle.labels import PALETTE


def _size(path):
    with Image.open(path) as img:
        assert img.mode == "RGB"
        return img.size


def test_labelled_minicity_sheet(tmp_path):
    data = tmp_path / "game"
    prepare_minicity(data, "game", {"train": 5, "val": 2}, 0, 128, 64, 1, None, 10)
    out = tmp_path / "sheets" / "game.png"
    contact_sheet(data, out, split="train", count=3)
    row_w = 2 * 128 * ROW_HEIGHT // 64 + GAP
    assert _size(out) == (row_w, TITLE_HEIGHT + 3 * (ROW_HEIGHT + GAP))
    # The right half of a row shows palette colours only (plus ignore black).
    with Image.open(out) as img:
        sheet = np.asarray(img)
    right = sheet[TITLE_HEIGHT : TITLE_HEIGHT + ROW_HEIGHT, row_w - ROW_HEIGHT * 2 + 2 :].reshape(-1, 3)
    allowed = {tuple(c) for c in PALETTE[:19]} | {(0, 0, 0)}
    assert {tuple(c) for c in np.unique(right, axis=0)} <= allowed
    # Default split: the first in the manifest; count larger than the split is fine.
    contact_sheet(data, tmp_path / "default.png", count=20)
    assert _size(tmp_path / "default.png")[1] == TITLE_HEIGHT + 5 * (ROW_HEIGHT + GAP)


def test_unlabelled_prior_sheet_shows_captions(tmp_path):
    data = tmp_path / "prior"
    prepare_minicity(data, "prior", {"train": 4}, 0, 128, 64, 1, None, 10)
    out = tmp_path / "prior.png"
    contact_sheet(data, out, count=4)
    assert _size(out) == (2 * ROW_HEIGHT + GAP + CAPTION_WIDTH, TITLE_HEIGHT + 4 * (ROW_HEIGHT + GAP))
    # Each row's caption panel holds its caption's text: ink on the background, and rows whose
    # captions differ differ there too.
    with Image.open(out) as img:
        sheet = np.asarray(img)
    panels = [sheet[TITLE_HEIGHT + r * (ROW_HEIGHT + GAP) : TITLE_HEIGHT + r * (ROW_HEIGHT + GAP) + ROW_HEIGHT, -CAPTION_WIDTH:] for r in range(4)]
    background = panels[0][-1, -1]
    assert all((panel != background).any(axis=-1).mean() > 0.01 for panel in panels)
    captions = [row["caption"] for row in map(json.loads, (data / "captions.jsonl").read_text().splitlines())][:4]
    for a in range(4):
        for b in range(a + 1, 4):
            if captions[a] != captions[b]:
                assert not np.array_equal(panels[a], panels[b]), (captions[a], captions[b])


def test_linked_images_of_other_sizes(tmp_path):
    """Real datasets link JPEGs of any size; rows are scaled to the common height."""
    src = tmp_path / "src"
    src.mkdir()
    staging = contract.start(tmp_path / "real")
    records = []
    for i, (w, h) in enumerate(((200, 100), (300, 100))):
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(src / f"im{i}.jpg")
        contract.link_image(staging, "val", f"s{i}", src / f"im{i}.jpg")
        label = np.full((h, w), 255, np.uint8)
        label[: h // 2] = 10
        records.append(contract.write_label(staging, "val", f"s{i}", label))
    contract.finalize(staging, tmp_path / "real", records, {"dataset": "real", "format": "cityscapes"}, 10)
    out = tmp_path / "real.png"
    contact_sheet(tmp_path / "real", out, split="val", height=50)
    assert _size(out) == (2 * 150 + GAP, TITLE_HEIGHT + 2 * (50 + GAP))


def test_errors(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nothing'}: not a prepared dataset (no manifest.json)")):
        contact_sheet(tmp_path / "nothing", tmp_path / "x.png")
    data = tmp_path / "game"
    prepare_minicity(data, "game", {"train": 1}, 0, 64, 32, 1, None, 10)
    with pytest.raises(DataError, match=re.escape(f"{data}: no split 'test' (missing test.txt)")):
        contact_sheet(data, tmp_path / "x.png", split="test")
    with pytest.raises(DataError, match="count must be >= 1, got 0"):
        contact_sheet(data, tmp_path / "x.png", count=0)
    (data / "train.txt").write_text("")
    with pytest.raises(DataError, match=re.escape(f"{data}: split 'train' is empty")):
        contact_sheet(data, tmp_path / "x.png", split="train")
    assert not (tmp_path / "x.png").exists()
