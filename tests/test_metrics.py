"""dginstyle.metrics: confusion matrix, metrics, agreement with mmseg, and the CLI."""

from __future__ import annotations

import json
import logging
import warnings

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


# --------------------------------------------------------------------------------------------
# exact behaviour pinned by mutation testing (see docs/testing.md)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_error_messages_list_at_most_ten_values_and_the_valid_range(dtype):
    gt = np.zeros((1, 12), dtype=dtype)
    bad = np.arange(19, 31, dtype=dtype)[None, :]  # 12 distinct out-of-range values
    with pytest.raises(ValueError) as exc:
        confusion_matrix(np.zeros((1, 12), dtype=dtype), bad)
    assert str(exc.value) == f"ground truth holds values {list(range(19, 29))} that are neither train IDs 0..18 nor ignore 255"
    with pytest.raises(ValueError) as exc:
        confusion_matrix(bad, gt)
    assert str(exc.value) == f"prediction holds values {list(range(19, 29))} on non-ignored pixels; a prediction must be a train ID 0..18"
    # Another class count and ignore value show up in the messages.
    with pytest.raises(ValueError) as exc:
        confusion_matrix(np.zeros((1, 2), dtype=dtype), np.array([[5, 7]], dtype=dtype), num_classes=5, ignore=7)
    assert str(exc.value) == "ground truth holds values [5] that are neither train IDs 0..4 nor ignore 7"
    with pytest.raises(ValueError) as exc:
        confusion_matrix(np.array([[5, 0]], dtype=dtype), np.array([[0, 7]], dtype=dtype), num_classes=5, ignore=7)
    assert str(exc.value) == "prediction holds values [5] on non-ignored pixels; a prediction must be a train ID 0..4"


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_first_value_past_the_classes_is_an_error(dtype):
    """A ground truth of exactly C (19) is out of range, alone or beside larger values."""
    with pytest.raises(ValueError) as exc:
        confusion_matrix(np.array([[0, 0]], dtype=dtype), np.array([[0, 19]], dtype=dtype))
    assert str(exc.value).startswith("ground truth holds values [19] ")
    with pytest.raises(ValueError) as exc:
        confusion_matrix(np.array([[0, 0, 0]], dtype=dtype), np.array([[19, 0, 40]], dtype=dtype))
    assert str(exc.value).startswith("ground truth holds values [19, 40] ")


def test_wide_values_in_non_uint8_maps_are_reported_as_they_are():
    """Only two uint8 maps take the 256 x 256 fast path: a wider map (or a mix of dtypes) holding
    values >= 256 must be reported with its real values, not wrapped modulo 256."""
    u8 = np.array([[0, 1]], dtype=np.uint8)
    for wide in (np.int64, np.uint16, np.int32):
        with pytest.raises(ValueError) as exc:
            confusion_matrix(u8, np.array([[300, 1]], dtype=wide))
        assert str(exc.value).startswith("ground truth holds values [300] ")
        with pytest.raises(ValueError) as exc:
            confusion_matrix(np.array([[300, 1]], dtype=wide), u8)
        assert str(exc.value).startswith("prediction holds values [300] ")
        with pytest.raises(ValueError) as exc:
            confusion_matrix(np.array([[0, 1]], dtype=wide), np.array([[300, 1]], dtype=wide))
        assert str(exc.value).startswith("ground truth holds values [300] ")
    # Mixed dtypes with valid values give the same matrix as two uint8 maps.
    pred = np.array([[0, 3, 18]], dtype=np.uint8)
    gt = np.array([[0, 255, 18]], dtype=np.uint8)
    expected = confusion_matrix(pred, gt)
    for p, g in [(pred, gt.astype(np.int64)), (pred.astype(np.int64), gt), (pred.astype(np.uint16), gt.astype(np.int32))]:
        conf = confusion_matrix(p, g)
        assert conf.dtype == np.int64
        np.testing.assert_array_equal(conf, expected)


def test_class_counts_and_ignore_values_beyond_uint8():
    pred = np.array([[0, 255, 7]], dtype=np.uint8)
    gt = np.array([[0, 254, 255]], dtype=np.uint8)
    # 257 classes: the matrix is 257 x 257 even though uint8 maps cannot reach class 256.
    conf = confusion_matrix(pred, gt, num_classes=257)
    assert conf.shape == (257, 257) and conf.dtype == np.int64
    assert conf[0, 0] == 1 and conf[254, 255] == 1 and conf.sum() == 2
    conf = confusion_matrix(pred, gt, num_classes=257, ignore=300)
    assert conf.shape == (257, 257) and conf.dtype == np.int64
    assert conf[0, 0] == 1 and conf[254, 255] == 1 and conf[255, 7] == 1 and conf.sum() == 3
    # 256 classes: every uint8 value is a class; the result is that of the general path.
    conf = confusion_matrix(pred, gt, num_classes=256)
    assert conf.shape == (256, 256) and conf.dtype == np.int64 and conf.sum() == 2
    np.testing.assert_array_equal(conf, confusion_matrix(pred.astype(np.int64), gt.astype(np.int64), num_classes=256))
    # An ignore value no uint8 pixel can hold ignores nothing.
    conf = confusion_matrix(pred, gt, num_classes=256, ignore=256)
    assert conf.shape == (256, 256) and conf.sum() == 3 and conf[255, 7] == 1
    with pytest.raises(ValueError) as exc:
        confusion_matrix(pred, gt, ignore=256)
    assert str(exc.value) == "ground truth holds values [254, 255] that are neither train IDs 0..18 nor ignore 256"
    # Ignore 0: class 0 is skipped, on both paths.
    pred0, gt0 = np.array([[5, 18, 200]], dtype=np.uint8), np.array([[0, 1, 0]], dtype=np.uint8)
    conf = confusion_matrix(pred0, gt0, ignore=0)
    assert conf.sum() == 1 and conf[1, 18] == 1
    np.testing.assert_array_equal(conf, confusion_matrix(pred0.astype(np.int64), gt0.astype(np.int64), ignore=0))


def test_metrics_of_a_matrix_that_is_not_19_by_19():
    conf = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    m = metrics_from_confusion(conf, num_images=2)
    assert m["classes"] == ["0", "1", "2"]
    assert list(m["IoU"]) == ["0", "1", "2"]
    assert m["IoU"] == {"0": pytest.approx(3 / 4), "1": pytest.approx(2 / 3), "2": None}
    assert m["Acc"] == {"0": pytest.approx(3 / 4), "1": 1.0, "2": None}
    assert m["gt_pixels"] == {"0": 4, "1": 2, "2": 0}
    assert m["pred_pixels"] == {"0": 3, "1": 3, "2": 0}
    assert m["num_classes_in_miou"] == 2 and m["valid_pixels"] == 6 and m["num_images"] == 2
    named = metrics_from_confusion(conf, classes=("a", "b", "c"))
    assert named["classes"] == ["a", "b", "c"] and named["IoU"]["c"] is None


def test_metrics_texts():
    m = metrics_from_confusion(np.eye(NUM_CLASSES, dtype=np.int64))
    assert m["values"] == "fractions in [0, 1] (tables show percent)"
    assert m["miou_over"] == MIOU_OVER
    assert m["macc_over"] == "classes present in the ground truth, as mmseg IoUMetric"
    assert m["num_images"] is None and m["mIoU"] == m["aAcc"] == m["mAcc"] == 1.0


@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (4,), (2, 2, 2)])
def test_non_square_matrix_is_refused(shape):
    with pytest.raises(ValueError) as exc:
        metrics_from_confusion(np.zeros(shape, dtype=np.int64))
    assert str(exc.value) == f"confusion matrix must be square, got shape {shape}"


def test_absent_classes_give_none_without_numpy_warnings():
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 division, no mean of an empty slice
        empty = metrics_from_confusion(conf)
        conf[0, 0] = 5
        conf[1, 0] = 1
        some = metrics_from_confusion(conf)
    assert empty["mIoU"] is None and empty["aAcc"] is None and empty["mAcc"] is None
    assert all(v is None for v in empty["IoU"].values()) and all(v is None for v in empty["Acc"].values())
    assert empty["num_classes_in_miou"] == 0
    assert some["IoU"]["road"] == pytest.approx(5 / 6) and some["IoU"]["sidewalk"] == 0.0 and some["IoU"]["car"] is None
    assert some["Acc"]["road"] == 1.0 and some["Acc"]["sidewalk"] == 0.0 and some["Acc"]["car"] is None
    assert some["mAcc"] == pytest.approx(0.5) and some["mIoU"] == pytest.approx(5 / 12)
    json.dumps(some, allow_nan=False)
    json.dumps(empty, allow_nan=False)


def test_ratio_is_nan_where_the_denominator_is_zero():
    from dginstyle.metrics import _ratio

    out = _ratio(np.array([1.0, 0.0, 2.0, 3.0]), np.array([0, 0, 4, 3]))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [np.nan, np.nan, 0.5, 1.0])


def _set_manifest(root, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest))


def test_result_json_fields(fake_dataset, tmp_path):
    root, preds, pairs = fake_dataset
    _set_manifest(root, {"dataset": "Fancy DS", "name": "nick", "labelled": True})
    out = tmp_path / "out.json"
    result = evaluate_prediction_folder(preds, root, "val", out, threads=1)
    assert result["dataset"] == "Fancy DS"
    assert result["dataset_dir"] == str(root) and result["pred_dir"] == str(preds) and result["split"] == "val"
    assert result["ignore_index"] == 255
    assert result["confusion_matrix_axes"] == "rows = ground truth, columns = prediction (train IDs)"
    assert result["extra_predictions_ignored"] == 1 and result["num_images"] == 3
    expected = sum(confusion_matrix(p, g) for p, g in pairs)
    assert result["confusion_matrix"] == expected.tolist()
    assert all(type(v) is int for row in result["confusion_matrix"] for v in row)
    for key, value in metrics_from_confusion(expected, num_images=3).items():
        assert result[key] == value, key
    written = json.loads(out.read_text())
    assert written == result
    assert all(type(v) is int for row in written["confusion_matrix"] for v in row)


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({"dataset": "Fancy DS"}, "Fancy DS"),
        ({"dataset": "Fancy DS", "name": "nick"}, "Fancy DS"),
        ({"name": "nick"}, "nick"),
        ({"dataset": "", "name": "nick"}, "nick"),
        ({}, "fake_ds"),
        ({"dataset": None, "name": ""}, "fake_ds"),
    ],
)
def test_dataset_name_fallbacks(fake_dataset, tmp_path, manifest, expected):
    root, preds, _ = fake_dataset
    _set_manifest(root, manifest)
    assert evaluate_prediction_folder(preds, root, "val", tmp_path / "m.json", threads=1)["dataset"] == expected


def test_log_line(fake_dataset, tmp_path, caplog):
    root, preds, _ = fake_dataset
    _set_manifest(root, {"dataset": "Fancy DS"})
    out = tmp_path / "m.json"
    with caplog.at_level(logging.INFO, logger="dginstyle.metrics"):
        result = evaluate_prediction_folder(preds, root, "val", out, threads=1)
    assert 0 < result["mIoU"] < 1
    assert caplog.messages == [f"Fancy DS/val: mIoU {100 * result['mIoU']:.2f}% over 3 images -> {out}"]


def test_log_line_without_miou(fake_dataset, tmp_path, caplog):
    root, preds, _ = fake_dataset
    for stem in ("a", "b", "c"):
        (root / "labels" / "val" / f"{stem}.png").write_bytes(encode_label_png(np.full((24, 40), IGNORE, np.uint8)))
    out = tmp_path / "m.json"
    with caplog.at_level(logging.INFO, logger="dginstyle.metrics"):
        result = evaluate_prediction_folder(preds, root, "val", out, threads=1)
    assert result["mIoU"] is None and result["valid_pixels"] == 0
    assert caplog.messages == [f"fake_ds/val: mIoU 0.00% over 3 images -> {out}"]


def test_empty_split_is_refused(fake_dataset, tmp_path):
    root, preds, _ = fake_dataset
    (root / "val.txt").write_text("")
    with pytest.raises(DataError) as exc:
        evaluate_prediction_folder(preds, root, "val", tmp_path / "m.json")
    assert str(exc.value) == f"{root}: split 'val' is empty; nothing to evaluate"
    assert not (tmp_path / "m.json").exists()


def test_damaged_prediction_is_named_a_prediction(fake_dataset, tmp_path):
    root, preds, _ = fake_dataset
    (preds / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError) as exc:
        evaluate_prediction_folder(preds, root, "val", tmp_path / "m.json", threads=1)
    assert str(exc.value).startswith(f"{preds / 'b.png'}: cannot decode prediction PNG")
    (root / "labels" / "val" / "b.png").write_bytes(b"not a png at all")
    (preds / "b.png").write_bytes(encode_label_png(np.zeros((24, 40), np.uint8)))
    with pytest.raises(DataError) as exc:
        evaluate_prediction_folder(preds, root, "val", tmp_path / "m.json", threads=1)
    assert str(exc.value).startswith(f"{root / 'labels' / 'val' / 'b.png'}: cannot decode label PNG")


@pytest.fixture
def pools(monkeypatch):
    """Records the max_workers of every ThreadPoolExecutor evaluate_prediction_folder opens."""
    import dginstyle.metrics as metrics_module

    made: list = []
    real = metrics_module.ThreadPoolExecutor

    class Recording(real):
        def __init__(self, max_workers=None, *args, **kwargs):
            made.append(max_workers)
            super().__init__(max_workers, *args, **kwargs)

    monkeypatch.setattr(metrics_module, "ThreadPoolExecutor", Recording)
    return made


def test_thread_count_chooses_the_code_path(fake_dataset, tmp_path, monkeypatch, pools):
    root, preds, pairs = fake_dataset
    expected = sum(confusion_matrix(p, g) for p, g in pairs).tolist()

    def run(threads):
        pools.clear()
        result = evaluate_prediction_folder(preds, root, "val", tmp_path / f"{threads}.json", threads=threads)
        assert result["confusion_matrix"] == expected
        return list(pools)

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert run(1) == []  # one thread: no pool, whatever the environment says
    assert run(2) == [2]
    assert run(5) == [5]
    assert run(None) == [3]  # default: $OMP_NUM_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert run(None) == []
    assert run(2) == [2]
