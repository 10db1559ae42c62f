"""Property-based tests (hypothesis) of the label mappings and the metrics, beside the ones in
tests/test_labels.py (a mapping equals its hand-written table, invalid values are reported)
and tests/test_metrics.py (matrix sums to the valid pixels, perfect prediction gives 1,
concatenation adds matrices, uint8 fast path equals the general one)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from dginstyle import labels
from dginstyle.data.layouts import FORMATS, reader
from dginstyle.labels import IGNORE, NUM_CLASSES
from dginstyle.metrics import confusion_matrix, metrics_from_confusion

TABLES = {fmt: reader(fmt).lookup_table() for fmt in FORMATS}
TRAIN_IDS = set(range(NUM_CLASSES)) | {IGNORE}
shapes = st.tuples(st.integers(1, 10), st.integers(1, 10))


def valid_raw(fmt: str) -> list[int]:
    """The raw values a dataset really uses (its table does not mark them invalid)."""
    return [raw for raw in range(256) if TABLES[fmt][raw] != labels.INVALID]


# --------------------------------------------------------------------------------- label mappings


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_class_is_reachable_and_nothing_else(fmt):
    """Each dataset's table lands only on train IDs or ignore, and reaches all 19 classes."""
    targets = {int(TABLES[fmt][raw]) for raw in valid_raw(fmt)}
    assert targets <= TRAIN_IDS
    assert set(range(NUM_CLASSES)) <= targets


def test_datasets_with_cityscapes_label_ids_share_one_table():
    """GTA5, ACDC and Dark Zurich labels are Cityscapes label IDs: one table, not four copies."""
    for fmt in ("gta5", "acdc", "darkzurich"):
        np.testing.assert_array_equal(TABLES[fmt], TABLES["cityscapes"])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FORMATS), st.data())
def test_mapped_labels_are_train_ids_and_a_fixed_point_of_the_train_id_table(fmt, data):
    """A converted label holds only train IDs and 255, so reading it back as train IDs (what
    every later stage does) changes nothing and refuses nothing."""
    raw = data.draw(arrays(np.uint8, data.draw(shapes), elements=st.sampled_from(valid_raw(fmt))))
    mapped, bad, _ = labels.map_label(Image.fromarray(raw), TABLES[fmt])
    assert bad == [] and set(np.unique(mapped).tolist()) <= TRAIN_IDS
    again, bad_again, _ = labels.map_label(Image.fromarray(mapped), labels.identity_train_ids())
    assert bad_again == []
    np.testing.assert_array_equal(again, mapped)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(FORMATS), arrays(np.uint8, shapes), st.randoms(use_true_random=False))
def test_mapping_is_pixelwise(fmt, raw, rnd):
    """Shuffling the pixels before or after the mapping gives the same label and the same refusals."""
    order = list(range(raw.size))
    rnd.shuffle(order)
    shuffled = raw.reshape(-1)[order].reshape(raw.shape)
    mapped, bad, counts = labels.map_label(Image.fromarray(raw), TABLES[fmt])
    mapped_shuffled, bad_shuffled, counts_shuffled = labels.map_label(Image.fromarray(shuffled), TABLES[fmt])
    np.testing.assert_array_equal(mapped_shuffled, mapped.reshape(-1)[order].reshape(raw.shape))
    assert bad_shuffled == bad and counts_shuffled == counts
    assert set(bad) == {int(v) for v in np.unique(raw) if TABLES[fmt][v] == labels.INVALID}


def test_palette_tells_every_class_apart():
    colours = {tuple(labels.PALETTE[c]) for c in range(NUM_CLASSES)}
    assert len(colours) == NUM_CLASSES


# --------------------------------------------------------------------------------- metrics


@st.composite
def label_pairs(draw, ignore: bool = True):
    shape = draw(shapes)
    gt_values = st.sampled_from([*range(NUM_CLASSES), IGNORE]) if ignore else st.integers(0, NUM_CLASSES - 1)
    gt = draw(arrays(np.uint8, shape, elements=gt_values))
    pred = draw(arrays(np.uint8, shape, elements=st.integers(0, NUM_CLASSES - 1)))
    return pred, gt


def _fractions(m: dict) -> list[float]:
    values = [m["mIoU"], m["aAcc"], m["mAcc"], *m["IoU"].values(), *m["Acc"].values()]
    return [v for v in values if v is not None]


@settings(max_examples=80, deadline=None)
@given(label_pairs())
def test_every_metric_is_a_fraction(pair):
    m = metrics_from_confusion(confusion_matrix(*pair))
    assert all(0.0 <= v <= 1.0 for v in _fractions(m))
    if m["mIoU"] is not None:  # the mean lies within its classes' IoUs
        present = [v for v in m["IoU"].values() if v is not None]
        assert min(present) - 1e-12 <= m["mIoU"] <= max(present) + 1e-12


@settings(max_examples=60, deadline=None)
@given(label_pairs(), st.randoms(use_true_random=False))
def test_pixel_order_does_not_matter(pair, rnd):
    pred, gt = pair
    order = list(range(gt.size))
    rnd.shuffle(order)
    shuffled = (pred.reshape(-1)[order].reshape(-1, 1), gt.reshape(-1)[order].reshape(-1, 1))
    np.testing.assert_array_equal(confusion_matrix(*shuffled), confusion_matrix(pred, gt))


@settings(max_examples=60, deadline=None)
@given(label_pairs(), st.permutations(range(NUM_CLASSES)))
def test_renaming_the_classes_permutes_the_matrix_and_keeps_the_means(pair, perm):
    pred, gt = pair
    lut = np.arange(256, dtype=np.uint8)
    lut[:NUM_CLASSES] = perm  # class c becomes perm[c]; 255 stays ignore
    conf = confusion_matrix(pred, gt)
    renamed = confusion_matrix(lut[pred], lut[gt])
    inverse = np.argsort(perm)
    np.testing.assert_array_equal(renamed[np.ix_(perm, perm)], conf)
    np.testing.assert_array_equal(renamed, conf[np.ix_(inverse, inverse)])
    a, b = metrics_from_confusion(conf), metrics_from_confusion(renamed)
    for key in ("mIoU", "aAcc", "mAcc"):
        assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(label_pairs(), st.data())
def test_ignored_pixels_do_not_count_whatever_is_predicted_there(pair, data):
    pred, gt = pair
    other = pred.copy()
    ignored = gt == IGNORE
    other[ignored] = data.draw(arrays(np.uint8, int(ignored.sum()), elements=st.integers(0, 255)))
    conf = confusion_matrix(other, gt)
    np.testing.assert_array_equal(conf, confusion_matrix(pred, gt))
    assert conf.sum() == int((~ignored).sum())


@settings(max_examples=60, deadline=None)
@given(label_pairs(ignore=False))
def test_iou_is_symmetric_in_prediction_and_ground_truth(pair):
    """Without ignore pixels, swapping the roles transposes the matrix and keeps every IoU."""
    pred, gt = pair
    conf = confusion_matrix(pred, gt)
    swapped = confusion_matrix(gt, pred)
    np.testing.assert_array_equal(swapped, conf.T)
    assert metrics_from_confusion(swapped)["IoU"] == metrics_from_confusion(conf)["IoU"]
