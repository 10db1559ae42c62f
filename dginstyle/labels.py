"""The 19 Cityscapes train classes, their palette, and every dataset's mapping to them.

All label maps this project writes hold Cityscapes train IDs (0..18) with 255 = ignore.
The Cityscapes label table comes from the `cityscapesscripts` package, the single source of
truth, rather than being retyped here. Mappings are 256-entry lookup tables so that a whole
label image converts in one vectorised indexing operation.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS

IGNORE = 255
NUM_CLASSES = 19

# Train-ID order, taken from cityscapesscripts (trainId 0..18).
CLASSES: tuple[str, ...] = tuple(
    label.name
    for label in sorted(
        (lbl for lbl in _CITYSCAPES_LABELS if 0 <= lbl.trainId < NUM_CLASSES),
        key=lambda lbl: lbl.trainId,
    )
)
assert len(CLASSES) == NUM_CLASSES

# RGB colour per train ID (the official Cityscapes colours), plus black for ignore.
PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)
for _label in _CITYSCAPES_LABELS:
    if 0 <= _label.trainId < NUM_CLASSES:
        PALETTE[_label.trainId] = _label.color

# Classes the paper calls "things" (ImageNet feature distance) and the small ones MRLF helps.
THING_CLASSES = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
SMALL_CLASSES = (5, 6, 7)  # pole, traffic light, traffic sign

# Sentinel in lookup tables for raw values that the dataset never uses: conversion refuses
# them (a label outside the dataset's ID range is a corrupt or foreign file, not "ignore").
INVALID = -1


def _lut(pairs: dict[int, int], valid_raw: range | list[int]) -> np.ndarray:
    """A 256-entry int16 table: raw value -> train ID; 255 for valid unmapped, INVALID otherwise."""
    table = np.full(256, INVALID, dtype=np.int16)
    for raw in valid_raw:
        table[raw] = IGNORE
    for raw, train_id in pairs.items():
        table[raw] = train_id
    return table


def cityscapes_id_to_train_id() -> np.ndarray:
    """Cityscapes label IDs (0..33, as in gtFine *_labelIds.png, GTA5, ACDC, Dark Zurich)."""
    pairs = {
        lbl.id: (lbl.trainId if 0 <= lbl.trainId < NUM_CLASSES else IGNORE)
        for lbl in _CITYSCAPES_LABELS
        if lbl.id >= 0
    }
    return _lut(pairs, range(0, max(pairs) + 1))


def identity_train_ids() -> np.ndarray:
    """Labels already in train IDs (BDD100K sem_seg masks, the miniature world)."""
    return _lut({c: c for c in range(NUM_CLASSES)}, [IGNORE])


# Mapillary Vistas v1.2 (66 classes, indices 0..65) -> train IDs, as in docs/method.md section 4.
MAPILLARY_V12_TO_TRAIN_ID: dict[int, int] = {
    13: 0, 24: 0, 41: 0,      # road <- road, lane marking (general), manhole
    2: 1, 15: 1,              # sidewalk <- curb, sidewalk
    17: 2,                    # building
    6: 3,                     # wall
    3: 4,                     # fence
    45: 5, 47: 5,             # pole <- pole, utility pole
    48: 6,                    # traffic light
    50: 7,                    # traffic sign (front)
    30: 8,                    # vegetation
    29: 9,                    # terrain
    27: 10,                   # sky
    19: 11,                   # person
    20: 12, 21: 12, 22: 12,   # rider <- bicyclist, motorcyclist, other rider
    55: 13,                   # car
    61: 14,                   # truck
    54: 15,                   # bus
    58: 16,                   # train <- on rails
    57: 17,                   # motorcycle
    52: 18,                   # bicycle
}
MAPILLARY_V12_NUM_CLASSES = 66


def mapillary_v12_to_train_id() -> np.ndarray:
    return _lut(MAPILLARY_V12_TO_TRAIN_ID, range(MAPILLARY_V12_NUM_CLASSES))


def map_label(label, table: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Map a decoded single-channel PIL label image (mode L, or P whose palette indices are the
    values) through `table` in two C passes: its 256-bin histogram and PIL's `point`.

    Returns (the train-ID map as uint8, the raw values present that the table refuses, the pixel
    count of each train ID with one last entry for ignore). The counts come from the histogram,
    so the converted map is never read again."""
    table = np.asarray(table).tolist()  # plain ints: this runs once per label image
    histogram = label.histogram()[:256]
    bad, counts = [], [0] * (NUM_CLASSES + 1)
    for raw, n in enumerate(histogram):
        if n and table[raw] < 0:
            bad.append(raw)
        elif n:
            counts[min(table[raw], NUM_CLASSES)] += n
    lut = [t if t >= 0 else IGNORE for t in table]
    return np.asarray(label.point(lut, "L")), bad, counts


def lut_as_pairs(table: np.ndarray) -> dict[str, int]:
    """The non-ignore part of a lookup table as {raw: train_id}, for manifests."""
    return {str(raw): int(t) for raw, t in enumerate(table) if 0 <= t < NUM_CLASSES}


def colorize(label: np.ndarray) -> np.ndarray:
    """Train-ID map (H, W) -> RGB image (H, W, 3) in the Cityscapes palette."""
    return PALETTE[label]
