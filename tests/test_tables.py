"""Paper tables: the reported numbers, the seed statistics, the renderings and `make-table`."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dginstyle.io import DataError
from dginstyle.labels import CLASSES
from dginstyle import tables
from dginstyle.tables import (
    NA,
    REPORTED_PATH,
    build_table,
    find_metrics,
    load_reported,
    make_provenance,
    needed_metrics,
    plot_table,
    render_csv,
    render_latex,
    render_markdown,
    software_versions,
    table_reference_problems,
    validate_spec,
)

TARGETS = {  # miniature target -> the reported column it stands for
    "mini_cityscapes": "cityscapes",
    "mini_bdd100k": "bdd100k",
    "mini_mapillary": "mapillary",
    "mini_acdc": "acdc",
    "mini_darkzurich": "darkzurich",
}
COLUMNS = [{"target": t, "reported": r} for t, r in TARGETS.items()]


# --------------------------------------------------------------------------- reported numbers


def test_reported_numbers_are_those_of_method_md_section_5():
    """Spot checks copied by hand from docs/method.md section 5."""
    rows = load_reported()["rows"]
    assert rows["hrda_dginstyle"]["values"] == {"acdc": 46.07, "darkzurich": 25.53, "cityscapes": 58.63, "bdd100k": 52.25, "mapillary": 62.47}
    assert rows["hrda_dginstyle"]["average"]["value"] == 48.99
    assert rows["daformer_dginstyle"]["values"] == {"acdc": 44.04, "darkzurich": 25.58, "cityscapes": 55.31, "bdd100k": 50.82, "mapillary": 56.62}
    assert rows["daformer_dginstyle"]["average"]["value"] == 46.47
    hrda_only = rows["hrda_source_only"]
    assert hrda_only["values"] == {"bdd100k": 49.1, "mapillary": 61.2}  # Cityscapes only derived in docs/method.md: not stored
    assert hrda_only["average"] == {"value": 55.9, "over": ["cityscapes", "bdd100k", "mapillary"]}
    assert rows["flexseg_daformer"]["average"]["value"] == 48.58
    assert rows["flexseg_hrda"]["average"]["value"] == 50.07
    for key in ("hrda_dginstyle", "daformer_dginstyle", "hrda_source_only"):
        assert rows[key]["verified"] and "docs/method.md section 5" in rows[key]["verified_in"]


def test_rows_without_a_verified_source_hold_no_number():
    rows = load_reported()["rows"]
    unverified = [key for key, row in rows.items() if not row["verified"]]
    assert {"daformer_source_only", "deeplabv2_dginstyle", "ablation_no_style_swap", "ablation_no_mrlf"} <= set(unverified)
    for key in unverified:
        row = rows[key]
        assert row["values"] == {} and row["average"] is None and row["per_class"] == {}, key
        assert row["note"], key
    # No per-class numbers are verified yet.
    assert all(row["per_class"] == {} for row in rows.values())


def _broken(tmp_path, edit) -> Path:
    data = yaml.safe_load(REPORTED_PATH.read_text())
    edit(data)
    path = tmp_path / "reported.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["rows"]["daformer_source_only"].update(values={"cityscapes": 51.7}), "rows.daformer_source_only"),
        (lambda d: d["rows"]["daformer_dginstyle"]["average"].update(value=47.0), "rows.daformer_dginstyle.average.value"),
        (lambda d: d["rows"]["hrda_dginstyle"]["values"].update(gta5=1.0), "rows.hrda_dginstyle.values.gta5"),
        (lambda d: d["rows"]["hrda_dginstyle"]["values"].update(acdc=460.7), "rows.hrda_dginstyle.values.acdc"),
        (lambda d: d["rows"]["hrda_dginstyle"].pop("verified_in"), "rows.hrda_dginstyle"),
        (lambda d: d["rows"]["hrda_dginstyle"].update(source="nowhere"), "rows.hrda_dginstyle.source"),
        (lambda d: d["rows"]["hrda_dginstyle"].update(table="main table"), "rows.hrda_dginstyle.table"),
        (lambda d: d["rows"]["hrda_dginstyle"].update(via="nowhere"), "rows.hrda_dginstyle.via"),
        (lambda d: d["sources"]["hrda_tpami"].pop("short"), "sources.hrda_tpami"),
    ],
)
def test_a_bad_reported_file_is_refused_naming_the_key(tmp_path, edit, expected):
    path = _broken(tmp_path, edit)
    with pytest.raises(DataError) as info:
        load_reported(path)
    message = str(info.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_every_reported_number_names_its_paper_and_table():
    """Provenance of each stored number: the paper it comes from (`source`, with a citation and
    a short name), the paper's table (its number, or "table number not stated": never a guess),
    the row, and where the project lists it (docs/method.md section 5)."""
    reported = load_reported()
    for key, row in reported["rows"].items():
        has_numbers = bool(row["values"]) or row["average"] is not None or bool(row["per_class"])
        if not has_numbers:
            continue
        source = reported["sources"][row["source"]]
        assert row["source"] != "none" and source["citation"] and source["short"], key
        assert re.search(r"\btable \d+\b|table number not stated", row["table"], re.IGNORECASE), key
        assert row["row"] and "docs/method.md section 5" in row["verified_in"], key
    # The HRDA baseline is the HRDA paper's number, not DGInStyle's.
    hrda = reported["rows"]["hrda_source_only"]
    assert hrda["source"] == "hrda_tpami" and hrda["via"] is None
    assert "Hoyer, Dai, Van Gool" in reported["sources"]["hrda_tpami"]["citation"]
    assert "TPAMI 2023" in reported["sources"]["hrda_tpami"]["citation"]


def _paper_main_table(tmp_path: Path):
    """workflow/configs/paper.yaml's `main` table, built on made-up metrics for one seed."""
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow" / "configs" / "paper.yaml").read_text())
    spec = dict(config["tables"]["main"], seeds=[0])
    files = needed_metrics(spec, [0], tmp_path / "metrics")
    for (experiment, seed, target), path in files.items():
        write_metrics(tmp_path / "metrics", experiment, seed, target, 0.4)
    return build_table(spec, files, provenance=make_provenance(config_hash="0123456789ab"), name="main")


def test_rendered_reported_rows_carry_their_source(tmp_path):
    """Beside every reported row, a marker names its paper; the note of that number under the
    table cites the paper, its table and row. The HRDA baseline row names the HRDA paper."""
    table = _paper_main_table(tmp_path)
    md, tex, text = render_markdown(table), render_latex(table), render_csv(table)
    reported_lines = [line for line in table.lines if line.kind == "reported"]
    assert [line.reported_key for line in reported_lines] == ["daformer_source_only", "daformer_dginstyle", "hrda_source_only", "hrda_dginstyle"]
    md_rows = [line for line in md.splitlines() if line.startswith("| *reported: ")]
    assert len(md_rows) == len(reported_lines)
    for n, (line, md_row) in enumerate(zip(reported_lines, md_rows), 1):
        assert line.source and line.source.startswith(f"[{n}: "), line.label
        assert md_row.startswith(f"| *{line.label}* {line.source} |")
        assert line.source in tex
        footnote = next(f for f in table.footer if f.startswith(f"[{n}] Reported `{line.reported_key}`"))
        assert f"- {footnote}" in md

    hrda_row = next(r for r in md_rows if r.startswith("| *reported: HRDA (GTA5 only)*"))
    assert "Hoyer et al., TPAMI 2023 (HRDA)" in hrda_row and "DGInStyle)" not in hrda_row
    hrda_note = next(f for f in table.footer if "`hrda_source_only`" in f)
    assert "Hoyer, Dai, Van Gool" in hrda_note and "TPAMI 2023" in hrda_note and "Jia, Hoyer" not in hrda_note
    assert "table number not stated" in hrda_note and 'row "HRDA, trained on GTA5 only"' in hrda_note
    ours_note = next(f for f in table.footer if "`hrda_dginstyle`" in f)
    assert "Jia, Hoyer" in ours_note and "ECCV 2024" in ours_note and "main results table" in ours_note
    unverified = next(r for r in md_rows if r.startswith("| *reported: DAFormer (GTA5 only)*"))
    assert "[1: no verified source]" in unverified

    rows = list(csv.DictReader(io.StringIO("".join(l for l in text.splitlines(True) if not l.startswith("#")))))
    assert {r["source"] for r in rows if r["line"] == "reported: HRDA (GTA5 only)"} == {"[3: Hoyer et al., TPAMI 2023 (HRDA)]"}
    assert all(r["source"] for r in rows if r["kind"] == "reported")


def test_a_number_quoted_from_another_paper_names_both(tmp_path, metrics_dir):
    """`via`: the paper the number was read in is named beside the row and in its note."""
    data = yaml.safe_load(REPORTED_PATH.read_text())
    data["rows"]["hrda_source_only"]["via"] = "dginstyle"
    path = tmp_path / "reported.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = main_spec(rows=[{"experiment": "source_only", "reported": "hrda_source_only"}])
    table = build_table(spec, needed_metrics(spec, [0, 1, 2], metrics_dir), load_reported(path), name="main")
    line = next(line for line in table.lines if line.kind == "reported")
    assert line.source == "[1: Hoyer et al., TPAMI 2023 (HRDA), via Jia et al., ECCV 2024 (DGInStyle)]"
    note = next(f for f in table.footer if f.startswith("[1] "))
    assert "Hoyer, Dai, Van Gool" in note and ", as quoted in Jia, Hoyer" in note


# --------------------------------------------------------------------------- helpers


def write_metrics(root: Path, experiment: str, seed: int, target: str, miou: float, iou: dict | None = None) -> Path:
    """A metrics JSON in the format of dginstyle.metrics.metrics_from_confusion (fractions)."""
    path = root / experiment / f"seed{seed}" / f"{target}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    iou = iou if iou is not None else {c: miou for c in CLASSES}
    path.write_text(json.dumps({"values": "fractions in [0, 1] (tables show percent)", "mIoU": miou, "aAcc": 0.9, "mAcc": 0.5, "classes": list(CLASSES), "IoU": iou}))
    return path


def main_spec(**extra) -> dict:
    spec = {
        "title": "Main table (miniature world)",
        "kind": "mean_iou",
        "seeds": [0, 1, 2],
        "columns": COLUMNS,
        "rows": [
            {"experiment": "source_only", "label": "DAFormer (source only)", "reported": "daformer_source_only"},
            {"experiment": "dginstyle", "label": "DAFormer + DGInStyle", "reported": "daformer_dginstyle"},
        ],
    }
    spec.update(extra)
    return spec


# mIoU (fraction) per experiment, seed and target index
MIOU = {
    "source_only": {0: [0.40, 0.30, 0.35, 0.20, 0.10], 1: [0.42, 0.31, 0.36, 0.22, 0.12], 2: [0.47, 0.29, 0.34, 0.21, 0.14]},
    "dginstyle": {0: [0.50, 0.40, 0.45, 0.30, 0.20], 1: [0.52, 0.41, 0.44, 0.33, 0.21], 2: [0.51, 0.42, 0.46, 0.31, 0.19]},
}


@pytest.fixture
def metrics_dir(tmp_path) -> Path:
    root = tmp_path / "results" / "metrics"
    for experiment, seeds in MIOU.items():
        for seed, values in seeds.items():
            for target, value in zip(TARGETS, values):
                write_metrics(root, experiment, seed, target, value)
    return root


def _cells(table, label):
    return next(line for line in table.lines if line.label == label).cells


# --------------------------------------------------------------------------- table math


def test_mean_sample_std_and_difference_over_seeds(metrics_dir):
    spec = main_spec()
    table = build_table(spec, find_metrics(spec, [0, 1, 2], metrics_dir), provenance=make_provenance(config_hash="cafe"), name="main")
    assert table.columns == ["CS", "BDD", "MV", "ACDC", "DZ", "avg"]
    ours = _cells(table, "DAFormer (source only)")
    cs = [40.0, 42.0, 47.0]
    assert ours[0].mean == pytest.approx(statistics.fmean(cs))
    assert ours[0].std == pytest.approx(statistics.stdev(cs))  # sample std, ddof = 1
    assert ours[0].std != pytest.approx(statistics.pstdev(cs))
    assert ours[0].n == 3
    # The average: per seed over the five targets, then over seeds.
    per_seed = [100 * statistics.fmean(MIOU["source_only"][s]) for s in (0, 1, 2)]
    assert ours[-1].mean == pytest.approx(statistics.fmean(per_seed))
    assert ours[-1].std == pytest.approx(statistics.stdev(per_seed))

    reported = _cells(table, "reported: DAFormer + DGInStyle")
    assert [c.mean for c in reported] == [55.31, 50.82, 56.62, 44.04, 25.58, 46.47]
    diff = table.lines[table.lines.index(next(line for line in table.lines if line.label == "reported: DAFormer + DGInStyle")) + 1]
    assert diff.kind == "diff"
    ours_dg = _cells(table, "DAFormer + DGInStyle")
    assert diff.cells[0].mean == pytest.approx(ours_dg[0].mean - 55.31)
    assert diff.cells[-1].mean == pytest.approx(ours_dg[-1].mean - 46.47)


def test_one_seed_shows_the_mean_alone(metrics_dir):
    spec = main_spec(seeds=[1])
    table = build_table(spec, needed_metrics(spec, [1], metrics_dir), name="main")
    cell = _cells(table, "DAFormer (source only)")[0]
    assert cell.mean == pytest.approx(42.0) and cell.std is None and cell.n == 1
    md = render_markdown(table)
    assert "| DAFormer (source only) | 42.00 |" in md
    assert "one seed" in md


def test_statistic_mean_has_no_std(metrics_dir):
    spec = main_spec(statistic="mean")
    table = build_table(spec, needed_metrics(spec, [0, 1, 2], metrics_dir), name="main")
    assert all(c.std is None for c in _cells(table, "DAFormer + DGInStyle"))


def test_missing_reported_values_render_as_na(metrics_dir):
    spec = main_spec(
        columns=[*COLUMNS[:4], {"target": "mini_darkzurich"}],  # no reported column for the last
        rows=[
            {"experiment": "source_only", "reported": "daformer_source_only"},  # unverified: no numbers
            {"experiment": "dginstyle", "reported": "hrda_source_only"},  # partial: BDD, MV only
            {"experiment": "dginstyle", "label": "alone"},  # no reported row at all
        ],
    )
    table = build_table(spec, needed_metrics(spec, [0, 1, 2], metrics_dir), name="main")
    assert all(c.mean is None for c in _cells(table, "reported: DAFormer (GTA5 only)"))
    hrda = [c.mean for c in _cells(table, "reported: HRDA (GTA5 only)")]
    # CS not stored, BDD 49.1, MV 61.2, ACDC not given, DZ column unmapped, avg over other columns
    assert hrda == [None, 49.1, 61.2, None, None, None]
    assert [line.kind for line in table.lines] == ["ours", "reported", "diff", "ours", "reported", "diff", "ours"]
    md = render_markdown(table)
    row = next(line for line in md.splitlines() if line.startswith("| *reported: HRDA (GTA5 only)*"))
    assert row == f"| *reported: HRDA (GTA5 only)* [2: Hoyer et al., TPAMI 2023 (HRDA)] | {NA} | 49.1 | 61.2 | {NA} | {NA} | {NA} |"
    assert "| alone |" in md and "DZ" not in md.splitlines()[2]  # unmapped column: its target name
    assert "mini_darkzurich" in md.splitlines()[2]


def test_reported_average_shown_only_over_the_same_columns(metrics_dir):
    three = [c for c in COLUMNS if c["reported"] in ("cityscapes", "bdd100k", "mapillary")]
    spec = main_spec(columns=three, rows=[{"experiment": "source_only", "reported": "hrda_source_only"}])
    table = build_table(spec, needed_metrics(spec, [0, 1, 2], metrics_dir), name="dg3")
    assert [c.mean for c in _cells(table, "reported: HRDA (GTA5 only)")] == [None, 49.1, 61.2, 55.9]


def test_per_class_table(tmp_path):
    root = tmp_path / "metrics"
    for seed, (road, train) in enumerate([(0.9, None), (0.8, None), (0.7, 0.3)]):
        iou = {c: 0.5 for c in CLASSES} | {"road": road, "train": train}
        for target in ("mini_cityscapes", "mini_acdc"):
            write_metrics(root, "dginstyle", seed, target, 0.5 + seed / 100, iou)
    one = {"kind": "per_class", "seeds": [0, 1, 2], "columns": COLUMNS[:1], "rows": [{"experiment": "dginstyle", "reported": "daformer_dginstyle"}]}
    table = build_table(one, needed_metrics(one, [0, 1, 2], root), name="per_class")
    assert table.columns == [*CLASSES, "mIoU"]
    ours = _cells(table, "dginstyle")
    assert ours[0].mean == pytest.approx(80.0) and ours[0].std == pytest.approx(10.0)
    train = ours[CLASSES.index("train")]
    assert train.mean == pytest.approx(30.0) and train.n == 1  # undefined in two seeds
    assert ours[-1].mean == pytest.approx(51.0)
    reported = _cells(table, "reported: DAFormer + DGInStyle")
    assert all(c.mean is None for c in reported[:-1])  # no verified per-class numbers
    assert reported[-1].mean == 55.31  # the mIoU of that target
    assert plot_table(table, tmp_path / "per_class.png").stat().st_size > 0
    # Averaged over two targets: the per-class reported values are per target, so n/a.
    both = dict(one, columns=[COLUMNS[0], COLUMNS[3]])
    table = build_table(both, needed_metrics(both, [0, 1, 2], root), name="per_class")
    assert all(c.mean is None for c in _cells(table, "reported: DAFormer + DGInStyle"))
    # A class undefined in every seed renders as '-'.
    for seed in range(3):
        iou = {c: 0.5 for c in CLASSES} | {"train": None}
        write_metrics(root, "other", seed, "mini_cityscapes", 0.5, iou)
    spec = {"kind": "per_class", "seeds": [0, 1, 2], "columns": COLUMNS[:1], "rows": [{"experiment": "other"}]}
    md = render_markdown(build_table(spec, needed_metrics(spec, [0, 1, 2], root), name="pc"))
    assert "| 50.00 ± 0.00 | - |" in md


def test_reads_the_real_metrics_format(tmp_path):
    import numpy as np

    from dginstyle.metrics import metrics_from_confusion

    conf = np.zeros((19, 19), dtype=np.int64)
    conf[0, 0], conf[0, 1], conf[1, 1], conf[2, 2] = 30, 10, 20, 40
    data = metrics_from_confusion(conf, num_images=1)
    path = tmp_path / "m" / "exp" / "seed0" / "mini_cityscapes.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    spec = {"kind": "mean_iou", "seeds": [0], "columns": COLUMNS[:1], "rows": [{"experiment": "exp"}]}
    table = build_table(spec, {("exp", 0, "mini_cityscapes"): path}, name="t")
    assert table.lines[0].cells[0].mean == pytest.approx(100 * data["mIoU"])


# --------------------------------------------------------------------------- renderings, provenance


def test_renderings_carry_rows_columns_and_provenance(metrics_dir):
    spec = main_spec()
    files = needed_metrics(spec, [0, 1, 2], metrics_dir)
    table = build_table(spec, files, provenance=make_provenance(config_hash="0123456789ab"), name="main")
    md, tex, text = render_markdown(table), render_latex(table), render_csv(table)
    for label in ("DAFormer (source only)", "DAFormer + DGInStyle", "reported: DAFormer + DGInStyle"):
        assert label in md and label in text
    for column in ("CS", "BDD", "MV", "ACDC", "DZ", "avg"):
        assert f" {column} " in md and f" {column} " in tex
    assert "55.31" in md and "55.31" in tex
    assert "± " in md and r"$\pm$" in tex and r"\toprule" in tex and r"\textit{reported: DAFormer + DGInStyle}" in tex
    assert "sample standard deviation (ddof = 1)" in md
    for rendering in (md, tex, text):
        assert "config hash: 0123456789ab" in rendering
        assert "python " in rendering and "date: " in rendering
        assert all(str(p) in rendering for p in files.values())
        assert "Jia, Hoyer" in rendering  # the reported row's citation

    rows = list(csv.DictReader(io.StringIO("".join(l for l in text.splitlines(True) if not l.startswith("#")))))
    assert len(rows) == len(table.lines) * len(table.columns)
    cell = next(r for r in rows if r["line"] == "DAFormer (source only)" and r["column"] == "CS")
    assert float(cell["mean"]) == pytest.approx(43.0) and cell["n"] == "3" and cell["column_key"] == "mini_cityscapes"
    assert next(r for r in rows if r["line"] == "reported: DAFormer (GTA5 only)")["text"] == NA


def test_provenance_versions_and_config_hash():
    from dginstyle.config import config_hash

    versions = software_versions(["pyyaml", "no-such-package-dginstyle-test"])
    assert versions["python"].count(".") == 2
    assert versions["no-such-package-dginstyle-test"] == "not installed"
    config = {"source": "mini_gta5", "targets": ["mini_cityscapes"]}
    prov = make_provenance(config=config, date="2026-01-01T00:00:00+00:00")
    assert prov["config_hash"] == config_hash(config) and prov["date"].startswith("2026-01-01")
    assert "torch" in prov["versions"] and "mmsegmentation" in prov["versions"]
    with pytest.raises(DataError, match="hashes to"):
        make_provenance(config=config, config_hash="deadbeef")


def test_write_and_plot(metrics_dir, tmp_path):
    from PIL import Image

    spec = main_spec()
    table = build_table(spec, needed_metrics(spec, [0, 1, 2], metrics_dir), name="main", out_prefix=tmp_path / "tables" / "main")
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["main.csv", "main.md", "main.tex"]
    png = plot_table(table, tmp_path / "main.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width >= 360 and image.height > 300


# --------------------------------------------------------------------------- specs and errors


def test_spec_validation_fills_defaults_and_names_the_key():
    spec = validate_spec(main_spec(), "main")
    assert spec["metric"] == "mIoU" and spec["statistic"] == "mean_std" and spec["average"] is True and spec["difference"] is True
    with pytest.raises(DataError, match=r"table 'main': spec key 'columns\[0\].reported'"):
        validate_spec(main_spec(columns=[{"target": "mini_cityscapes", "reported": "gta5"}]), "main")
    with pytest.raises(DataError, match="'statistc'"):
        validate_spec(main_spec(statistc="mean"), "main")
    with pytest.raises(DataError, match="listed twice"):
        validate_spec(main_spec(columns=[COLUMNS[0], COLUMNS[0]]), "main")


def test_spec_schema_fragment_is_a_valid_json_schema():
    import jsonschema

    fragment = yaml.safe_load(tables.SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(fragment["tables"])
    jsonschema.Draft202012Validator(fragment["tables"]).validate({"main": main_spec()})


def test_table_references_against_the_config():
    config = {
        "experiments": {"source_only": {"data": "source"}, "dginstyle": {"data": "dginstyle"}},
        "targets": list(TARGETS),
        "tables": {"main": main_spec()},
    }
    assert table_reference_problems(config) == []
    config["tables"]["bad"] = main_spec(
        rows=[{"experiment": "no_swap", "reported": "nope"}], columns=[{"target": "cityscapes"}]
    )
    problems = table_reference_problems(config)
    assert any(p.startswith("config key 'tables.bad.rows[0].experiment': unknown experiment 'no_swap'") for p in problems)
    assert any(p.startswith("config key 'tables.bad.rows[0].reported': unknown reported row 'nope'") for p in problems)
    assert any(p.startswith("config key 'tables.bad.columns[0].target'") for p in problems)


def test_needed_metrics_follow_the_layout():
    spec = main_spec()
    files = needed_metrics(spec, [0, 2])
    assert len(files) == 2 * 2 * 5
    assert files[("dginstyle", 2, "mini_acdc")] == Path("results/metrics/dginstyle/seed2/mini_acdc.json")
    assert list(files)[0] == ("source_only", 0, "mini_cityscapes")


def test_a_missing_metrics_file_is_one_line_naming_it(metrics_dir):
    gone = metrics_dir / "dginstyle" / "seed1" / "mini_acdc.json"
    gone.unlink()
    spec = main_spec()
    with pytest.raises(DataError) as info:
        find_metrics(spec, [0, 1, 2], metrics_dir)
    assert str(info.value).startswith(f"{gone}: metrics file missing") and "\n" not in str(info.value)
    with pytest.raises(DataError, match="metrics file missing"):
        build_table(spec, needed_metrics(spec, [0, 1, 2], metrics_dir), name="main")


def test_a_broken_metrics_file_is_named(metrics_dir):
    bad = metrics_dir / "source_only" / "seed0" / "mini_bdd100k.json"
    bad.write_text(json.dumps({"mIoU": None, "IoU": {}}))
    spec = main_spec()
    with pytest.raises(DataError, match=re.escape(f"{bad}: 'mIoU' is None")):
        build_table(spec, needed_metrics(spec, [0, 1, 2], metrics_dir), name="main")
    bad.write_text("{not json")
    with pytest.raises(DataError, match=re.escape(f"{bad}: not a readable metrics JSON")):
        build_table(spec, needed_metrics(spec, [0, 1, 2], metrics_dir), name="main")


# --------------------------------------------------------------------------- CLI


def _cli(*args, cwd=None):
    code = "import sys; from dginstyle.cli import main; rc = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)"
    return subprocess.run([sys.executable, "-c", code, "make-table", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_cli_round_trip_without_torch(metrics_dir, tmp_path):
    spec = main_spec()
    del spec["seeds"]
    spec_file = tmp_path / "main.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "tables" / "main"
    result = _cli("--spec", spec_file, "--metrics", metrics_dir, "--seeds", "0,1,2", "--config-hash", "feedface1234",
                  "--out-prefix", out, "--plot", tmp_path / "tables" / "main.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"  # a light stage: torch never imported
    md = (tmp_path / "tables" / "main.md").read_text()
    assert md.startswith("# Main table (miniature world)") and "config hash: feedface1234" in md
    assert "| DAFormer (source only) | 43.00 ± 3.61 |" in md
    assert (tmp_path / "tables" / "main.csv").is_file() and (tmp_path / "tables" / "main.tex").is_file()
    assert (tmp_path / "tables" / "main.png").stat().st_size > 0
    # Inline JSON spec with its own seeds, and the table named after the out prefix.
    inline = json.dumps(main_spec(seeds=[0, 1], title="inline"))
    result = _cli("--spec", inline, "--metrics", metrics_dir, "--out-prefix", tmp_path / "t2" / "other")
    assert result.returncode == 0, result.stderr
    assert r"\label{tab:other}" in (tmp_path / "t2" / "other.tex").read_text()


def test_cli_missing_metrics_file_is_one_line(metrics_dir, tmp_path):
    gone = metrics_dir / "source_only" / "seed2" / "mini_mapillary.json"
    gone.unlink()
    result = _cli("--spec", json.dumps(main_spec()), "--metrics", metrics_dir, "--out-prefix", tmp_path / "main")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dginstyle make-table: error: {gone}: metrics file missing")
    assert not (tmp_path / "main.md").exists()


def test_cli_without_seeds_says_so(metrics_dir, tmp_path):
    spec = main_spec()
    del spec["seeds"]
    result = _cli("--spec", json.dumps(spec), "--metrics", metrics_dir, "--out-prefix", tmp_path / "main")
    assert result.returncode == 1 and "no seeds" in result.stderr


def test_readme_results_block_is_replaced_from_rendered_tables(tmp_path):
    from dginstyle.tables import README_END, README_START, update_readme_results

    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\nintro\n\n{README_START}\nold numbers\n{README_END}\n\n## Next\n")
    table = tmp_path / "results" / "tables" / "main.md"
    table.parent.mkdir(parents=True)
    table.write_text("| method | A |\n|---|---|\n| ours | 12.3 ± 0.4 |\n\n**Provenance**\n\n```\nconfig hash: abc\n```\n")
    figure = tmp_path / "results" / "fig.png"
    figure.write_bytes(b"png")
    update_readme_results(readme, [table], figure, tmp_path / "docs" / "fig.png")
    text = readme.read_text()
    assert "old numbers" not in text and "| ours | 12.3 ± 0.4 |" in text
    assert "config hash: abc" not in text  # the provenance stays in the linked table file
    assert "![fig](docs/fig.png)" in text and (tmp_path / "docs" / "fig.png").read_bytes() == b"png"
    assert text.startswith("# Project\n\nintro\n\n") and text.endswith("## Next\n")
    # run twice: the same README
    update_readme_results(readme, [table], figure, tmp_path / "docs" / "fig.png")
    assert readme.read_text() == text
    readme.write_text("no markers")
    with pytest.raises(DataError, match="no results block"):
        update_readme_results(readme, [table])
