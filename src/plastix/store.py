"""Run folders: ``config.json``, tidy ``metrics.parquet`` written in parts, orbax checkpoints.

Layout of a run folder::

    config.json                  the full resolved config + versions of plastix, jax, envpool
    metrics.parquet/part-*.parquet   tidy rows (seed, update, env_step, key, value), one part per chunk
    neurons.parquet/part-*.parquet   per-neuron scores (seed, update, env_step, layer, neuron, dormancy,
                                     magi_layer, magi_loss), only with --save-neuron-scores
    checkpoints/<update>/        orbax checkpoints of the train state (the last two are kept)

``metrics.parquet`` is a folder of Parquet parts (a Hive-style dataset) so that a killed run keeps every
part it finished: each part is written to a temporary name and renamed. ``pandas.read_parquet(path)``,
``pyarrow.dataset`` and DuckDB's ``read_parquet('run/metrics.parquet/*.parquet')`` all read it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

METRICS_DIR = "metrics.parquet"
NEURONS_DIR = "neurons.parquet"
CHECKPOINT_DIR = "checkpoints"
SCHEMA = pa.schema(
    [("seed", pa.int64()), ("update", pa.int64()), ("env_step", pa.int64()), ("key", pa.string()), ("value", pa.float64())]
)


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    import importlib.metadata as md

    out = {}
    for name in ("plastix", "jax", "jaxlib", "flax", "optax", "envpool", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Write ``config.json`` (the resolved config plus package versions)."""
    payload = {"config": config, "versions": versions()}
    (run_dir / "config.json").write_text(json.dumps(payload, indent=2, sort_keys=True))


def read_config(run_dir: Path) -> dict[str, Any]:
    """The ``config`` part of a run folder's ``config.json``."""
    return json.loads((Path(run_dir) / "config.json").read_text())["config"]


def metrics_table(metrics: dict[str, np.ndarray], seeds: list[int], first_update: int, steps_per_update: int) -> pa.Table:
    """Long-form rows from ``{key: [K, S]}`` arrays of ``K`` updates starting at ``first_update`` (1-based).

    Rows whose value is NaN (e.g. ``return/episodic`` of an update in which no episode ended) are dropped.
    """
    seed_col, update_col, key_col, value_col = [], [], [], []
    for key in sorted(metrics):
        values = np.asarray(metrics[key], np.float64)
        k, s = values.shape
        updates = np.repeat(np.arange(first_update, first_update + k), s)
        keep = ~np.isnan(values.reshape(-1))
        seed_col.append(np.tile(np.asarray(seeds, np.int64), k)[keep])
        update_col.append(updates[keep])
        key_col.append(np.full(keep.sum(), key, dtype=object))
        value_col.append(values.reshape(-1)[keep])
    updates = np.concatenate(update_col)
    return pa.table(
        {
            "seed": np.concatenate(seed_col),
            "update": updates,
            "env_step": updates * steps_per_update,
            "key": np.concatenate(key_col),
            "value": np.concatenate(value_col),
        },
        schema=SCHEMA,
    )


def neuron_table(scores: dict[str, np.ndarray], seeds: list[int], first_update: int, steps_per_update: int) -> pa.Table:
    """Rows ``(seed, update, env_step, layer, neuron, <score>...)`` from ``{"<layer>/<score>": [K, S, H]}``.

    Updates without a measurement (NaN scores) are dropped. Scores of one layer share its neuron index.
    """
    by_layer: dict[str, dict[str, np.ndarray]] = {}
    for key, value in scores.items():
        layer, score = key.rsplit("/", 1)
        by_layer.setdefault(layer, {})[score] = np.asarray(value, np.float64)
    frames = []
    for layer, named in sorted(by_layer.items()):
        width = max(v.shape[-1] for v in named.values())
        k, s = next(iter(named.values())).shape[:2]
        update, seed, neuron = np.meshgrid(np.arange(first_update, first_update + k), np.asarray(seeds), np.arange(width),
                                           indexing="ij")
        columns = {"seed": seed.ravel(), "update": update.ravel(), "env_step": update.ravel() * steps_per_update,
                   "layer": np.full(update.size, layer, dtype=object), "neuron": neuron.ravel()}
        for score, value in sorted(named.items()):  # CReLU: dormancy has 2H units, MAGI H; pad with NaN
            padded = np.full((k, s, width), np.nan)
            padded[..., : value.shape[-1]] = value
            columns[score] = padded.ravel()
        frame = pd.DataFrame(columns)
        frames.append(frame[~frame.drop(columns=["seed", "update", "env_step", "layer", "neuron"]).isna().all(axis=1)])
    return pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)


def write_metrics_part(
    run_dir: Path, table: pa.Table, first_update: int, folder_name: str = METRICS_DIR, suffix: str = ""
) -> Path:
    """Atomically write one part named by its first update (so parts sort in training order)."""
    folder = Path(run_dir) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{first_update:09d}{suffix}.parquet"
    tmp = folder / f".{path.name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def drop_metrics_after(run_dir: Path, update: int) -> None:
    """Delete parts whose first update is after ``update`` (written after the checkpoint we resume from)."""
    for name in (METRICS_DIR, NEURONS_DIR):
        folder = Path(run_dir) / name
        if not folder.exists():
            continue
        for part in folder.glob("part-*.parquet"):
            if part_update(part) > update:
                part.unlink()
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink()


class DamagedPartError(RuntimeError):
    """A metrics part that cannot be read (e.g. truncated when the disk filled); the message names it."""


def part_update(part: Path) -> int:
    """The update number in a part's name (``part-000000011.parquet``, ``part-000000020-round.parquet``)."""
    return int(part.name.split("-")[1].split(".")[0])


def _read_part(part: Path) -> pa.Table:
    try:
        return pq.read_table(part)
    except (pa.ArrowException, OSError) as err:
        raise DamagedPartError(
            f"{part}: damaged metrics part ({type(err).__name__}: {err}). Read the run without it with "
            f"skip_damaged=True, or rewrite it with `plastix train --resume {part.parent.parent}`"
        ) from None


def damaged_parts(run_dir: str | Path) -> list[Path]:
    """The parts of a run folder (metrics and neuron scores) that cannot be read, oldest first."""
    damaged = []
    for name in (METRICS_DIR, NEURONS_DIR):
        for part in sorted((Path(run_dir) / name).glob("part-*.parquet")):
            try:
                _read_part(part)
            except DamagedPartError:
                damaged.append(part)
    return sorted(damaged, key=part_update)


def _read_parts(folder: Path, skip_damaged: bool = False) -> pd.DataFrame | None:
    """The parts of ``folder`` as one frame. A damaged part raises ``DamagedPartError`` naming it; with
    ``skip_damaged`` it is left out with a warning naming it."""
    import warnings

    tables = []
    for part in sorted(folder.glob("part-*.parquet")):
        try:
            tables.append(_read_part(part))
        except DamagedPartError as err:
            if not skip_damaged:
                raise
            warnings.warn(f"skipped {err}", stacklevel=3)
    if not tables:
        return None
    return pa.concat_tables(tables).to_pandas()


def read_metrics(run_dir: str | Path, skip_damaged: bool = False) -> pd.DataFrame:
    """All metric rows of a run folder, sorted by ``key, seed, update``.

    A damaged part (unreadable Parquet) raises ``DamagedPartError`` naming it; ``skip_damaged=True`` reads the
    others and warns. ``plastix train --resume RUN`` rewrites damaged parts (``training.prepare_run``)."""
    frame = _read_parts(Path(run_dir) / METRICS_DIR, skip_damaged)
    if frame is None:
        return SCHEMA.empty_table().to_pandas()
    return frame.sort_values(["key", "seed", "update"], kind="stable").reset_index(drop=True)


def read_neuron_scores(run_dir: str | Path, skip_damaged: bool = False) -> pd.DataFrame:
    """Per-neuron scores of a run folder (``--save-neuron-scores``), sorted by layer, seed, update, neuron;
    damaged parts as ``read_metrics``."""
    frame = _read_parts(Path(run_dir) / NEURONS_DIR, skip_damaged)
    if frame is None:
        raise FileNotFoundError(f"{run_dir} has no {NEURONS_DIR}: train with --save-neuron-scores")
    return frame.sort_values(["layer", "seed", "update", "neuron"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------ checkpoints
def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_checkpoint(run_dir: Path, update: int, state: Any, keep: int = 2) -> Path:
    """Save ``state`` (a pytree) as ``checkpoints/<update>``; keep only the newest ``keep``."""
    root = Path(run_dir).absolute() / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{update:09d}"
    if path.exists():
        shutil.rmtree(path)
    ckpt = _checkpointer()
    ckpt.save(path, state)
    ckpt.wait_until_finished()
    for old in sorted(p for p in root.iterdir() if p.name.isdigit())[:-keep]:
        shutil.rmtree(old)
    return path


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(update, path)`` of every complete checkpoint, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.exists():
        return []
    return [(int(p.name), p) for p in sorted(p for p in root.iterdir() if p.name.isdigit())]


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """``(update, path)`` of the newest complete checkpoint, or None."""
    done = checkpoints(run_dir)
    return done[-1] if done else None


def checkpoint_structure(path: Path) -> dict:
    """The nested ``{name: ...}`` of what the checkpoint at ``path`` holds (its tree's metadata; no array is
    read), e.g. to tell an older layout from the current one before restoring."""
    meta = _checkpointer().metadata(Path(path).absolute()).item_metadata
    return getattr(meta, "tree", meta)


def restore_checkpoint(path: Path, like: Any) -> Any:
    """Restore the pytree saved at ``path`` with the structure, shapes and dtypes of ``like``."""
    import jax
    import orbax.checkpoint as ocp

    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return _checkpointer().restore(Path(path).absolute(), target)
