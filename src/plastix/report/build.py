"""``build_report``: one section per experiment of a sweep, each filled by the analyses its file names."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from plastix.experiments import matches
from plastix.report.page import Section, page_html, slug
from plastix.report.registry import ANALYSES
from plastix.report.stats import evaluate_claim, final_values

FINALS_COLUMNS = ["run", "seed", "key", "value"]


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
    verdicts = []
    for claim in exp["claims"]:
        if probe is None:
            f = final_values(frame[frame.key.map(lambda k, c=claim: matches(k, c["keys"]))], claim.get("stat", "final"))
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


def run_status(sweep_dir: Path, manifest: dict, runs: list[str], frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its seeds, its latest checkpoint's update and how many metric rows it has."""
    from plastix import store

    status = []
    for r in runs:
        run_dir = sweep_dir / "runs" / r
        latest = store.latest_checkpoint(run_dir) if run_dir.exists() else None
        cfg = manifest["runs"].get(r, {})
        status.append(dict(run=r, seeds=",".join(map(str, cfg.get("seeds", []))),
                           checkpoint_update=latest[0] if latest else 0,
                           rows=int((frame.run == r).sum()) if not frame.empty else 0))
    return pd.DataFrame(status)


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``index.html`` and its PNGs to ``out_dir`` (default ``SWEEP_DIR/report``); return the page's path."""
    from plastix.query import connect

    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "sweep.json").exists():
        raise FileNotFoundError(f"{sweep_dir}: not a sweep folder (no sweep.json)")
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    out_dir = Path(out_dir) if out_dir else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    con = connect(sweep_dir)
    sections = []
    for name, exp in manifest["experiments"].items():
        sec = Section(out_dir, slug(name))
        runs = exp["runs"]
        run_values = {r: manifest["runs"][r]["values"] for r in runs if r in manifest["runs"]}
        run_labels = short_labels(runs, run_values)
        frame = con.execute("SELECT run, seed, \"update\", env_step, \"key\", value FROM metrics WHERE run IN "
                            "(SELECT unnest(?::VARCHAR[]))", [runs]).df()
        probe = probe_name(exp)
        probes = {probe: ANALYSES[probe].read(sweep_dir, name)} if probe else {}
        # Verdicts first: the page answers the experiment's questions before it shows the evidence.
        verdicts = claim_verdicts(exp, frame, probes.get(probe), run_values)
        if frame.empty and probe is None:
            sec.note_missing("no metrics yet: none of this experiment's runs has written a metrics part")
        draw_analyses(sec, exp, frame, run_labels, probes)
        sections.append((name, exp, sec, verdicts + sec.verdicts, run_status(sweep_dir, manifest, runs, frame)))
    con.close()
    page = out_dir / "index.html"
    page.write_text(page_html(sweep_dir, manifest, sections))
    return page
