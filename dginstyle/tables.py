"""Paper tables: our metrics (mean and std over seeds) beside the reported numbers, with provenance.

Tables read files, not models: the metrics JSONs of `evaluate`
(`<metrics>/<experiment>/seed<seed>/<target>.json`, values as fractions) and the reported
numbers of `dginstyle/assets/reported.yaml` (percent, each with its paper, table and row).
Every reported row is printed with a source marker, `[n: short name of its paper]`, and
note n under the table gives the paper's citation, table and row (docs/method.md section 5).
A table is declared by a spec (the config's `tables:` entries; its JSON schema is
`dginstyle/assets/tables.schema.yaml`) and rendered as Markdown, CSV and LaTeX, each carrying
the config hash, the software versions, the date and the metric files used.

Statistics: per cell, the mean over seeds and the SAMPLE standard deviation (ddof = 1) when
there is more than one seed. An average over target columns is taken per seed first, then
summarised over seeds, so its std is the seed spread of the average. A reported value that
is missing or has no verified source renders as "n/a", never as a number.

STDLIB + yaml at import time: the Snakefile may import this module while it builds the DAG
(`needed_metrics`, `table_reference_problems`); jsonschema, PIL and the class list are
imported where they are used.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io
import json
import math
import os
import platform
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

ASSETS = Path(__file__).resolve().parent / "assets"
REPORTED_PATH = ASSETS / "reported.yaml"
SCHEMA_PATH = ASSETS / "tables.schema.yaml"

METRICS_LAYOUT = "{experiment}/seed{seed}/{target}.json"  # under results/metrics/
REPORTED_COLUMNS = ("cityscapes", "bdd100k", "mapillary", "acdc", "darkzurich")
METRICS = ("mIoU", "mAcc", "aAcc")
VERSION_PACKAGES = (
    "dginstyle", "numpy", "torch", "mmsegmentation", "mmengine", "mmcv", "mmcv-lite",
    "diffusers", "transformers", "accelerate", "snakemake",
)
NA = "n/a"          # no reported (or no verified) value
UNDEFINED = "-"     # our IoU is undefined: the class is absent from ground truth and prediction
AVERAGE_TOLERANCE = 0.0101  # a reported average vs the mean of its rounded values (2 decimals)
TABLE_NUMBER = re.compile(r"\btable \d+\b|\btable number not stated\b", re.IGNORECASE)  # a verified row's `table`


def _data_error(message: str) -> Exception:
    from dginstyle.io import DataError  # imports numpy and PIL: only when something is wrong

    return DataError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- reported numbers


def load_reported(path: str | os.PathLike | None = None) -> dict:
    """The reported numbers, validated: `rows[key]` with `values` (column -> percent),
    optional `average` {value, over}, optional `per_class` {column: {class: percent}}, and
    the provenance keys. Raises DataError naming the file and the key on any problem."""
    path = Path(path) if path is not None else REPORTED_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _data_error(f"{path}: cannot read the reported numbers ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    problems = reported_problems(data)
    if problems:
        raise _data_error(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    data = copy.deepcopy(data)
    for row in data["rows"].values():
        row["values"] = {k: float(v) for k, v in (row.get("values") or {}).items() if v is not None}
        row.setdefault("average", None)
        row["per_class"] = {
            col: {cls: (None if v is None else float(v)) for cls, v in classes.items()}
            for col, classes in (row.get("per_class") or {}).items()
        }
        row.setdefault("note", None)
        row.setdefault("verified_in", None)
        row.setdefault("via", None)
    data["path"] = str(path)
    data["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return data


def reported_problems(data: Any) -> list[str]:
    """Every problem of a parsed reported-numbers file, each naming its key ([] = valid)."""
    if not isinstance(data, dict):
        return ["top level must be a mapping"]
    problems = []
    if data.get("format") != 1:
        problems.append(f"key 'format': expected 1, got {data.get('format')!r}")
    if data.get("metric") != "mIoU" or data.get("unit") != "percent":
        problems.append("keys 'metric' / 'unit': expected mIoU in percent")
    columns = data.get("columns")
    if not isinstance(columns, dict) or set(columns) != set(REPORTED_COLUMNS):
        problems.append(f"key 'columns': expected exactly {', '.join(REPORTED_COLUMNS)}")
        columns = {c: {} for c in REPORTED_COLUMNS}
    for col, entry in columns.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
            problems.append(f"key 'columns.{col}': needs a 'label'")
    sources = data.get("sources")
    if not isinstance(sources, dict) or not sources:
        problems.append("key 'sources': a mapping of source key -> {citation, short}")
        sources = {}
    for key, source in sources.items():
        if not isinstance(source, dict) or not isinstance(source.get("citation"), str) or not isinstance(source.get("short"), str):
            problems.append(f"key 'sources.{key}': needs a 'citation' and a 'short' name")
    rows = data.get("rows")
    if not isinstance(rows, dict) or not rows:
        return problems + ["key 'rows': a mapping of row key -> reported row"]
    for key, row in rows.items():
        problems.extend(_row_problems(f"rows.{key}", row, columns, sources))
    return problems


def _row_problems(where: str, row: Any, columns: Mapping, sources: Mapping) -> list[str]:
    if not isinstance(row, dict):
        return [f"key '{where}': must be a mapping"]
    problems = []
    allowed = {"label", "source", "via", "table", "row", "verified", "verified_in", "values", "average", "per_class", "note"}
    for extra in sorted(set(row) - allowed):
        problems.append(f"key '{where}.{extra}': unknown key (allowed: {', '.join(sorted(allowed))})")
    for key in ("label", "row"):
        if not isinstance(row.get(key), str) or not row[key]:
            problems.append(f"key '{where}.{key}': required text")
    if row.get("source") not in sources:
        problems.append(f"key '{where}.source': {row.get('source')!r} is not under 'sources'")
    if row.get("via") is not None and (row["via"] not in sources or row["via"] == row.get("source")):
        problems.append(f"key '{where}.via': {row['via']!r} is not under 'sources' (or is the row's own source)")
    if not isinstance(row.get("verified"), bool):
        problems.append(f"key '{where}.verified': required, true or false")
    values = row.get("values") or {}
    if not isinstance(values, dict):
        return problems + [f"key '{where}.values': must be a mapping column -> percent"]
    for col, value in values.items():
        if col not in columns:
            problems.append(f"key '{where}.values.{col}': unknown column (known: {', '.join(columns)})")
        elif value is not None and not (_is_number(value) and 0 <= value <= 100):
            problems.append(f"key '{where}.values.{col}': {value!r} is not a percentage in [0, 100]")
    average = row.get("average")
    if average is not None:
        if not isinstance(average, dict) or not _is_number(average.get("value")) or not 0 <= average["value"] <= 100:
            problems.append(f"key '{where}.average': expected {{value: percent, over: [columns]}}")
        elif not isinstance(average.get("over"), list) or not average["over"] or not set(average["over"]) <= set(columns):
            problems.append(f"key '{where}.average.over': a non-empty list of columns ({', '.join(columns)})")
        else:
            known = [values.get(c) for c in average["over"]]
            if all(_is_number(v) for v in known):
                mean = statistics.fmean(known)
                if abs(mean - average["value"]) > AVERAGE_TOLERANCE:
                    problems.append(f"key '{where}.average.value': {average['value']} differs from the mean {mean:.3f} of its columns")
    per_class = row.get("per_class") or {}
    if per_class:
        from dginstyle.labels import CLASSES

        if not isinstance(per_class, dict):
            problems.append(f"key '{where}.per_class': must be a mapping column -> {{class: percent}}")
        else:
            for col, classes in per_class.items():
                if col not in columns:
                    problems.append(f"key '{where}.per_class.{col}': unknown column")
                elif not isinstance(classes, dict) or set(classes) != set(CLASSES):
                    problems.append(f"key '{where}.per_class.{col}': needs exactly the 19 classes ({', '.join(CLASSES)})")
                else:
                    for cls, value in classes.items():
                        if value is not None and not (_is_number(value) and 0 <= value <= 100):
                            problems.append(f"key '{where}.per_class.{col}.{cls}': {value!r} is not a percentage")
    has_numbers = any(v is not None for v in values.values()) or average is not None or bool(per_class)
    if row.get("verified") is True:
        if not isinstance(row.get("verified_in"), str) or not isinstance(row.get("table"), str):
            problems.append(f"key '{where}': a verified row cites its table ('table') and where it was verified ('verified_in')")
        elif not TABLE_NUMBER.search(row["table"]):
            problems.append(f"key '{where}.table': give the paper's table number ('Table N') or say 'table number not stated'")
        if not has_numbers:
            problems.append(f"key '{where}': verified but holds no number")
    elif row.get("verified") is False:
        if has_numbers:
            problems.append(f"key '{where}': not verified, so it must hold no number (values, average, per_class)")
        if not isinstance(row.get("note"), str) or not row["note"]:
            problems.append(f"key '{where}.note': a row without a verified source says why")
    return problems


# --------------------------------------------------------------------------- table specs


def _spec_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())["tables"]["additionalProperties"]


def validate_spec(spec: Any, name: str = "table") -> dict:
    """A copy of one table spec, checked against the schema fragment with its defaults filled.
    Raises DataError naming the table and the key."""
    import jsonschema

    schema = _spec_schema()
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(spec))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in best.absolute_path)
        raise _data_error(f"table {name!r}: spec key '{where.lstrip('.') or '(top)'}': {best.message}")
    spec = copy.deepcopy(spec)
    for key, sub in schema["properties"].items():
        if "default" in sub:
            spec.setdefault(key, copy.deepcopy(sub["default"]))
    targets = [c["target"] for c in spec["columns"]]
    if len(set(targets)) != len(targets):
        raise _data_error(f"table {name!r}: spec key 'columns': a target is listed twice ({', '.join(targets)})")
    return spec


def table_reference_problems(config: Mapping, reported: Mapping | None = None) -> list[str]:
    """Problems of the config's `tables:` against its experiments, targets and the reported
    rows, each naming the config key (for the config validation at DAG-build time)."""
    experiments = config.get("experiments", {})
    targets = config.get("targets", [])
    problems = []
    rows_known = None
    for name, spec in (config.get("tables") or {}).items():
        for i, row in enumerate(spec.get("rows", [])):
            if row.get("experiment") not in experiments:
                problems.append(f"config key 'tables.{name}.rows[{i}].experiment': unknown experiment {row.get('experiment')!r} (defined under 'experiments': {', '.join(sorted(experiments))})")
            if row.get("reported") is not None:
                if rows_known is None:
                    rows_known = (reported or load_reported())["rows"]
                if row["reported"] not in rows_known:
                    problems.append(f"config key 'tables.{name}.rows[{i}].reported': unknown reported row {row['reported']!r} (known: {', '.join(sorted(rows_known))})")
        for i, col in enumerate(spec.get("columns", [])):
            if col.get("target") not in targets:
                problems.append(f"config key 'tables.{name}.columns[{i}].target': {col.get('target')!r} is not a target ({', '.join(targets)})")
    return problems


def spec_seeds(spec: Mapping, default: Iterable[int] | None = None) -> list[int]:
    """The seeds a table averages over: the spec's own, else `default` (segmentation.seeds)."""
    seeds = spec.get("seeds") or (list(default) if default is not None else None)
    if not seeds:
        raise _data_error("table spec names no seeds: give them in the spec ('seeds') or with --seeds")
    return [int(s) for s in seeds]


def metrics_path(metrics_dir: str | os.PathLike, experiment: str, seed: int, target: str) -> Path:
    return Path(metrics_dir) / METRICS_LAYOUT.format(experiment=experiment, seed=seed, target=target)


def needed_metrics(spec: Mapping, seeds: Iterable[int], metrics_dir: str | os.PathLike = "results/metrics") -> dict[tuple[str, int, str], Path]:
    """(experiment, seed, target) -> metrics file, for every cell the table needs, in row,
    seed, column order (the rule's input; exactly these runs are built)."""
    out = {}
    for row in spec["rows"]:
        for seed in seeds:
            for col in spec["columns"]:
                key = (row["experiment"], int(seed), col["target"])
                out[key] = metrics_path(metrics_dir, *key)
    return out


def find_metrics(spec: Mapping, seeds: Iterable[int], metrics_dir: str | os.PathLike) -> dict[tuple[str, int, str], Path]:
    """`needed_metrics` that all exist; otherwise DataError naming the first missing file."""
    needed = needed_metrics(spec, seeds, metrics_dir)
    missing = [p for p in needed.values() if not p.is_file()]
    if missing:
        raise _data_error(
            f"{missing[0]}: metrics file missing ({len(missing)} of the {len(needed)} files this table needs "
            f"are missing; make them with `snakemake {missing[0]}`)"
        )
    return needed


# --------------------------------------------------------------------------- provenance


def software_versions(packages: Iterable[str] = VERSION_PACKAGES) -> dict[str, str]:
    """python and each package's installed version (importlib.metadata; nothing is imported)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _now() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), tz=timezone.utc) if epoch else datetime.now(timezone.utc)
    return moment.replace(microsecond=0).isoformat()


def make_provenance(config: Mapping | None = None, config_hash: str | None = None, date: str | None = None) -> dict:
    """Config hash (of `config`, as dginstyle.config.config_hash, or given), software
    versions, date (UTC; $SOURCE_DATE_EPOCH if set). build_table adds the metric files."""
    if config is not None:
        from dginstyle.config import config_hash as hash_config

        computed = hash_config(dict(config))
        if config_hash is not None and config_hash != computed:
            raise _data_error(f"config hash {config_hash!r} given, but the config passed hashes to {computed!r}")
        config_hash = computed
    return {"config_hash": config_hash or "not given", "date": date or _now(), "versions": software_versions()}


# --------------------------------------------------------------------------- the table


@dataclass
class Cell:
    """One rendered cell: `mean` None = not available (n/a for reported, '-' for ours)."""

    mean: float | None
    std: float | None = None
    n: int = 0


@dataclass
class Line:
    label: str
    kind: str  # "ours", "reported" or "diff"
    experiment: str | None
    reported_key: str | None
    cells: list[Cell]
    source: str | None = None  # reported lines: "[n: short name]", n = its citation under the table


@dataclass
class Table:
    name: str
    title: str
    kind: str
    metric: str
    statistic: str
    seeds: list[int]
    columns: list[str]       # display labels
    column_keys: list[str]   # target name, class name, "average" or "mIoU"
    lines: list[Line]
    footer: list[str]
    provenance: dict = field(default_factory=dict)


def read_metrics(path: str | os.PathLike, needs: Iterable[str] = ("mIoU",), per_class: bool = False) -> dict:
    """One metrics JSON, with the keys a table needs; DataError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise _data_error(f"{path}: metrics file missing") from None
    except (OSError, ValueError) as exc:
        raise _data_error(f"{path}: not a readable metrics JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise _data_error(f"{path}: not a metrics JSON (top level is not an object)")
    for key in needs:
        if key not in data:
            raise _data_error(f"{path}: metrics JSON lacks {key!r} (written by `dginstyle evaluate`?)")
        if not _is_number(data[key]):
            raise _data_error(f"{path}: {key!r} is {data[key]!r}, not a number (no class present in ground truth or prediction?)")
    if per_class:
        from dginstyle.labels import CLASSES

        iou = data.get("IoU")
        if not isinstance(iou, dict) or not set(CLASSES) <= set(iou):
            raise _data_error(f"{path}: metrics JSON lacks the per-class 'IoU' of the 19 classes")
        for cls in CLASSES:
            if iou[cls] is not None and not _is_number(iou[cls]):
                raise _data_error(f"{path}: IoU of {cls!r} is {iou[cls]!r}, not a number or null")
    return data


def _summary(values: list[float], statistic: str) -> Cell:
    """Mean and sample std (ddof = 1; None for one value or statistic 'mean') of the defined values."""
    defined = [v for v in values if v is not None]
    if not defined:
        return Cell(None, None, 0)
    std = statistics.stdev(defined) if statistic == "mean_std" and len(defined) > 1 else None
    return Cell(statistics.fmean(defined), std, len(defined))


def _mean_defined(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return statistics.fmean(defined) if defined else None


def _reported_average(rep: Mapping, columns: list[Mapping]) -> float | None:
    """The reported average, when the paper averaged over exactly this table's columns."""
    average = rep.get("average")
    keys = [c.get("reported") for c in columns]
    if average is None or None in keys or set(average["over"]) != set(keys):
        return None
    return average["value"]


def build_table(
    spec: Mapping,
    metrics_files: Mapping[tuple[str, int, str], str | os.PathLike],
    reported: Mapping | None = None,
    provenance: Mapping | None = None,
    *,
    name: str = "table",
    out_prefix: str | os.PathLike | None = None,
) -> Table:
    """Our cells (mean, std over seeds) with the reported row and the difference under each row.

    `metrics_files` maps (experiment, seed, target) to a metrics JSON; the seeds are the spec's
    `seeds`, else those present for each experiment. With `out_prefix`, writes
    <prefix>.md, .csv and .tex. A missing file raises DataError naming it.
    """
    spec = validate_spec(spec, name)
    reported = reported if reported is not None else load_reported()
    provenance = dict(provenance) if provenance is not None else make_provenance()
    columns = spec["columns"]
    targets = [c["target"] for c in columns]
    metric = spec["metric"] if spec["kind"] == "mean_iou" else "mIoU"
    per_class = spec["kind"] == "per_class"
    files = {(e, int(s), t): Path(p) for (e, s, t), p in metrics_files.items()}

    def seeds_of(experiment: str) -> list[int]:
        if spec.get("seeds"):
            return [int(s) for s in spec["seeds"]]
        seeds = sorted({s for (e, s, _t) in files if e == experiment})
        if not seeds:
            raise _data_error(f"table {name!r}: no metrics files for experiment {experiment!r}")
        return seeds

    used: list[Path] = []
    cache: dict[Path, dict] = {}

    def load(experiment: str, seed: int, target: str) -> dict:
        key = (experiment, seed, target)
        if key not in files:
            raise _data_error(f"table {name!r}: no metrics file given for experiment {experiment!r}, seed {seed}, target {target!r}")
        path = files[key]
        if path not in cache:
            cache[path] = read_metrics(path, needs=(metric,), per_class=per_class)
            used.append(path)
        return cache[path]

    if per_class:
        from dginstyle.labels import CLASSES

        col_keys = list(CLASSES) + (["mIoU"] if spec["average"] else [])
        col_labels = list(CLASSES) + (["mIoU"] if spec["average"] else [])
    else:
        col_keys = targets + (["average"] if spec["average"] else [])
        col_labels = [_column_label(c, reported) for c in columns] + (["avg"] if spec["average"] else [])

    lines: list[Line] = []
    reported_used: dict[str, Mapping] = {}
    all_seeds: set[int] = set()
    for row in spec["rows"]:
        experiment = row["experiment"]
        seeds = seeds_of(experiment)
        all_seeds.update(seeds)
        per_seed: list[list[float | None]] = []  # seed -> one value per column key
        for seed in seeds:
            data = [load(experiment, seed, t) for t in targets]
            if per_class:
                values = [_mean_defined(None if d["IoU"][c] is None else 100 * d["IoU"][c] for d in data) for c in CLASSES]
            else:
                values = [100 * d[metric] for d in data]
            if spec["average"]:
                values.append(statistics.fmean(100 * d[metric] for d in data) if per_class else statistics.fmean(values))
            per_seed.append(values)
        ours = [_summary([v[i] for v in per_seed], spec["statistic"]) for i in range(len(col_keys))]
        lines.append(Line(row.get("label", experiment), "ours", experiment, None, ours))

        key = row.get("reported")
        if key is None:
            continue
        if key not in reported["rows"]:
            raise _data_error(f"table {name!r}: unknown reported row {key!r} (known: {', '.join(sorted(reported['rows']))})")
        rep = reported["rows"][key]
        reported_used[key] = rep
        marker = _source_marker(list(reported_used).index(key) + 1, rep, reported)
        if metric != reported.get("metric", "mIoU"):
            rep_values: list[float | None] = [None] * len(col_keys)
        elif per_class:
            only = columns[0].get("reported") if len(columns) == 1 else None
            classes = rep["per_class"].get(only, {}) if only else {}
            rep_values = [classes.get(c) for c in CLASSES]
            if spec["average"]:
                rep_values.append(rep["values"].get(only) if only else _reported_average(rep, columns))
        else:
            rep_values = [rep["values"].get(c.get("reported")) if c.get("reported") else None for c in columns]
            if spec["average"]:
                rep_values.append(_reported_average(rep, columns))
        lines.append(Line(f"reported: {rep['label']}", "reported", experiment, key, [Cell(v) for v in rep_values], marker))
        if spec["difference"]:
            diffs = [Cell(o.mean - r) if o.mean is not None and r is not None else Cell(None) for o, r in zip(ours, rep_values)]
            lines.append(Line("Δ ours − reported", "diff", experiment, key, diffs))

    from dginstyle.io import sha256_file  # imports numpy and PIL: only when a table is built

    provenance.setdefault("config_hash", "not given")
    provenance.setdefault("date", _now())
    provenance.setdefault("versions", software_versions())
    provenance["metric_files"] = [{"path": str(p), "sha256": sha256_file(p)[:16]} for p in used]
    provenance["run_versions"] = _run_versions(cache.values())
    provenance["reported_file"] = {"path": str(reported.get("path", "(given in memory)")), "sha256": str(reported.get("sha256", ""))[:16]}

    table = Table(
        name=name,
        title=spec.get("title") or name,
        kind=spec["kind"],
        metric=metric,
        statistic=spec["statistic"],
        seeds=sorted(all_seeds),
        columns=col_labels,
        column_keys=col_keys,
        lines=lines,
        footer=_footer(spec, metric, sorted(all_seeds), columns, reported, reported_used),
        provenance=provenance,
    )
    if out_prefix is not None:
        write_table(table, out_prefix)
    return table


def _source_marker(n: int, rep: Mapping, reported: Mapping) -> str:
    """The marker printed beside a reported row: its footnote number under the table and the
    short name of the paper it comes from (and of the paper it was read in, with `via`)."""
    sources = reported.get("sources", {})
    short = sources.get(rep["source"], {}).get("short", rep["source"])
    if rep.get("via"):
        short += f", via {sources.get(rep['via'], {}).get('short', rep['via'])}"
    return f"[{n}: {short}]"


def _column_label(column: Mapping, reported: Mapping) -> str:
    if column.get("label"):
        return column["label"]
    if column.get("reported"):
        return reported.get("columns", {}).get(column["reported"], {}).get("label", column["reported"])
    return column["target"]


def _run_versions(metrics: Iterable[Mapping]) -> list[dict]:
    """The distinct software versions recorded by the training runs behind the metrics
    (<run>/metadata.json 'versions'), where those files are readable."""
    seen = []
    for data in metrics:
        run = data.get("run")
        if not isinstance(run, str):
            continue
        try:
            versions = json.loads((Path(run) / "metadata.json").read_text()).get("versions")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(versions, dict) and versions not in seen:
            seen.append(versions)
    return seen


def _footer(spec: Mapping, metric: str, seeds: list[int], columns: list[Mapping], reported: Mapping, used: Mapping) -> list[str]:
    n = len(seeds)
    seeds_text = ", ".join(str(s) for s in seeds)
    if spec["statistic"] == "mean_std":
        stat = (
            f"Ours: mean ± sample standard deviation (ddof = 1) over seeds {seeds_text} ({n} runs per cell)"
            if n > 1
            else f"Ours: one seed ({seeds_text}), so the mean alone (no standard deviation)"
        )
    else:
        stat = f"Ours: mean over seeds {seeds_text} ({n} runs per cell)"
    lines = [f"{stat}; {metric} in percent."]
    if spec["kind"] == "per_class":
        over = columns[0]["target"] if len(columns) == 1 else "the mean over targets " + ", ".join(c["target"] for c in columns)
        lines.append(f"Per-class IoU on {over}; `{UNDEFINED}`: the class is absent from ground truth and prediction in every seed (IoU undefined).")
        if len(columns) > 1:
            lines.append("Reported per-class values are per target, so an average over targets has none (n/a).")
    elif spec["average"]:
        lines.append("avg: per seed, the mean over the target columns; then summarised over seeds (its std is the seed spread of the average).")
    lines.append(f"`{NA}`: no reported value with a verified source (never filled with a guess).")
    if spec["difference"] and used:
        lines.append("Δ = our mean − reported value, in points.")
    if metric != reported.get("metric", "mIoU") and used:
        lines.append(f"Reported numbers are {reported.get('metric', 'mIoU')}; this table shows {metric}, so they are n/a.")
    mapping = [f"{c['target']} ↔ {c['reported']}" for c in columns if c.get("reported") and c["reported"] != c["target"]]
    if mapping and used:
        lines.append("Columns set beside reported columns: " + ", ".join(mapping) + ".")
    sources = reported.get("sources", {})
    for n, (key, rep) in enumerate(used.items(), 1):
        source = sources.get(rep["source"], {}).get("citation", rep["source"])
        if rep["verified"]:
            via = rep.get("via")
            quoted = f", as quoted in {sources.get(via, {}).get('citation', via)}" if via else ""
            text = f"[{n}] Reported `{key}`: {source}; {rep['table']}; row \"{rep['row']}\"{quoted}; {rep['verified_in']}."
        else:
            text = f"[{n}] Reported `{key}`: no verified source ({rep['note'].strip()})"
        if rep["verified"] and rep.get("note"):
            text += f" Note: {rep['note'].strip()}"
        lines.append(text)
    lines.extend(spec.get("notes", []))
    return lines


# --------------------------------------------------------------------------- renderings


def _fmt(cell: Cell, kind: str) -> str:
    if cell.mean is None:
        return UNDEFINED if kind == "ours" else NA
    if kind == "diff":
        return f"{cell.mean:+.2f}"
    if kind == "reported":
        return repr(round(cell.mean, 4))  # as printed in the paper (46.07, 49.1)
    if cell.std is None:
        return f"{cell.mean:.2f}"
    return f"{cell.mean:.2f} ± {cell.std:.2f}"


def _provenance_lines(prov: Mapping) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
    lines = [
        f"config hash: {prov.get('config_hash', 'not given')}",
        f"date: {prov.get('date', '')}",
        f"software (table): {versions}",
    ]
    runs = prov.get("run_versions") or []
    lines.append(
        "software (training runs): " + ("; ".join(", ".join(f"{k} {v}" for k, v in r.items()) for r in runs) if runs else "not recorded")
    )
    rep = prov.get("reported_file")
    if rep:
        lines.append(f"reported numbers: {rep['path']} (sha256 {rep['sha256']})")
    files = prov.get("metric_files", [])
    lines.append(f"metric files ({len(files)}):")
    lines.extend(f"  {f['path']} (sha256 {f['sha256']})" for f in files)
    return lines


def render_markdown(table: Table) -> str:
    head = ["method", *table.columns]
    out = [f"# {table.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(table.columns)]
    for line in table.lines:
        label = line.label if line.kind == "ours" else f"*{line.label}*"
        if line.source:
            label += f" {line.source}"
        out.append("| " + " | ".join([label, *(_fmt(c, line.kind) for c in line.cells)]) + " |")
    out.append("")
    out.extend(f"- {text}" for text in table.footer)
    out += ["", "**Provenance**", "", "```"]
    out.extend(_provenance_lines(table.provenance))
    out += ["```", ""]
    return "\n".join(out)


CSV_FIELDS = ("table", "line", "kind", "experiment", "reported_key", "column", "column_key", "mean", "std", "n", "text", "source")


def render_csv(table: Table) -> str:
    """Tidy CSV, one line per cell; provenance in leading '#' lines (pandas: comment='#')."""
    buffer = io.StringIO()
    for text in _provenance_lines(table.provenance):
        buffer.write(f"# {text}\n")
    for text in table.footer:
        buffer.write(f"# {text}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for line in table.lines:
        for label, key, cell in zip(table.columns, table.column_keys, line.cells):
            writer.writerow([
                table.name, line.label, line.kind, line.experiment or "", line.reported_key or "", label, key,
                "" if cell.mean is None else f"{cell.mean:.6g}", "" if cell.std is None else f"{cell.std:.6g}",
                cell.n if line.kind == "ours" else "", _fmt(cell, line.kind), line.source or "",
            ])
    return buffer.getvalue()


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "±": r"$\pm$", "Δ": r"$\Delta$", "−": r"$-$", "↔": r"$\leftrightarrow$"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs}, and graphicx for per-class tables)."""
    out = [f"% {text}" for text in _provenance_lines(table.provenance)]
    out += [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex(table.title)}}}", f"\\label{{tab:{table.name}}}"]
    wide = table.kind == "per_class"
    if wide:
        out.append(r"\resizebox{\textwidth}{!}{%")
    out.append(r"\begin{tabular}{l" + "r" * len(table.columns) + "}")
    out.append(r"\toprule")
    out.append(" & ".join(["Method", *(_tex(c) for c in table.columns)]) + r" \\")
    out.append(r"\midrule")
    for i, line in enumerate(table.lines):
        if i and line.kind == "ours" and table.lines[i - 1].kind != "ours":
            out.append(r"\midrule")
        label = _tex(line.label) if line.kind == "ours" else f"\\textit{{{_tex(line.label)}}}"
        if line.source:
            label += f" {_tex(line.source)}"
        out.append(" & ".join([label, *(_tex(_fmt(c, line.kind)) for c in line.cells)]) + r" \\")
    out.append(r"\bottomrule")
    out.append(r"\end{tabular}" + ("}" if wide else ""))
    out.append(r"\par\smallskip{\footnotesize " + " ".join(_tex(t).replace("`", "") for t in table.footer) + "}")
    out += [r"\end{table}", ""]
    return "\n".join(out)


def write_table(table: Table, out_prefix: str | os.PathLike) -> list[Path]:
    """<prefix>.md, .csv and .tex, each written atomically."""
    from dginstyle.io import atomic_write_text

    prefix = Path(out_prefix)
    written = []
    for suffix, render in ((".md", render_markdown), (".csv", render_csv), (".tex", render_latex)):
        path = prefix.with_name(prefix.name + suffix)
        atomic_write_text(path, render(table))
        written.append(path)
    return written


# --------------------------------------------------------------------------- bar plot

_SERIES_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207), (140, 86, 75), (227, 119, 194)]


def _lighter(colour: tuple[int, int, int], amount: float = 0.55) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * amount) for c in colour)


def plot_table(table: Table, out_png: str | os.PathLike, *, bar_width: int = 7) -> Path:
    """Grouped bars per column (per-class IoU: one group per class): each of our rows (with
    its std as an error bar) beside its reported row in a lighter shade; reported values that
    are n/a get no bar. PIL only."""
    from PIL import Image, ImageDraw, ImageFont

    from dginstyle.io import atomic_write_bytes

    series = [line for line in table.lines if line.kind in ("ours", "reported")]
    colour_of, index = {}, -1
    for line in series:
        if line.kind == "ours":
            index += 1
        base = _SERIES_COLOURS[max(index, 0) % len(_SERIES_COLOURS)]
        colour_of[id(line)] = base if line.kind == "ours" else _lighter(base)
    font = ImageFont.load_default()
    values = [c.mean + (c.std or 0) for line in series for c in line.cells if c.mean is not None]
    top = min(100.0, max(10.0, math.ceil(max(values, default=100.0) / 10) * 10))
    group_w = bar_width * len(series) + 8
    left, right, upper, plot_h = 46, 16, 34, 260
    label_h = 8 + max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(c, font=font)) for c in table.columns)
    legend_h = 14 * len(series) + 8
    width = left + right + group_w * len(table.columns)
    height = upper + plot_h + label_h + legend_h
    image = Image.new("RGB", (max(width, 360), height), "white")
    draw = ImageDraw.Draw(image)
    what = "per-class IoU" if table.kind == "per_class" else table.metric
    draw.text((left, 8), f"{table.title} ({what}, %)", fill="black", font=font)
    base_y = upper + plot_h

    def y_of(value: float) -> float:
        return base_y - plot_h * max(0.0, min(value, top)) / top

    for tick in range(0, int(top) + 1, 10 if top <= 60 else 20):
        y = y_of(tick)
        draw.line([(left - 3, y), (left + group_w * len(table.columns), y)], fill=(225, 225, 225) if tick else "black")
        draw.text((left - 6, y), str(tick), fill="black", font=font, anchor="rm")
    draw.line([(left, upper), (left, base_y)], fill="black")
    for g, label in enumerate(table.columns):
        x0 = left + g * group_w + 4
        for s, line in enumerate(series):
            cell = line.cells[g]
            if cell.mean is None:
                continue
            x = x0 + s * bar_width
            draw.rectangle([x, y_of(cell.mean), x + bar_width - 2, base_y], fill=colour_of[id(line)])
            if cell.std:
                cx = x + (bar_width - 2) / 2
                draw.line([(cx, y_of(cell.mean - cell.std)), (cx, y_of(cell.mean + cell.std))], fill="black")
        text_img = Image.new("L", (int(draw.textlength(label, font=font)) + 2, 12), 0)
        ImageDraw.Draw(text_img).text((0, 0), label, fill=255, font=font)
        rotated = text_img.rotate(90, expand=True)
        image.paste((0, 0, 0), (int(x0 + (group_w - 8) / 2 - 6), base_y + 4 + label_h - 8 - rotated.height), rotated)
    y = base_y + label_h + 4
    for line in series:
        draw.rectangle([left, y + 2, left + 10, y + 10], fill=colour_of[id(line)])
        missing = all(c.mean is None for c in line.cells)
        draw.text((left + 16, y), line.label + (" (no verified numbers: n/a)" if missing and line.kind == "reported" else ""), fill="black", font=font)
        y += 14
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(out_png, buffer.getvalue())
    return Path(out_png)


# --------------------------------------------------------------------------- CLI


def _read_spec(text: str) -> dict:
    """One table spec from a JSON/YAML file, or from the text itself when it is a JSON object."""
    inline = text.lstrip().startswith("{")
    where = "inline spec" if inline else text
    if not inline:
        path = Path(text)
        if not path.is_file():
            raise _data_error(f"{path}: table spec not found (give a JSON/YAML file or an inline JSON object)")
        text = path.read_text()
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _data_error(f"{where}: not JSON/YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict):
        raise _data_error(f"{where}: expected a mapping (one table spec)")
    return spec


def run_cli(args: argparse.Namespace) -> None:
    """`dginstyle make-table` (parser in dginstyle.cli): find the metrics files by the layout,
    build the table, write .md/.csv/.tex (and the bar plot with --plot)."""
    name = args.name or args.out_prefix.name
    spec = validate_spec(_read_spec(args.spec), name)
    seeds = list(args.seeds) if args.seeds else spec_seeds(spec)
    spec["seeds"] = seeds
    reported = load_reported(args.reported)
    files = find_metrics(spec, seeds, args.metrics)
    table = build_table(spec, files, reported, make_provenance(config_hash=args.config_hash), name=name, out_prefix=args.out_prefix)
    if args.plot:
        plot_table(table, args.plot)


# --------------------------------------------------------------------------- README results

README_START = "<!-- results:start (written by `dginstyle readme-results`; do not edit by hand) -->"
README_END = "<!-- results:end -->"


def _table_body(markdown: str) -> str:
    """A rendered table's Markdown without its provenance block (the README links the files)."""
    return markdown.split("\n**Provenance**", 1)[0].strip()


def update_readme_results(readme: Path, tables: list[Path], figure: Path | None = None, figure_out: Path | None = None) -> str:
    """Replace the README's results block (between the two markers) with the given rendered
    tables and an optional figure (copied to `figure_out`, a committed path, so the README
    shows it). Returns the new block."""
    import shutil

    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise _data_error(f"{readme}: no results block (the lines {README_START!r} and {README_END!r})")
    parts = [README_START, ""]
    for path in tables:
        path = Path(path)
        if not path.is_file():
            raise _data_error(f"{path}: table not found (make it with `snakemake {path}`)")
        parts += [_table_body(path.read_text()), "", f"(from `{path}`)", ""]
    if figure is not None:
        figure, figure_out = Path(figure), Path(figure_out or figure)
        if not figure.is_file():
            raise _data_error(f"{figure}: figure not found")
        if figure_out != figure:
            figure_out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(figure, figure_out)
        rel = os.path.relpath(figure_out, readme.parent)
        parts += [f"![{figure.stem}]({rel})", ""]
    parts.append(README_END)
    block = "\n".join(parts)
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + block + text[end:])
    return block


def readme_results_cli(args: argparse.Namespace) -> None:
    update_readme_results(args.readme, args.tables, args.figure, args.figure_out)
