"""Paper tables, the statistics: which seeds and metrics files a table uses, mean and sample std
over seeds per cell, averages over the columns, and the reported rows set beside ours.

Written for the mutation testing of dginstyle/tables.py (docs/testing.md); the renderings, the
plot and the CLI are tested in tests/test_tables.py. The reported numbers here are made up and
passed in memory, so the expected cells do not depend on dginstyle/assets/reported.yaml.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
from pathlib import Path

import pytest

from dginstyle import tables
from dginstyle.io import DataError
from dginstyle.labels import CLASSES
from dginstyle.tables import (
    REPORTED_PATH,
    Cell,
    build_table,
    find_metrics,
    metrics_path,
    needed_metrics,
    read_metrics,
    spec_seeds,
    validate_spec,
)

TARGETS = ["t_cs", "t_bdd", "t_mv", "t_acdc"]
REPORTED_COLUMN = {"t_cs": "cityscapes", "t_bdd": "bdd100k", "t_mv": "mapillary", "t_acdc": "acdc"}
COLUMNS = [{"target": t, "reported": REPORTED_COLUMN[t]} for t in TARGETS]
THREE = COLUMNS[:3]  # the columns r_all's average is over

# mIoU (fraction) per experiment, seed and target (TARGETS order); mAcc = mIoU + 0.25
MIOU = {
    "a": {0: [0.40, 0.30, 0.20, 0.10], 1: [0.44, 0.31, 0.26, 0.12], 2: [0.49, 0.35, 0.21, 0.17]},
    "b": {1: [0.50, 0.45, 0.40, 0.35], 3: [0.56, 0.41, 0.47, 0.30]},
}

R_ALL_PER_CLASS = {c: 10.0 + i for i, c in enumerate(CLASSES)} | {"train": None}
REPORTED = {
    "format": 1,
    "metric": "mIoU",
    "unit": "percent",
    "columns": {
        "cityscapes": {"label": "CS"},
        "bdd100k": {"label": "BDD"},
        "mapillary": {"label": "MV"},
        "acdc": {"label": "ACDC"},
        "darkzurich": {"label": "DZ"},
    },
    "sources": {
        "p": {"citation": "Paper P, 2024", "short": "P"},
        "q": {"citation": "Paper Q, 2023", "short": "Q"},
    },
    "rows": {
        "r_all": {
            "label": "All", "source": "p", "via": None, "table": "Table 1", "row": "all", "verified": True,
            "verified_in": "here", "note": None,
            "values": {"cityscapes": 50.5, "bdd100k": 40.25, "mapillary": 30.0, "acdc": 20.0},
            "average": {"value": 40.25, "over": ["cityscapes", "bdd100k", "mapillary"]},
            "per_class": {"cityscapes": R_ALL_PER_CLASS},
        },
        "r_other": {
            "label": "Other", "source": "q", "via": "p", "table": "Table 2", "row": "other", "verified": True,
            "verified_in": "here", "note": None,
            "values": {"cityscapes": 45.0}, "average": None, "per_class": {},
        },
    },
    "path": "memory/reported.yaml",
    "sha256": "0123456789abcdef" * 4,
}
PROVENANCE = {"config_hash": "c0ffee", "date": "2026-01-01T00:00:00+00:00", "versions": {"python": "3.x"}}


def write(root: Path, experiment: str, seed: int, target: str, miou, macc=None, iou=None, **extra) -> Path:
    path = root / experiment / f"seed{seed}" / f"{target}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"mIoU": miou, "mAcc": macc if macc is not None else (miou + 0.25 if miou is not None else 0.5), "aAcc": 0.9}
    data["IoU"] = iou if iou is not None else {c: 0.5 for c in CLASSES}
    data.update(extra)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "metrics"
    for experiment, seeds in MIOU.items():
        for seed, values in seeds.items():
            for target, value in zip(TARGETS, values):
                write(root, experiment, seed, target, value)
    return root


def spec_of(**extra) -> dict:
    spec = {
        "title": "Statistics",
        "kind": "mean_iou",
        "seeds": [0, 1, 2],
        "columns": THREE,
        "rows": [{"experiment": "a", "label": "A", "reported": "r_all"}, {"experiment": "a", "reported": "r_other"}],
    }
    spec.update(extra)
    return spec


def build(spec, root, seeds=(0, 1, 2), **kwargs):
    kwargs.setdefault("reported", REPORTED)
    kwargs.setdefault("provenance", PROVENANCE)
    kwargs.setdefault("name", "stats")
    return build_table(spec, needed_metrics(spec, seeds, root), **kwargs)


def cells(table, label, kind="ours"):
    return next(line for line in table.lines if line.label == label and line.kind == kind).cells


def assert_cell(cell, values):
    """`cell` summarises `values` (one per seed, None = undefined): mean, sample std, n."""
    defined = [v for v in values if v is not None]
    assert cell.n == len(defined)
    assert cell.mean == pytest.approx(statistics.fmean(defined))
    if len(defined) > 1:
        assert cell.std == pytest.approx(statistics.stdev(defined))
    else:
        assert cell.std is None


def percent(experiment, seed, target):
    return 100 * MIOU[experiment][seed][TARGETS.index(target)]


# --------------------------------------------------------------------------- seeds and files


def test_spec_seeds_come_from_the_spec_else_the_default():
    assert spec_seeds({"seeds": [2, 0]}, default=[5]) == [2, 0]
    assert spec_seeds({"seeds": ["3", 1]}) == [3, 1]
    assert spec_seeds({}, default=(4, 1)) == [4, 1]
    assert spec_seeds({"seeds": None}, default=iter([1, 2])) == [1, 2]
    assert spec_seeds({"seeds": []}, default=[7]) == [7]
    assert all(type(s) is int for s in spec_seeds({}, default=["8", 9]))


@pytest.mark.parametrize("spec, default", [({}, None), ({"seeds": []}, []), ({"seeds": None}, None)])
def test_spec_seeds_without_any_seed_is_an_error(spec, default):
    with pytest.raises(DataError) as info:
        spec_seeds(spec, default)
    assert str(info.value) == "table spec names no seeds: give them in the spec ('seeds') or with --seeds"


def test_metrics_path_and_needed_metrics_in_row_seed_column_order():
    assert metrics_path("m", "exp", 3, "t") == Path("m/exp/seed3/t.json")
    spec = {"rows": [{"experiment": "a"}, {"experiment": "b"}, {"experiment": "a"}], "columns": [{"target": "x"}, {"target": "y"}]}
    files = needed_metrics(spec, ["2", 0])
    assert list(files.items()) == [
        (("a", 2, "x"), Path("results/metrics/a/seed2/x.json")),
        (("a", 2, "y"), Path("results/metrics/a/seed2/y.json")),
        (("a", 0, "x"), Path("results/metrics/a/seed0/x.json")),
        (("a", 0, "y"), Path("results/metrics/a/seed0/y.json")),
        (("b", 2, "x"), Path("results/metrics/b/seed2/x.json")),
        (("b", 2, "y"), Path("results/metrics/b/seed2/y.json")),
        (("b", 0, "x"), Path("results/metrics/b/seed0/x.json")),
        (("b", 0, "y"), Path("results/metrics/b/seed0/y.json")),
    ]
    assert needed_metrics(spec, [1], "elsewhere")[("b", 1, "y")] == Path("elsewhere/b/seed1/y.json")


def test_find_metrics_returns_the_needed_files_or_names_the_first_missing(root):
    spec = spec_of()
    assert list(find_metrics(spec, [0, 2], root).items()) == list(needed_metrics(spec, [0, 2], root).items())
    # b has seeds 1 and 3 only: seed 0 is missing for all three columns; a directory is no file.
    (root / "b" / "seed3" / "t_bdd.json").unlink()
    (root / "b" / "seed3" / "t_bdd.json").mkdir()
    spec_b = spec_of(rows=[{"experiment": "b"}])
    with pytest.raises(DataError) as info:
        find_metrics(spec_b, [3, 1], root)
    first = root / "b" / "seed3" / "t_bdd.json"
    assert str(info.value) == (
        f"{first}: metrics file missing (1 of the 6 files this table needs are missing; make them with `snakemake {first}`)"
    )
    with pytest.raises(DataError) as info:
        find_metrics(spec_b, [0, 1], root)
    first = root / "b" / "seed0" / "t_cs.json"
    assert str(info.value).startswith(f"{first}: metrics file missing (3 of the 6 files ")


# --------------------------------------------------------------------------- read_metrics


def test_read_metrics_returns_the_json(tmp_path):
    path = write(tmp_path, "e", 0, "t", 0.4, run="r")
    data = read_metrics(path)  # default: mIoU needed, no per-class IoU
    assert data == json.loads(path.read_text())
    assert read_metrics(str(path), needs=("mIoU", "mAcc", "aAcc"), per_class=True)["run"] == "r"
    # without IoU and without mIoU: fine when neither is asked for
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"mAcc": 0.5}))
    assert read_metrics(bare, needs=("mAcc",)) == {"mAcc": 0.5}
    with_none = write(tmp_path, "e", 1, "t", 0.4, iou={c: (None if c == "train" else 0.3) for c in CLASSES})
    assert read_metrics(with_none, per_class=True)["IoU"]["train"] is None


def test_read_metrics_errors_name_the_file(tmp_path):
    def message(path, **kwargs):
        with pytest.raises(DataError) as info:
            read_metrics(path, **kwargs)
        return str(info.value)

    missing = tmp_path / "no" / "such.json"
    assert message(missing) == f"{missing}: metrics file missing"
    broken = tmp_path / "broken.json"
    broken.write_text("nope")
    assert message(broken) == f"{broken}: not a readable metrics JSON (JSONDecodeError: Expecting value: line 1 column 1 (char 0))"
    folder = tmp_path / "folder.json"
    folder.mkdir()
    assert message(folder).startswith(f"{folder}: not a readable metrics JSON (IsADirectoryError: ")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert message(listed) == f"{listed}: not a metrics JSON (top level is not an object)"
    no_macc = tmp_path / "no_macc.json"
    no_macc.write_text(json.dumps({"mIoU": 0.4}))
    assert message(no_macc, needs=("mIoU", "mAcc")) == f"{no_macc}: metrics JSON lacks 'mAcc' (written by `dginstyle evaluate`?)"
    assert message(no_macc, needs=("aAcc",)).startswith(f"{no_macc}: metrics JSON lacks 'aAcc'")
    no_miou = tmp_path / "no_miou.json"
    no_miou.write_text(json.dumps({"mAcc": 0.4}))
    assert message(no_miou) == f"{no_miou}: metrics JSON lacks 'mIoU' (written by `dginstyle evaluate`?)"
    for bad, shown in ((None, "None"), (True, "True"), ("0.4", "'0.4'")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"mIoU": bad}))
        assert message(path) == (
            f"{path}: 'mIoU' is {shown}, not a number (no class present in ground truth or prediction?)"
        )


@pytest.mark.parametrize(
    "iou, expected",
    [
        (None, "metrics JSON lacks the per-class 'IoU' of the 19 classes"),
        ([*CLASSES], "metrics JSON lacks the per-class 'IoU' of the 19 classes"),
        ({c: 0.5 for c in CLASSES if c != "bicycle"}, "metrics JSON lacks the per-class 'IoU' of the 19 classes"),
        ({c: 0.5 for c in CLASSES} | {"road": "high"}, "IoU of 'road' is 'high', not a number or null"),
        ({c: 0.5 for c in CLASSES} | {"sky": False}, "IoU of 'sky' is False, not a number or null"),
    ],
)
def test_read_metrics_per_class_iou_errors_name_the_file(tmp_path, iou, expected):
    path = tmp_path / "m.json"
    data = {"mIoU": 0.5}
    if iou is not None:
        data["IoU"] = iou
    path.write_text(json.dumps(data))
    assert read_metrics(path)["mIoU"] == 0.5  # the IoU is only checked when asked for
    with pytest.raises(DataError) as info:
        read_metrics(path, per_class=True)
    assert str(info.value) == f"{path}: {expected}"


# --------------------------------------------------------------------------- mean_iou tables


def test_mean_and_sample_std_per_cell_and_the_average_per_seed_first(root):
    table = build(spec_of(), root)
    assert (table.name, table.title, table.kind, table.metric, table.statistic) == ("stats", "Statistics", "mean_iou", "mIoU", "mean_std")
    assert table.seeds == [0, 1, 2]
    assert table.columns == ["CS", "BDD", "MV", "avg"]
    assert table.column_keys == ["t_cs", "t_bdd", "t_mv", "average"]
    assert [(l.kind, l.label, l.experiment, l.reported_key) for l in table.lines] == [
        ("ours", "A", "a", None),
        ("reported", "reported: All", "a", "r_all"),
        ("diff", "Δ ours − reported", "a", "r_all"),
        ("ours", "a", "a", None),  # no label: the experiment name
        ("reported", "reported: Other", "a", "r_other"),
        ("diff", "Δ ours − reported", "a", "r_other"),
    ]
    ours = table.lines[0].cells
    assert len(ours) == 4
    # by hand: CS 40, 44, 49 -> mean 44.333, sample std sqrt(40.667 / 2) = 4.509
    assert ours[0].mean == pytest.approx(133 / 3) and ours[0].std == pytest.approx(math.sqrt(122 / 3 / 2)) and ours[0].n == 3
    for i, target in enumerate(TARGETS[:3]):
        assert_cell(ours[i], [percent("a", s, target) for s in (0, 1, 2)])
    per_seed_average = [statistics.fmean(percent("a", s, t) for t in TARGETS[:3]) for s in (0, 1, 2)]
    assert_cell(ours[3], per_seed_average)
    assert ours[3].std != pytest.approx(statistics.fmean([ours[0].std, ours[1].std, ours[2].std]))
    assert table.lines[3].cells == ours  # the same experiment: the same cells

    assert table.lines[1].cells == [Cell(50.5), Cell(40.25), Cell(30.0), Cell(40.25)]
    assert all(c.std is None and c.n == 0 for c in table.lines[1].cells)
    diff = table.lines[2].cells
    assert [c.mean for c in diff] == pytest.approx([ours[0].mean - 50.5, ours[1].mean - 40.25, ours[2].mean - 30.0, ours[3].mean - 40.25])
    assert all(c.std is None and c.n == 0 for c in diff)
    assert table.lines[4].cells == [Cell(45.0), Cell(None), Cell(None), Cell(None)]
    assert table.lines[5].cells[0].mean == pytest.approx(ours[0].mean - 45.0)
    assert table.lines[5].cells[1:] == [Cell(None)] * 3
    assert [l.source for l in table.lines] == [None, "[1: P]", None, None, "[2: Q, via P]", None]
    expected_footer = tables._footer(
        validate_spec(spec_of()), "mIoU", [0, 1, 2], THREE, REPORTED, {"r_all": REPORTED["rows"]["r_all"], "r_other": REPORTED["rows"]["r_other"]}
    )
    assert table.footer == expected_footer
    assert any("over seeds 0, 1, 2 (3 runs per cell)" in line for line in table.footer)


def test_the_same_reported_row_twice_keeps_its_number(root):
    spec = spec_of(rows=[{"experiment": "a", "reported": "r_other"}, {"experiment": "a", "label": "x", "reported": "r_all"},
                         {"experiment": "a", "label": "y", "reported": "r_other"}])
    table = build(spec, root)
    assert [l.source for l in table.lines if l.kind == "reported"] == ["[1: Q, via P]", "[2: P]", "[1: Q, via P]"]
    assert sum(line.startswith("[") for line in table.footer) == 2


def test_two_seeds_have_a_std_one_seed_none(root):
    table = build(spec_of(seeds=[0, 2]), root, seeds=(0, 2))
    cs = table.lines[0].cells[0]
    assert cs.n == 2 and cs.mean == pytest.approx(44.5) and cs.std == pytest.approx(9 / math.sqrt(2))
    table = build(spec_of(seeds=[1]), root, seeds=(1,))
    assert table.lines[0].cells[0] == Cell(pytest.approx(44.0), None, 1)
    assert table.seeds == [1]


def test_statistic_mean_no_average_no_difference(root):
    spec = spec_of(statistic="mean", average=False, difference=False)
    table = build(spec, root)
    assert table.statistic == "mean"
    assert table.columns == ["CS", "BDD", "MV"] and table.column_keys == ["t_cs", "t_bdd", "t_mv"]
    assert [l.kind for l in table.lines] == ["ours", "reported", "ours", "reported"]
    for cell, target in zip(table.lines[0].cells, TARGETS[:3]):
        assert cell.std is None and cell.n == 3
        assert cell.mean == pytest.approx(statistics.fmean(percent("a", s, target) for s in (0, 1, 2)))
    assert table.lines[1].cells == [Cell(50.5), Cell(40.25), Cell(30.0)]


def test_the_spec_seeds_are_used_even_when_more_files_are_given(root):
    spec = spec_of(seeds=[0, 1])
    files = needed_metrics(spec, [0, 1, 2], root)
    table = build_table(spec, files, REPORTED, PROVENANCE, name="s")
    assert_cell(table.lines[0].cells[0], [40.0, 44.0])
    assert table.seeds == [0, 1]
    assert len(table.provenance["metric_files"]) == 6
    # a seed of the spec with no file given for it
    with pytest.raises(DataError) as info:
        build_table(spec_of(seeds=[0, 5]), files, REPORTED, PROVENANCE, name="s")
    assert str(info.value) == "table 's': no metrics file given for experiment 'a', seed 5, target 't_cs'"


def test_without_spec_seeds_each_experiment_uses_the_seeds_of_its_files(root):
    spec = spec_of(rows=[{"experiment": "b", "reported": "r_all"}, {"experiment": "a"}])
    del spec["seeds"]
    files = needed_metrics(spec_of(rows=[{"experiment": "a"}]), [2, 0, 1], root) | needed_metrics(
        spec_of(rows=[{"experiment": "b"}]), [3, 1], root
    )
    files = {(e, str(s), t): str(p) for (e, s, t), p in files.items()}  # seeds as text, paths as text
    table = build_table(spec, files, REPORTED, PROVENANCE, name="noseeds")
    assert table.seeds == [0, 1, 2, 3]
    b, a = cells(table, "b"), cells(table, "a")
    assert_cell(b[0], [50.0, 56.0])
    assert_cell(b[3], [statistics.fmean([50.0, 45.0, 40.0]), statistics.fmean([56.0, 41.0, 47.0])])
    assert_cell(a[0], [40.0, 44.0, 49.0])
    used = [Path(f["path"]) for f in table.provenance["metric_files"]]
    assert used == [root / e / f"seed{s}" / f"{t}.json" for e, seeds in (("b", (1, 3)), ("a", (0, 1, 2))) for s in seeds for t in TARGETS[:3]]
    assert any("over seeds 0, 1, 2, 3 (4 runs per cell)" in line for line in table.footer)

    spec["rows"].append({"experiment": "c"})
    with pytest.raises(DataError) as info:
        build_table(spec, files, REPORTED, PROVENANCE, name="noseeds")
    assert str(info.value) == "table 'noseeds': no metrics files for experiment 'c'"


def test_another_metric_takes_its_values_and_leaves_the_reported_ones_na(root):
    spec = spec_of(metric="mAcc")
    table = build(spec, root)
    assert table.metric == "mAcc"
    assert_cell(table.lines[0].cells[0], [65.0, 69.0, 74.0])
    assert_cell(table.lines[0].cells[3], [statistics.fmean(percent("a", s, t) + 25 for t in TARGETS[:3]) for s in (0, 1, 2)])
    assert table.lines[1].cells == [Cell(None)] * 4
    assert table.lines[2].cells == [Cell(None)] * 4
    assert any("Reported numbers are mIoU; this table shows mAcc" in line for line in table.footer)
    # the metric shown is the one read: an undefined mIoU does not matter, a missing mAcc does
    path = root / "a" / "seed1" / "t_bdd.json"
    path.write_text(json.dumps({"mIoU": None, "mAcc": 0.5}))
    assert build(spec, root).lines[0].cells[1].n == 3
    path.write_text(json.dumps({"mIoU": 0.4}))
    with pytest.raises(DataError) as info:
        build(spec, root)
    assert str(info.value) == f"{path}: metrics JSON lacks 'mAcc' (written by `dginstyle evaluate`?)"


def test_a_reported_file_without_metric_key_is_mIoU(root):
    reported = copy.deepcopy(REPORTED)
    del reported["metric"], reported["path"], reported["sha256"]
    table = build(spec_of(), root, reported=reported)
    assert table.lines[1].cells[0] == Cell(50.5)
    assert table.provenance["reported_file"] == {"path": "(given in memory)", "sha256": ""}
    table = build(spec_of(metric="aAcc"), root, reported=reported)
    assert table.lines[1].cells == [Cell(None)] * 4
    reported["metric"] = "mAcc"
    table = build(spec_of(), root, reported=reported)
    assert table.lines[1].cells == [Cell(None)] * 4


@pytest.mark.parametrize(
    "columns, shown",
    [
        (THREE, 40.25),
        (THREE[::-1], 40.25),  # the same columns in another order
        (COLUMNS, None),  # one column more than the paper averaged over
        (COLUMNS[:2], None),  # one fewer
        ([*THREE[:2], {"target": "t_mv"}], None),  # a column not set beside a reported one
        ([*THREE[:2], {"target": "t_mv", "reported": "darkzurich"}], None),  # another column
    ],
)
def test_the_reported_average_is_shown_only_over_exactly_its_columns(root, columns, shown):
    table = build(spec_of(columns=columns), root)
    reported = table.lines[1].cells
    assert reported[-1] == Cell(shown)
    values = {"t_cs": 50.5, "t_bdd": 40.25, "t_mv": 30.0, "t_acdc": 20.0}
    expected = [values[c["target"]] if c.get("reported") in ("cityscapes", "bdd100k", "mapillary", "acdc") else None for c in columns]
    assert [c.mean for c in reported[:-1]] == expected
    # ours: the average over the columns the table has
    per_seed = [statistics.fmean(percent("a", s, c["target"]) for c in columns) for s in (0, 1, 2)]
    assert_cell(table.lines[0].cells[-1], per_seed)
    assert table.lines[4].cells[-1] == Cell(None)  # r_other has no average


def test_unknown_reported_row_and_bad_spec_name_the_table(root):
    with pytest.raises(DataError) as info:
        build(spec_of(rows=[{"experiment": "a", "reported": "nope"}]), root, name="tab1")
    assert str(info.value) == "table 'tab1': unknown reported row 'nope' (known: r_all, r_other)"
    with pytest.raises(DataError) as info:
        build(spec_of(statistic="median"), root, name="tab1")
    assert str(info.value).startswith("table 'tab1': spec key 'statistic'")


def test_default_name_and_title(root):
    spec = spec_of()
    del spec["title"]
    table = build_table(spec, needed_metrics(spec, [0, 1, 2], root), REPORTED, PROVENANCE)
    assert table.name == "table" and table.title == "table"
    with pytest.raises(DataError, match=r"^table 'table': spec key"):
        build_table(spec_of(kind="mean"), {}, REPORTED, PROVENANCE)


# --------------------------------------------------------------------------- provenance of the numbers


def sha16(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def test_provenance_lists_each_metric_file_once_in_order_of_use(root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metadata.json").write_text(json.dumps({"versions": {"torch": "9.9"}}))
    write(root, "a", 1, "t_bdd", 0.31, run=str(run))
    given = copy.deepcopy(PROVENANCE)
    table = build(spec_of(), root, provenance=given)
    assert given == PROVENANCE  # the caller's mapping is not changed
    files = [root / "a" / f"seed{s}" / f"{t}.json" for s in (0, 1, 2) for t in TARGETS[:3]]
    assert table.provenance["metric_files"] == [{"path": str(p), "sha256": sha16(p)} for p in files]
    assert table.provenance["run_versions"] == [{"torch": "9.9"}]
    assert table.provenance["reported_file"] == {"path": "memory/reported.yaml", "sha256": "0123456789abcdef"}
    assert {k: table.provenance[k] for k in ("config_hash", "date", "versions")} == PROVENANCE


def test_provenance_defaults(root, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    table = build(spec_of(), root, provenance={})
    assert table.provenance["config_hash"] == "not given"
    assert table.provenance["date"] == "1970-01-02T00:00:00+00:00"
    assert "python" in table.provenance["versions"] and "numpy" in table.provenance["versions"]
    assert table.provenance["run_versions"] == []
    table = build(spec_of(), root, provenance=None)
    assert table.provenance["config_hash"] == "not given" and table.provenance["date"] == "1970-01-02T00:00:00+00:00"
    assert "torch" in table.provenance["versions"] and len(table.provenance["metric_files"]) == 9


def test_the_reported_file_by_default_and_the_written_files(root, tmp_path):
    spec = spec_of(rows=[{"experiment": "a", "reported": "hrda_source_only"}])
    table = build(spec, root, reported=None, out_prefix=tmp_path / "out" / "t")
    assert table.provenance["reported_file"] == {"path": str(REPORTED_PATH), "sha256": sha16(REPORTED_PATH)}
    assert table.lines[1].label == "reported: HRDA (GTA5 only)"
    assert [c.mean for c in table.lines[1].cells] == [None, 49.1, 61.2, 55.9]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t.csv", "t.md", "t.tex"]


# --------------------------------------------------------------------------- per_class tables

# per seed: road, sidewalk (undefined in seed 1), train (undefined everywhere), others; mIoU
PER_CLASS = {
    "t_cs": {"road": [0.9, 0.8, 0.7], "sidewalk": [0.5, None, 0.3], "other": 0.6, "mIoU": [0.61, 0.62, 0.66]},
    "t_bdd": {"road": [0.5, 0.6, 0.5], "sidewalk": [None, None, 0.1], "other": 0.4, "mIoU": [0.41, 0.45, 0.43]},
    "t_mv": {"road": [0.3, 0.3, 0.3], "sidewalk": [0.2, 0.2, 0.2], "other": 0.2, "mIoU": [0.30, 0.31, 0.32]},
}


@pytest.fixture
def class_root(tmp_path) -> Path:
    root = tmp_path / "per_class"
    for target, given in PER_CLASS.items():
        for seed in range(3):
            iou = {c: given["other"] for c in CLASSES} | {"road": given["road"][seed], "sidewalk": given["sidewalk"][seed], "train": None}
            write(root, "a", seed, target, given["mIoU"][seed], iou=iou)
    return root


def per_class_spec(columns, **extra) -> dict:
    spec = {"kind": "per_class", "seeds": [0, 1, 2], "columns": columns, "rows": [{"experiment": "a", "reported": "r_all"}]}
    spec.update(extra)
    return spec


def test_per_class_one_target(class_root):
    table = build(per_class_spec(COLUMNS[:1]), class_root)
    assert table.metric == "mIoU" and table.kind == "per_class"
    assert table.columns == [*CLASSES, "mIoU"] and table.column_keys == [*CLASSES, "mIoU"]
    ours = table.lines[0].cells
    assert len(ours) == 20
    assert_cell(ours[CLASSES.index("road")], [90.0, 80.0, 70.0])
    assert_cell(ours[CLASSES.index("sidewalk")], [50.0, None, 30.0])
    assert ours[CLASSES.index("train")] == Cell(None, None, 0)
    assert_cell(ours[CLASSES.index("sky")], [60.0] * 3)
    assert_cell(ours[-1], [61.0, 62.0, 66.0])  # the mIoU of the metrics files, not the mean of the classes
    reported = table.lines[1].cells
    assert reported == [Cell(R_ALL_PER_CLASS[c]) for c in CLASSES] + [Cell(50.5)]
    diff = table.lines[2].cells
    assert diff[CLASSES.index("road")].mean == pytest.approx(80.0 - 10.0)
    assert diff[CLASSES.index("train")] == Cell(None)
    assert diff[-1].mean == pytest.approx(63.0 - 50.5)


def test_per_class_ignores_the_metric_key_and_reads_the_iou(class_root):
    table = build(per_class_spec(COLUMNS[:1], metric="mAcc"), class_root)
    assert table.metric == "mIoU"
    assert_cell(table.lines[0].cells[-1], [61.0, 62.0, 66.0])
    assert table.lines[1].cells[-1] == Cell(50.5)
    path = class_root / "a" / "seed2" / "t_cs.json"
    data = json.loads(path.read_text())
    del data["IoU"]["bicycle"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        build(per_class_spec(COLUMNS[:1]), class_root)
    assert str(info.value) == f"{path}: metrics JSON lacks the per-class 'IoU' of the 19 classes"


def test_per_class_over_targets_averages_the_defined_values_per_seed(class_root):
    table = build(per_class_spec(COLUMNS[:2]), class_root)
    ours = table.lines[0].cells
    assert_cell(ours[CLASSES.index("road")], [70.0, 70.0, 60.0])
    assert_cell(ours[CLASSES.index("sidewalk")], [50.0, None, 20.0])
    assert ours[CLASSES.index("train")] == Cell(None, None, 0)
    assert_cell(ours[-1], [51.0, 53.5, 54.5])
    # reported per-class values are per target: n/a; the mIoU only where the paper averaged these columns
    assert table.lines[1].cells == [Cell(None)] * 20
    table = build(per_class_spec(THREE), class_root)
    assert table.lines[1].cells == [Cell(None)] * 19 + [Cell(40.25)]


@pytest.mark.parametrize(
    "column, miou",
    [({"target": "t_cs"}, None), ({"target": "t_cs", "reported": "acdc"}, 20.0), ({"target": "t_cs", "reported": "darkzurich"}, None)],
)
def test_per_class_reported_values_of_the_one_column(class_root, column, miou):
    table = build(per_class_spec([column]), class_root)
    assert table.lines[1].cells == [Cell(None)] * 19 + [Cell(miou)]


def test_per_class_without_the_mIoU_column(class_root):
    table = build(per_class_spec(COLUMNS[:1], average=False), class_root)
    assert table.columns == list(CLASSES) and table.column_keys == list(CLASSES)
    assert len(table.lines[0].cells) == 19
    assert table.lines[1].cells == [Cell(R_ALL_PER_CLASS[c]) for c in CLASSES]
