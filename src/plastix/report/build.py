"""``build_report``: one section per experiment of a sweep (each filled by the analyses its file names), or
one section for a single run folder (every analysis that applies to one run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from plastix.experiments import matches
from plastix.report.analyses.rounds import ROUND_INDEX
from plastix.report.figures import color_map
from plastix.report.page import Section, page_html, slug
from plastix.report.registry import ANALYSES
from plastix.report.stats import evaluate_claim, final_values

FINALS_COLUMNS = ["run", "seed", "key", "value"]
# The analyses of a single run's page, first in this order; any other registered one follows.
RUN_ANALYSES_FIRST = ("return", "losses", "rounds", "mitigations", "dormancy", "dormancy_vs_gradient", "overlap",
                      "weights", "ranks")


def short_labels(runs: list[str], values: dict[str, dict]) -> dict[str, str]:
    """Legend labels: each run's variant values without the fields that are the same in every run
    (``env_id=GridWorld-v0__shift=permute__arm=l2_init`` -> ``arm=l2_init`` when only the arm varies)."""
    from plastix.experiments import variant_name

    fields = {k for r in runs for k in values.get(r, {})}
    varying = [k for k in sorted(fields) if len({str(values.get(r, {}).get(k)) for r in runs}) > 1]
    labels = {}
    for r in runs:
        kept = {k: v for k, v in values.get(r, {}).items() if k in varying}
        labels[r] = variant_name(kept) if kept else r
    return labels if len(set(labels.values())) == len(runs) else {r: r for r in runs}


def section_colors(run_colors: dict[str, str], run_labels: dict[str, str]) -> dict[str, str]:
    """The report's colour of every run, under its run name and under its legend label in this section."""
    return {**run_colors, **{label: run_colors[run] for run, label in run_labels.items() if run in run_colors}}


def round_ends(frame: pd.DataFrame) -> list[int]:
    """The env steps at which a round ends and the next begins: the ``env_step`` of every ``round/index`` row
    (written at a round's last update) except each run's and seed's last one (the end of the run)."""
    index = frame[frame.key == ROUND_INDEX]
    if index.empty:
        return []
    last = index.groupby(["run", "seed"]).env_step.transform("max")
    return sorted(int(s) for s in index.env_step[index.env_step < last].unique())


def probe_name(exp: dict) -> str | None:
    """The probe a task-switch experiment ran: ``task_relevance`` when it has alphas, else ``task_switch``."""
    if exp["kind"] != "task-switch":
        return None
    return "task_relevance" if "alphas" in (exp.get("task_switch") or {}) else "task_switch"


def claim_verdicts(exp: dict, frame: pd.DataFrame, probe_rows, run_values: dict[str, dict]) -> list[tuple[str, str]]:
    """``(claim text, verdict)`` of every claim of the experiment: on the runs' final values, or for a
    task-switch experiment on its probe's final values."""
    probe = probe_name(exp)
    if probe is not None:
        finals, labels = (ANALYSES[probe].finals(probe_rows) if probe_rows is not None
                          else (pd.DataFrame(columns=FINALS_COLUMNS), {}))
    keys = pd.Series(frame.key.unique() if not frame.empty else [], dtype=object)
    verdicts = []
    for claim in exp["claims"]:
        if probe is None:
            # Match the claim's glob on the distinct keys, not on every row (millions in a large sweep).
            chosen = keys[keys.map(lambda k, c=claim: matches(k, c["keys"]))]
            f = final_values(frame[frame.key.isin(chosen)], claim.get("stat", "final"))
            verdicts.append((claim["text"], evaluate_claim(claim, f, run_values)))
        else:
            verdicts.append((claim["text"], evaluate_claim(claim, finals, labels)))
    return verdicts


def draw_analyses(sec: Section, exp: dict, frame: pd.DataFrame, run_labels: dict[str, str], probes: dict) -> None:
    """Run every analysis the experiment names; one that fails is noted on the page, not raised."""
    keys = sorted(frame.key.unique()) if not frame.empty else []
    for name in exp["analyses"]:
        analysis = ANALYSES[name]
        try:
            if analysis.is_probe:
                analysis.draw(sec, probes.get(name), exp)
            elif not frame.empty:
                analysis.draw(sec, frame, keys, run_labels, exp)
        except Exception as err:  # one broken figure must not take the page down
            sec.note_missing(f"{name}: could not be drawn ({type(err).__name__}: {err})")


def run_status(run_dirs: dict[str, Path], manifest: dict, runs: list[str], frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its seeds, its latest checkpoint's update, how many metric rows it has, its median
    env steps/s (``time/sps``: the whole process, all seeds) and its peak memory (``time/peak_rss_mb``;
    empty for runs written before plastix logged it)."""
    from plastix import store

    rows = frame.run.value_counts() if not frame.empty else pd.Series(dtype=int)
    by_run = lambda key: frame[frame.key == key].groupby("run", observed=True).value  # noqa: E731
    sps, peak = by_run("time/sps").median(), by_run("time/peak_rss_mb").max()
    status = []
    for r in runs:
        run_dir = run_dirs.get(r)
        latest = store.latest_checkpoint(run_dir) if run_dir is not None and run_dir.exists() else None
        cfg = manifest["runs"].get(r, {})
        status.append(dict(run=r, seeds=",".join(map(str, cfg.get("seeds", []))),
                           checkpoint_update=latest[0] if latest else 0, rows=int(rows.get(r, 0)),
                           median_steps_per_s=_rounded(sps.get(r)), peak_memory_mb=_rounded(peak.get(r))))
    return pd.DataFrame(status)


def _rounded(value) -> int | None:
    return None if value is None or pd.isna(value) else round(float(value))


def run_analyses() -> list[str]:
    """The analyses of a single run's page: every registered analysis that applies to one run."""
    names = [n for n, a in ANALYSES.items() if a.single_run and not a.is_probe]
    return [n for n in RUN_ANALYSES_FIRST if n in names] + sorted(set(names) - set(RUN_ANALYSES_FIRST))


def run_manifest(run_dir: Path) -> dict:
    """A manifest of one section for a single run folder: its variant values and seeds from the sweep it
    belongs to (``SWEEP/runs/RUN``), else its seeds from ``config.json``."""
    from plastix.query import run_spec

    name, spec = run_dir.name, run_spec(run_dir)
    values, seeds = spec["values"], spec["seeds"]
    exp = dict(kind="train", scale=None, description=f"one run: {run_dir}", path=str(run_dir), seeds=seeds,
               runs=[name], analyses=run_analyses(), claims=[])
    return {"experiments": {name: exp}, "runs": {name: {"values": values, "seeds": seeds}}}


def read_rows(run_dirs: dict[str, Path], runs: list[str]) -> pd.DataFrame:
    """Every metric row of ``runs``: ``run, seed, update, env_step, key, value``, by run (sorted names) and
    within a run by key, seed and update (``store.read_metrics``).

    One read per run for the whole page, so experiments that share runs (``ocp-fig1``, ``ocp-weights``, ...)
    read them once; ``run`` is a categorical (a byte per row instead of the run's name: a 78-run sweep
    of 12M rows would spend 0.6 GB on it), and only the runs' own parts are opened.
    """
    from plastix import store

    names = sorted({r for r in runs if r in run_dirs and (run_dirs[r] / store.METRICS_DIR).is_dir()})
    frames = [store.read_metrics(run_dirs[r]) for r in names]
    lengths = [len(f) for f in frames]
    columns = ["run", "seed", "update", "env_step", "key", "value"]
    if not sum(lengths):
        return store.SCHEMA.empty_table().to_pandas().assign(run=pd.Series(dtype=str))[columns]
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True)
    del frames
    codes = np.repeat(np.arange(len(names)), lengths)
    frame.insert(0, "run", pd.Categorical.from_codes(codes, categories=names))
    return frame[columns]


def rows_of(rows: pd.DataFrame, runs: list[str]) -> pd.DataFrame:
    """The rows of ``runs`` (all of ``rows`` without a copy when they are every run it holds)."""
    if rows.empty or set(rows.run.unique()) <= set(runs):
        return rows
    return rows[rows.run.isin(runs)].reset_index(drop=True)


def build_report(folder: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``index.html`` and its PNGs to ``out_dir`` (default ``FOLDER/report``); return the page's path.

    ``folder`` is a sweep folder (``sweep.json``: one section per experiment) or a run folder
    (``config.json``, also one inside a sweep: its curves, per-layer diagnostics, rounds and mitigations).
    """
    from plastix.query import folder_kind

    folder = Path(folder)
    kind = folder_kind(folder)
    if kind == "sweep":
        manifest = json.loads((folder / "sweep.json").read_text())
        run_dirs = {r: folder / "runs" / r for r in manifest["runs"]}
    else:
        manifest = run_manifest(folder)
        run_dirs = {folder.name: folder}
    out_dir = Path(out_dir) if out_dir else folder / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    run_colors = color_map(manifest["runs"])  # one colour per run across every figure of the page
    every_row = read_rows(run_dirs, [r for exp in manifest["experiments"].values() for r in exp["runs"]])
    sections = []
    for name, exp in manifest["experiments"].items():
        runs = exp["runs"]
        run_values = {r: manifest["runs"][r]["values"] for r in runs if r in manifest["runs"]}
        run_labels = short_labels(runs, run_values)
        frame = rows_of(every_row, runs)
        sec = Section(out_dir, slug(name), colors=section_colors(run_colors, run_labels), round_ends=round_ends(frame))
        probe = probe_name(exp)
        probes = {probe: ANALYSES[probe].read(folder, name)} if probe else {}
        # Verdicts first: the page answers the experiment's questions before it shows the evidence.
        verdicts = claim_verdicts(exp, frame, probes.get(probe), run_values)
        if frame.empty and probe is None:
            sec.note_missing("no metrics yet: none of this experiment's runs has written a metrics part" if kind == "sweep"
                             else "no metrics yet: this run has not written a metrics part")
        draw_analyses(sec, exp, frame, run_labels, probes)
        sections.append((name, exp, sec, verdicts + sec.verdicts, run_status(run_dirs, manifest, runs, frame)))
    page = out_dir / "index.html"
    page.write_text(page_html(folder, manifest, sections, run_dirs, kind))
    return page
