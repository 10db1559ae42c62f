"""dginstyle.metrics: confusion matrix, metrics, agreement with mmseg, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dginstyle.cli import main
from dginstyle.data.contract import MANIFEST
from dginstyle.io import DataError, encode_label_png
from dginstyle.labels import CLASSES, IGNORE, NUM_CLASSES
from dginstyle.metrics import MIOU_OVER, confusion_matrix, evaluate_prediction_folder, metrics_from_confusion

# --------------------------------------------------------------------------------------------
# agreement with mmseg's IoUMetric
# --------------------------------------------------------------------------------------------


def random_pair(rng: np.random.Generator, shape=(37, 53)) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth over classes 0..9 with ~15% ignore; predictions over 0..9 plus 12 and 15.

    So classes 12 and 15 are absent from the ground truth but present in the prediction, and
    10, 11, 13, 14, 16, 17, 18 are absent from both.
    """
    gt = rng.integers(0, 10, size=shape).astype(np.uint8)
    gt[rng.random(shape) < 0.15] = IGNORE
    pred = np.where(rng.random(shape) < 0.6, gt, rng.choice([*range(10), 12, 15], size=shape)).astype(np.uint8)
    # On ignored pixels anything may be predicted, even a value that is not a train ID.
    ignored = gt == IGNORE
    pred[ignored] = np.where(rng.random(int(ignored.sum())) < 0.5, IGNORE, 4)
    return pred, gt


def mmseg_reference(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """IoUMetric.process + compute_metrics, without the final rounding to 2 decimals."""
    from dginstyle.compat import ensure_mmcv_ops_importable

    ensure_mmcv_ops_importable()
    from mmseg.evaluation import IoUMetric

    results = [
        IoUMetric.intersect_and_union(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(g.astype(np.int64)), NUM_CLASSES, IGNORE)
        for p, g in pairs
    ]
    inter, union, pred_area, label_area = (sum(r[i] for r in results) for i in range(4))
    ret = IoUMetric.total_area_to_metrics(inter, union, pred_area, label_area, ["mIoU"])
    return {
        "aAcc": float(ret["aAcc"]),
        "IoU": np.asarray(ret["IoU"], dtype=np.float64),
        "Acc": np.asarray(ret["Acc"], dtype=np.float64),
        "mIoU": float(np.nanmean(ret["IoU"])),
        "mAcc": float(np.nanmean(ret["Acc"])),
    }


def as_array(values: dict) -> np.ndarray:
    return np.array([np.nan if values[c] is None else values[c] for c in CLASSES])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agrees_with_mmseg_iou_metric(seed):
    rng = np.random.default_rng(seed)
    pairs = [random_pair(rng, shape=(int(rng.integers(5, 60)), int(rng.integers(5, 60)))) for _ in range(5)]
    conf = sum(confusion_matrix(p, g) for p, g in pairs)
    ours = metrics_from_confusion(conf, num_images=len(pairs))
    ref = mmseg_reference(pairs)

    np.testing.assert_allclose(as_array(ours["IoU"]), ref["IoU"], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(as_array(ours["Acc"]), ref["Acc"], atol=1e-6, equal_nan=True)
    assert ours["mIoU"] == pytest.approx(ref["mIoU"], abs=1e-6)
    assert ours["aAcc"] == pytest.approx(ref["aAcc"], abs=1e-6)
    assert ours["mAcc"] == pytest.approx(ref["mAcc"], abs=1e-6)
    # The cases the test is about really occur.
    assert ours["IoU"]["rider"] == 0.0 and ours["gt_pixels"]["rider"] == 0 and ours["pred_pixels"]["rider"] > 0  # 12
    assert ours["IoU"]["train"] is None  # 16: absent from both
    assert ours["num_classes_in_miou"] == 12


# --------------------------------------------------------------------------------------------
# hand-computed cases
# --------------------------------------------------------------------------------------------


def test_tiny_image_by_hand():
    gt = np.array([[0, 0, 1], [1, 255, 2]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 18, 0]], dtype=np.uint8)
    conf = confusion_matrix(pred, gt)
    assert conf.dtype == np.int64 and conf.shape == (19, 19)
    expected = np.zeros((19, 19), dtype=np.int64)
    expected[0, 0] = 1  # road -> road
    expected[0, 1] = 1  # road -> sidewalk
    expected[1, 1] = 2  # sidewalk -> sidewalk (x2)
    expected[2, 0] = 1  # building -> road
    np.testing.assert_array_equal(conf, expected)

    m = metrics_from_confusion(conf, num_images=1)
    # road: TP 1, gt 2, pred 2 -> 1 / 3; sidewalk: TP 2, gt 2, pred 3 -> 2 / 3; building: 0 / 1.
    assert m["IoU"]["road"] == pytest.approx(1 / 3)
    assert m["IoU"]["sidewalk"] == pytest.approx(2 / 3)
    assert m["IoU"]["building"] == 0.0
    assert m["IoU"]["bicycle"] is None  # predicted only on the ignored pixel: absent from both
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["aAcc"] == pytest.approx(3 / 5)
    assert m["Acc"]["road"] == pytest.approx(1 / 2) and m["Acc"]["sidewalk"] == 1.0 and m["Acc"]["building"] == 0.0
    assert m["mAcc"] == pytest.approx(0.5)
    assert m["valid_pixels"] == 5 and m["num_images"] == 1
    assert m["gt_pixels"]["road"] == 2 and m["pred_pixels"]["sidewalk"] == 3
    assert m["miou_over"] == MIOU_OVER and "fractions" in m["values"]
    assert m["classes"] == list(CLASSES)


def test_class_only_in_prediction_counts_with_iou_zero():
    gt = np.array([[0, 0], [0, 0]], dtype=np.uint8)
    pred = np.array([[0, 0], [0, 13]], dtype=np.uint8)
    m = metrics_from_confusion(confusion_matrix(pred, gt))
    assert m["IoU"]["road"] == pytest.approx(3 / 4)
    assert m["IoU"]["car"] == 0.0
    assert m["mIoU"] == pytest.approx((3 / 4 + 0) / 2)
    assert m["num_classes_in_miou"] == 2


def test_all_ignored_and_empty():
    gt = np.full((2, 3), IGNORE, dtype=np.uint8)
    pred = np.zeros((2, 3), dtype=np.uint8)
    conf = confusion_matrix(pred, gt)
    assert conf.sum() == 0
    m = metrics_from_confusion(conf)
    assert m["mIoU"] is None and m["aAcc"] is None and m["valid_pixels"] == 0
    json.dumps(m)  # JSON-ready: no NaN


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])  # the uint8 fast path and the general one
def test_out_of_range_values_are_errors(dtype):
    def a(rows):
        return np.array(rows, dtype=dtype)

    gt = a([[0, 1]])
    with pytest.raises(ValueError, match=r"prediction holds values \[19\]"):
        confusion_matrix(a([[0, 19]]), gt)
    with pytest.raises(ValueError, match=r"prediction holds values \[255\]"):
        confusion_matrix(a([[255, 1]]), gt)
    # On an ignored pixel the prediction does not matter.
    assert confusion_matrix(a([[0, 200]]), a([[0, 255]])).sum() == 1
    with pytest.raises(ValueError, match=r"ground truth holds values \[40\]"):
        confusion_matrix(a([[0, 0]]), a([[0, 40]]))
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), dtype), np.zeros((2, 3), dtype))


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------

label_values = st.sampled_from([*range(NUM_CLASSES), IGNORE])
shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@st.composite
def label_pairs(draw, shape=None):
    shape = shape or draw(shapes)
    gt = draw(arrays(np.uint8, shape, elements=label_values))
    pred = draw(arrays(np.uint8, shape, elements=st.integers(0, NUM_CLASSES - 1)))
    return pred, gt


@settings(max_examples=60, deadline=None)
@given(label_pairs())
def test_matrix_sums_to_valid_pixels(pair):
    pred, gt = pair
    conf = confusion_matrix(pred, gt)
    assert conf.sum() == int((gt != IGNORE).sum())
    np.testing.assert_array_equal(conf.sum(axis=1), np.bincount(gt[gt != IGNORE], minlength=256)[:NUM_CLASSES])


@settings(max_examples=60, deadline=None)
@given(label_pairs())
def test_uint8_fast_path_equals_general_path(pair):
    pred, gt = pair
    fast = confusion_matrix(pred, gt)
    general = confusion_matrix(pred.astype(np.int64), gt.astype(np.int64))
    assert fast.dtype == general.dtype == np.int64
    np.testing.assert_array_equal(fast, general)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, shapes, elements=label_values))
def test_perfect_prediction_gives_miou_one(gt):
    pred = np.where(gt == IGNORE, 0, gt).astype(np.uint8)
    m = metrics_from_confusion(confusion_matrix(pred, gt))
    if (gt != IGNORE).any():
        assert m["mIoU"] == 1.0 and m["aAcc"] == 1.0
        assert all(v in (None, 1.0) for v in m["IoU"].values())
    else:
        assert m["mIoU"] is None


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 10), st.data())
def test_matrix_of_concatenation_is_sum(width, data):
    a = data.draw(label_pairs(shape=(data.draw(st.integers(1, 8)), width)))
    b = data.draw(label_pairs(shape=(data.draw(st.integers(1, 8)), width)))
    joined = confusion_matrix(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))
    np.testing.assert_array_equal(joined, confusion_matrix(*a) + confusion_matrix(*b))


# --------------------------------------------------------------------------------------------
# prediction folders and the CLI
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_dataset(tmp_path):
    """A prepared dataset with three 'val' labels, and a prediction folder for them (+1 extra)."""
    rng = np.random.default_rng(7)
    root = tmp_path / "fake_ds"
    preds = tmp_path / "preds"
    (root / "labels" / "val").mkdir(parents=True)
    preds.mkdir()
    stems = ["a", "b", "c"]
    pairs = []
    for stem in stems:
        pred, gt = random_pair(rng, shape=(24, 40))
        pred[gt == IGNORE] = 0
        (root / "labels" / "val" / f"{stem}.png").write_bytes(encode_label_png(gt))
        (preds / f"{stem}.png").write_bytes(encode_label_png(pred))
        pairs.append((pred, gt))
    (preds / "not_in_split.png").write_bytes(encode_label_png(np.zeros((24, 40), np.uint8)))
    (root / "val.txt").write_text("".join(f"{s}\n" for s in stems))
    (root / MANIFEST).write_text(json.dumps({"dataset": "fake_ds", "labelled": True, "splits": {"val": 3}}))
    return root, preds, pairs


def test_cli_end_to_end(fake_dataset, tmp_path):
    root, preds, pairs = fake_dataset
    out = tmp_path / "metrics" / "val.json"
    assert main(["evaluate-predictions", "--pred", str(preds), "--dataset", str(root), "--split", "val", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = metrics_from_confusion(sum(confusion_matrix(p, g) for p, g in pairs), num_images=3)
    assert result["mIoU"] == pytest.approx(expected["mIoU"])
    assert result["mIoU"] == pytest.approx(mmseg_reference(pairs)["mIoU"], abs=1e-6)
    assert result["aAcc"] == pytest.approx(expected["aAcc"])
    assert result["IoU"] == pytest.approx(expected["IoU"])
    assert result["dataset"] == "fake_ds" and result["split"] == "val"
    assert result["num_images"] == 3 and result["extra_predictions_ignored"] == 1
    assert np.array(result["confusion_matrix"]).shape == (19, 19)
    assert np.array(result["confusion_matrix"]).sum() == result["valid_pixels"] == sum(int((g != IGNORE).sum()) for _, g in pairs)
    assert result["miou_over"] == MIOU_OVER
    assert [p.name for p in out.parent.iterdir()] == ["val.json"]  # atomic write: no temp files


def test_threads_do_not_change_the_result(fake_dataset, tmp_path):
    root, preds, _ = fake_dataset
    one = evaluate_prediction_folder(preds, root, "val", tmp_path / "1.json", threads=1)
    many = evaluate_prediction_folder(preds, root, "val", tmp_path / "4.json", threads=4)
    assert one["confusion_matrix"] == many["confusion_matrix"]


def test_cli_missing_prediction(fake_dataset, tmp_path, capsys):
    root, preds, _ = fake_dataset
    (preds / "b.png").unlink()
    out = tmp_path / "m.json"
    assert main(["evaluate-predictions", "--pred", str(preds), "--dataset", str(root), "--split", "val", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "b.png" in err and "1 of 3" in err and "missing" in err
    assert not out.exists()


def test_cli_size_mismatch(fake_dataset, tmp_path, capsys):
    root, preds, _ = fake_dataset
    (preds / "c.png").write_bytes(encode_label_png(np.zeros((24, 41), np.uint8)))
    out = tmp_path / "m.json"
    assert main(["evaluate-predictions", "--pred", str(preds), "--dataset", str(root), "--split", "val", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(preds / "c.png") in err and str(root / "labels" / "val" / "c.png") in err
    assert "41x24" in err and "40x24" in err
    assert not out.exists()


def test_out_of_range_prediction_file(fake_dataset, tmp_path):
    root, preds, _ = fake_dataset
    (preds / "a.png").write_bytes(encode_label_png(np.full((24, 40), 19, np.uint8)))
    with pytest.raises(DataError, match=r"a\.png.*train ID"):
        evaluate_prediction_folder(preds, root, "val", tmp_path / "m.json")


def test_unknown_split_and_missing_folder(fake_dataset, tmp_path):
    root, preds, _ = fake_dataset
    with pytest.raises(DataError, match="test"):
        evaluate_prediction_folder(preds, root, "test", tmp_path / "m.json")
    with pytest.raises(DataError, match="nowhere"):
        evaluate_prediction_folder(tmp_path / "nowhere", root, "val", tmp_path / "m.json")
