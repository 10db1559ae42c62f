"""Run every benchmark and write the performance record.

    python benchmarks/run_all.py [--skip end_to_end,...] [--docs]

Runs, one after another (never in parallel: they would time each other), each script of this
folder: prepare, mrlf, segmentation, plan and end_to_end (the whole default DAG in a fresh
temporary folder: by far the longest). Each writes
results/benchmarks/<name>.json; this script then writes results/benchmarks/summary.md from
whatever JSON files exist (so `--skip` keeps an earlier figure, marked with its date), and with
`--docs` copies the summary into docs/performance.md between its benchmark markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "benchmarks"
SUMMARY = RESULTS / "summary.md"
ORDER = ("prepare", "mrlf", "segmentation", "plan", "end_to_end")
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}; no GPU"


def _when(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def summarise_prepare(d: dict) -> list[str]:
    p = d["parameters"]
    return [f"- **prepare** ({p['images']} Cityscapes-layout labels of {p['width']}x{p['height']}, {p['workers']} workers): "
            f"{d['prepare_images_per_s']} images/s, {d['ratio_prepare_over_floor']}x the floor of decoding and re-encoding the labels alone."]


def summarise_mrlf(d: dict) -> list[str]:
    s = d["settings"]
    lines = [f"- **MRLF** (random tiny generator, {s['layouts']} real layouts of {s['crop']} px, x{s['scale']}, {s['steps']} steps, "
             f"{d['machine']['threads']} thread(s)): seconds per image, (a) per-view loop / (b) batched views / (c) batched + skipped views:"]
    for stride, entry in d["results"].items():
        v = entry["variants"]
        lines.append(f"  - {stride.replace('_', ' ')} ({entry['views_per_step']} views/step): "
                     f"{v['a_loop']['seconds_per_image']} / {v['b_batched']['seconds_per_image']} / {v['c_batched_skip']['seconds_per_image']} s; "
                     f"(c) is {v['c_batched_skip']['speedup_vs_loop']}x (a), UNet calls {v['a_loop']['unet_calls_per_image']:.0f} -> {v['c_batched_skip']['unet_calls_per_image']:.0f}")
    return lines


def summarise_segmentation(d: dict) -> list[str]:
    lines = [f"- **segmentation** ({d['machine']['threads']} threads; eval batch of same-size images):"]
    for model, r in d["results"].items():
        t, e = r["train"], r["eval"]
        lines.append(f"  - {model}: train {t['iterations_per_second']} it/s (batch {t['batch']}, {t['crop_hw'][0]}x{t['crop_hw'][1]}, network step only); "
                     f"eval {e['megapixels_per_second']} MP/s on {e['images']} images of {e['image_wh'][0]}x{e['image_wh'][1]}, "
                     f"{100 * e['outside_forward_share']:.0f} % of it outside the network forward")
    return lines


def summarise_plan(d: dict) -> list[str]:
    return [f"- **DAG planning** (paper config, fake trees of the real sizes, {d['jobs']} jobs): plan {d['plan_s']} s, no-op rerun {d['noop_s']} s."]


def summarise_end_to_end(d: dict) -> list[str]:
    wall = f"{d['wall_seconds'] / 60:.1f} min wall" if d.get("wall_seconds") else "wall time not measured (summarised from an earlier run)"
    top = ", ".join(f"{rule} {v['seconds'] / 60:.1f} min ({v['jobs']} jobs)" for rule, v in list(d["per_rule"].items())[:6])
    return [f"- **end to end** (default config, `--cores {d['machine']['cores']}`): {wall}; job time by rule: {top}."]


SUMMARISERS = {"prepare": summarise_prepare, "mrlf": summarise_mrlf, "segmentation": summarise_segmentation,
               "plan": summarise_plan, "end_to_end": summarise_end_to_end}


def write_summary() -> str:
    lines = [f"Measured on: {machine_line()}. Each line's date is when its JSON was written; ratios come from one run.", ""]
    for name in ORDER:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            lines.append(f"- **{name}**: not measured yet (`python benchmarks/{name}.py`).")
            continue
        body = SUMMARISERS[name](json.loads(path.read_text()))
        body[0] += f" _({_when(path)})_"
        lines += body
    text = "\n".join(lines) + "\n"
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(text)
    return text


def update_docs(summary: str, page: Path = REPO / "docs" / "performance.md") -> None:
    text = page.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{page}: no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{START}\n{summary}{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip", default="", help="comma-separated benchmarks not to rerun (their last JSON is summarised)")
    p.add_argument("--docs", action="store_true", help="copy the summary into docs/performance.md (between its benchmark markers)")
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(ORDER)
    if unknown:
        raise SystemExit(f"--skip: unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(ORDER)}")
    for name in ORDER:
        if name in skip:
            continue
        print(f"== {name}", flush=True)
        result = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py")], cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(f"benchmarks/{name}.py failed (exit {result.returncode})")
    summary = write_summary()
    print(summary)
    if args.docs:
        update_docs(summary)


if __name__ == "__main__":
    main()
