"""Label tables: the official Cityscapes train IDs and the Mapillary mapping, checked against
values written out here by hand (not derived from the code under test)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from dginstyle import labels
from dginstyle.labels import NUM_CLASSES

# Cityscapes label ID -> train ID for the 19 evaluated classes (cityscapesScripts labels.py).
CITYSCAPES_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# docs/method.md section 4.
MAPILLARY = {13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8,
             29: 9, 27: 10, 19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18}


def test_class_names_in_train_id_order():
    assert labels.CLASSES == ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                              "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                              "truck", "bus", "train", "motorcycle", "bicycle")
    assert tuple(labels.PALETTE[0]) == (128, 64, 128) and tuple(labels.PALETTE[10]) == (70, 130, 180)


def test_cityscapes_table():
    table = labels.cityscapes_id_to_train_id()
    for raw in range(256):
        if raw in CITYSCAPES_TRAIN:
            assert table[raw] == CITYSCAPES_TRAIN[raw]
        elif raw <= 33:
            assert table[raw] == 255, raw  # unlabeled, parking, guard rail, caravan, ...
        else:
            assert table[raw] == labels.INVALID, raw


def test_mapillary_table():
    table = labels.mapillary_v12_to_train_id()
    for raw in range(256):
        expected = MAPILLARY.get(raw, 255 if raw < 66 else labels.INVALID)
        assert table[raw] == expected, raw


def test_identity_table_accepts_train_ids_and_ignore_only():
    table = labels.identity_train_ids()
    assert [table[i] for i in range(19)] == list(range(19))
    assert table[255] == 255
    assert all(table[i] == labels.INVALID for i in range(19, 255))


def map_array(raw: np.ndarray, table: np.ndarray, mode: str = "L") -> tuple[np.ndarray, list[int], list[int]]:
    """labels.map_label on a label image made from `raw` (mode L, or P with a palette)."""
    image = Image.fromarray(raw)
    if mode == "P":
        image = image.convert("P")  # keeps the values as indices; the palette is grey
        image.putpalette([v for i in range(256) for v in ((i * 7) % 256, 0, 255 - i)])
    return labels.map_label(image, table)


@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.sampled_from(sorted(CITYSCAPES_TRAIN) + [0, 4, 9, 30])))
def test_map_label_matches_elementwise_mapping(raw):
    for mode in ("L", "P"):  # a palette label is read by its indices, never by its colours
        mapped, bad, counts = map_array(raw, labels.cityscapes_id_to_train_id(), mode)
        assert bad == []
        expected = np.vectorize(lambda v: CITYSCAPES_TRAIN.get(int(v), 255))(raw)
        assert mapped.dtype == np.uint8 and mapped.shape == raw.shape and (mapped == expected).all()
        assert counts == [int((expected == c).sum()) for c in range(NUM_CLASSES)] + [int((expected == 255).sum())]


@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_map_label_reports_exactly_the_out_of_range_values(raw):
    mapped, bad, counts = map_array(raw, labels.mapillary_v12_to_train_id())
    assert bad == sorted({int(v) for v in np.unique(raw) if v >= 66})
    assert (mapped[raw >= 66] == 255).all()  # a refused value never becomes a class
    assert sum(counts) == int((raw < 66).sum())  # refused pixels are counted nowhere


def test_map_label_flags_only_values_outside_the_range_and_keeps_road():
    """Train ID 0 (road) is a class, not a flag; 255 is a valid raw value only where a table says so."""
    table = labels.cityscapes_id_to_train_id()
    assert table.dtype == np.int16  # the documented table: raw value -> train ID, 255, or INVALID
    raw = np.array([[7, 34, 0], [255, 7, 33]], np.uint8)  # road, out of range, unlabeled, out of range, road, bicycle
    mapped, bad, counts = map_array(raw, table)
    assert bad == [34, 255]
    assert mapped[0, 0] == 0 and mapped[1, 1] == 0 and mapped[0, 2] == 255 and mapped[1, 2] == 18
    assert counts[0] == 2 and counts[18] == 1 and counts[NUM_CLASSES] == 1 and sum(counts) == 4
    mapped, bad, counts = map_array(np.array([[7, 8]], np.uint8), table)
    assert mapped.tolist() == [[0, 1]] and bad == [] and counts[:2] == [1, 1] and sum(counts) == 2
    mapillary = labels.mapillary_v12_to_train_id()
    _, bad, _ = map_array(np.array([[13, 66, 24, 41, 200]], np.uint8), mapillary)
    assert bad == [66, 200]
    mapped, bad, counts = map_array(np.array([[0, 18, 255]], np.uint8), labels.identity_train_ids())
    assert mapped.tolist() == [[0, 18, 255]] and bad == [] and counts[0] == counts[18] == counts[NUM_CLASSES] == 1
