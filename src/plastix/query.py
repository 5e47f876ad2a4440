"""SQL over a sweep or a run folder: DuckDB views over the runs' Parquet metrics.

``plastix query FOLDER "SQL"`` and ``metrics(folder, sql)`` take a sweep folder (``sweep.json``) or one run
folder (``config.json``; a run inside a sweep keeps its variant fields) and see these views (every one
exists in every folder; a view with nothing behind it is empty):

- ``metrics``: ``run, <variant fields...>, seed, update, env_step, key, value`` — every metric row of
  every run (``SWEEP_DIR/runs/*/metrics.parquet/``); ``run`` is the run folder's name and the variant fields
  (e.g. ``activation``) come from ``sweep.json``.
- ``runs``: ``run, <variant fields...>, seeds`` — one row per run.
- ``final_values``: ``run, <variant fields...>, seed, key, value, last_n, n`` — per run, seed and key the
  report's final value: the mean of the last ``last_n = max(1, ceil(10% of n))`` of its ``n`` measurements.
- ``final_return``: ``run, <variant fields...>, seed, final_return, last_n, n`` — ``final_values`` of
  ``return/episodic``: the final return per run and seed exactly as the report computes it.
- ``rounds``: ``run, <variant fields...>, seed, round, update, env_step, key, value`` — the per-round rows
  (``round/return_train``, ``round/normalized_return``, ...), with the round number (0-based) of each.
- ``task_switch``: ``experiment, source, seed, lr, step, split, loss`` (the task-switch probe's rows).
- ``task_relevance``: ``experiment, source, seed, alpha, lr, step, split, loss`` (the task-relevance probe's).

Example::

    plastix query sweeps/demo "SELECT activation, key, avg(value) FROM metrics
                               WHERE key LIKE '%dormant_ratio@0.025' GROUP BY ALL ORDER BY ALL"
    plastix query sweeps/demo "SELECT activation, avg(final_return) FROM final_return GROUP BY ALL"
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

DEFAULT_SQL = "SELECT * FROM metrics ORDER BY run, key, seed, update"
FINAL_FRACTION = 0.1  # as plastix.report.stats.final_count: the last max(1, ceil(10%)) of the measurements
VIEWS = ("metrics", "runs", "final_values", "final_return", "rounds", "task_switch", "task_relevance")
PROBE_COLUMNS = {
    "task_switch": "source VARCHAR, seed BIGINT, lr DOUBLE, step BIGINT, split VARCHAR, loss DOUBLE",
    "task_relevance": "source VARCHAR, seed BIGINT, alpha DOUBLE, lr DOUBLE, step BIGINT, split VARCHAR, loss DOUBLE",
}


def sweep_of(run_dir: Path) -> Path | None:
    """The sweep folder a run folder belongs to (``SWEEP/runs/RUN`` with ``SWEEP/sweep.json``), or None."""
    run_dir = Path(run_dir)
    sweep = run_dir.parent.parent
    if run_dir.parent.name == "runs" and (sweep / "sweep.json").exists():
        return sweep
    return None


def folder_kind(folder: Path) -> str:
    """``"sweep"`` (it has ``sweep.json``) or ``"run"`` (it has ``config.json``); else FileNotFoundError."""
    folder = Path(folder)
    if (folder / "sweep.json").exists():
        return "sweep"
    if (folder / "config.json").exists():
        return "run"
    raise FileNotFoundError(f"{folder}: neither a sweep folder (no sweep.json) nor a run folder (no config.json)")


def run_spec(run_dir: Path) -> dict:
    """``{"values", "seeds"}`` of a run folder: from the manifest of the sweep it belongs to, else no variant
    values and the seeds of its ``config.json`` (none when they cannot be read)."""
    sweep = sweep_of(run_dir)
    if sweep is not None:
        spec = json.loads((sweep / "sweep.json").read_text())["runs"].get(Path(run_dir).name)
        if spec is not None:
            return {"values": spec["values"], "seeds": spec["seeds"]}
    from plastix.config import ConfigError, parse_seeds
    from plastix.store import read_config

    try:
        raw = read_config(run_dir)["seeds"]
        seeds = [int(s) for s in raw] if isinstance(raw, list) else parse_seeds(str(raw))
    except (KeyError, ConfigError, ValueError):
        seeds = []
    return {"values": {}, "seeds": seeds}


def _run_specs(folder: Path) -> tuple[dict[str, dict], dict[str, Path], Path | None]:
    """``({run: {"values", "seeds"}}, {run: run folder}, the sweep's analyses folder or None)``."""
    if folder_kind(folder) == "sweep":
        manifest = json.loads((folder / "sweep.json").read_text())
        return manifest["runs"], {r: folder / "runs" / r for r in manifest["runs"]}, folder / "analyses"
    return {folder.name: run_spec(folder)}, {folder.name: folder}, None


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(folder: str | Path):
    """An in-memory DuckDB connection with the views of ``VIEWS`` over a sweep or a run folder."""
    import duckdb

    folder = Path(folder)
    specs, run_dirs, analyses = _run_specs(folder)
    fields: list[str] = []
    for spec in specs.values():
        fields += [k for k in spec["values"] if k not in fields]
    rows = [{"run": name, **{f: _scalar(spec["values"].get(f)) for f in fields},
             "seeds": ",".join(map(str, spec["seeds"]))} for name, spec in specs.items()]
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # no bar on stderr from a long scan (the report, a query)
    con.register("runs_frame", pd.DataFrame(rows, columns=["run", *fields, "seeds"]))
    con.execute("CREATE TABLE runs AS SELECT * FROM runs_frame")
    con.unregister("runs_frame")
    _metrics_view(con, run_dirs, fields)
    _derived_views(con, fields)
    for view in PROBE_COLUMNS:  # the probes' results, one file per experiment
        files = sorted(analyses.glob(f"*/{view}.parquet")) if analyses is not None else []
        _probe_view(con, view, files)
    return con


def _readable_part(part: Path) -> bool:
    """Whether DuckDB can scan ``part``: a damaged one (e.g. its footer lost when the disk filled) is left out
    of the views with a warning naming it, instead of failing every query on the folder with an Arrow error."""
    import warnings

    import pyarrow.parquet as pq

    try:
        pq.read_metadata(part)
        return True
    except Exception as err:  # noqa: BLE001 - any unreadable footer is a damaged part
        warnings.warn(f"{part}: damaged metrics part ({type(err).__name__}), left out of the query; rewrite it "
                      f"with `plastix train --resume {part.parent.parent}`", stacklevel=3)
        return False


def _metrics_view(con, run_dirs: dict[str, Path], fields: list[str]) -> None:
    """``metrics``: every run's parts, each row labelled with its run (by a table of file -> run)."""
    field_cols = "".join(f', r."{f}"' for f in fields)
    files = [(str(p.absolute()), run) for run, d in run_dirs.items()
             for p in sorted((d / "metrics.parquet").glob("*.parquet")) if _readable_part(p)]
    if files:
        con.register("files_frame", pd.DataFrame(files, columns=["filename", "run"]))
        con.execute("CREATE TABLE metric_files AS SELECT * FROM files_frame")
        con.unregister("files_frame")
        paths = ", ".join(_sql_str(f) for f, _ in files)
        con.execute(f"""
            CREATE VIEW metrics AS
            SELECT r.run{field_cols}, m.seed, m."update", m.env_step, m."key", m.value
            FROM read_parquet([{paths}], filename = true) m
            JOIN metric_files f ON f.filename = m.filename
            JOIN runs r ON r.run = f.run
        """)
    else:  # nothing written yet: an empty view with the same columns
        cols = ", ".join(f'CAST(NULL AS VARCHAR) AS "{f}"' for f in fields)
        con.execute(f"""
            CREATE VIEW metrics AS SELECT CAST(NULL AS VARCHAR) AS run{', ' + cols if cols else ''},
              CAST(NULL AS BIGINT) AS seed, CAST(NULL AS BIGINT) AS "update", CAST(NULL AS BIGINT) AS env_step,
              CAST(NULL AS VARCHAR) AS "key", CAST(NULL AS DOUBLE) AS value WHERE false
        """)


def _derived_views(con, fields: list[str]) -> None:
    """``final_values``, ``final_return`` and ``rounds`` over ``metrics``."""
    cols = "".join(f', "{f}"' for f in fields)
    con.execute(f"""
        CREATE VIEW final_values AS
        WITH ranked AS (
            SELECT run{cols}, seed, "key", value,
                   row_number() OVER (PARTITION BY run, seed, "key" ORDER BY "update" DESC) AS from_end,
                   count(*) OVER (PARTITION BY run, seed, "key") AS n
            FROM metrics)
        SELECT run{cols}, seed, "key", avg(value) AS value, count(*) AS last_n, any_value(n) AS n
        FROM ranked WHERE from_end <= greatest(1, ceil(round({FINAL_FRACTION} * n, 9)))
        GROUP BY ALL
    """)
    con.execute(f"""
        CREATE VIEW final_return AS
        SELECT run{cols}, seed, value AS final_return, last_n, n FROM final_values WHERE "key" = 'return/episodic'
    """)
    # A round's rows are written at its last update with round/index = the round number; older runs without
    # round/index number their rounds by the rank of the update (as plastix.report's round_rows).
    con.execute(f"""
        CREATE VIEW rounds AS
        WITH r AS (SELECT * FROM metrics WHERE "key" LIKE 'round/%'),
             idx AS (SELECT run, seed, "update", CAST(value AS BIGINT) AS round FROM r WHERE "key" = 'round/index')
        SELECT r.run{"".join(f', r."{f}"' for f in fields)}, r.seed,
               coalesce(idx.round, dense_rank() OVER (PARTITION BY r.run, r.seed ORDER BY r."update") - 1) AS round,
               r."update", r.env_step, r."key", r.value
        FROM r LEFT JOIN idx ON idx.run = r.run AND idx.seed = r.seed AND idx."update" = r."update"
        WHERE r."key" <> 'round/index'
    """)


def _probe_view(con, view: str, files: list[Path]) -> None:
    if files:
        union = " UNION ALL ".join(f"SELECT {_sql_str(p.parent.name)} AS experiment, * FROM "
                                   f"read_parquet({_sql_str(str(p.absolute()))})" for p in files)
        con.execute(f"CREATE VIEW {view} AS {union}")
    else:  # not run in this folder: empty, with the probe's columns
        con.execute(f"CREATE TABLE {view}_empty (experiment VARCHAR, {PROBE_COLUMNS[view]})")
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM {view}_empty")


def _scalar(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def metrics(folder: str | Path, sql: str | None = None) -> pd.DataFrame:
    """The result of ``sql`` (default: every metric row) over a sweep or run folder, as a pandas DataFrame."""
    con = connect(folder)
    try:
        return con.execute(sql or DEFAULT_SQL).df()
    finally:
        con.close()
