"""SQL over a sweep: DuckDB views over every run folder's Parquet metrics.

``plastix query SWEEP_DIR "SQL"`` and ``metrics(sweep_dir, sql)`` see:

- ``metrics``: ``run, <variant fields...>, seed, update, env_step, key, value`` — every metric row of
  every run under ``SWEEP_DIR/runs/*/metrics.parquet/``; ``run`` is the run folder's name (recovered from
  the Parquet file's path) and the variant fields (e.g. ``activation``) come from ``sweep.json``.
- ``runs``: ``run, <variant fields...>, seeds`` — one row per run of the manifest.
- ``task_switch``: ``experiment, source, seed, lr, step, split, loss`` (when a task switch was run).
- ``task_relevance``: ``experiment, ...`` the task-relevance probe's rows (``ocp-task-relevance``), when run.

Example::

    plastix query sweeps/demo "SELECT activation, key, avg(value) FROM metrics
                               WHERE key LIKE '%dormant_ratio@0.025' GROUP BY ALL ORDER BY ALL"
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

DEFAULT_SQL = "SELECT * FROM metrics ORDER BY run, key, seed, update"


def connect(sweep_dir: str | Path):
    """An in-memory DuckDB connection with the views ``metrics``, ``runs``, ``task_switch`` and
    ``task_relevance`` (the last two when those probes were run)."""
    import duckdb

    sweep_dir = Path(sweep_dir)
    manifest_path = sweep_dir / "sweep.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{sweep_dir}: not a sweep folder (no sweep.json)")
    manifest = json.loads(manifest_path.read_text())
    fields: list[str] = []
    for spec in manifest["runs"].values():
        fields += [k for k in spec["values"] if k not in fields]
    rows = []
    for name, spec in manifest["runs"].items():
        row = {"run": name, **{f: _scalar(spec["values"].get(f)) for f in fields}}
        row["seeds"] = ",".join(map(str, spec["seeds"]))
        rows.append(row)
    runs = pd.DataFrame(rows, columns=["run", *fields, "seeds"])
    con = duckdb.connect()
    con.register("runs_frame", runs)
    con.execute("CREATE TABLE runs AS SELECT * FROM runs_frame")
    con.unregister("runs_frame")
    field_cols = "".join(f', r."{f}"' for f in fields)
    files = sorted((sweep_dir / "runs").glob("*/metrics.parquet/*.parquet"))
    if files:
        pattern = str((sweep_dir / "runs").absolute()).replace("'", "''") + "/*/metrics.parquet/*.parquet"
        con.execute(f"""
            CREATE VIEW metrics AS
            SELECT r.run{field_cols}, m.seed, m."update", m.env_step, m."key", m.value
            FROM (SELECT *, regexp_extract(filename, '/runs/([^/]+)/metrics\\.parquet/', 1) AS run
                  FROM read_parquet('{pattern}', filename = true)) m
            JOIN runs r ON r.run = m.run
        """)
    else:  # nothing written yet: an empty view with the same columns
        cols = ", ".join(f'CAST(NULL AS VARCHAR) AS "{f}"' for f in fields)
        con.execute(f"""
            CREATE VIEW metrics AS SELECT CAST(NULL AS VARCHAR) AS run{', ' + cols if cols else ''},
              CAST(NULL AS BIGINT) AS seed, CAST(NULL AS BIGINT) AS "update", CAST(NULL AS BIGINT) AS env_step,
              CAST(NULL AS VARCHAR) AS "key", CAST(NULL AS DOUBLE) AS value WHERE false
        """)
    for view in ("task_switch", "task_relevance"):  # the probes' results, one file per experiment
        files = sorted((sweep_dir / "analyses").glob(f"*/{view}.parquet"))
        if files:
            union = " UNION ALL ".join(
                f"SELECT '{p.parent.name}' AS experiment, * FROM read_parquet('{str(p.absolute())}')" for p in files
            )
            con.execute(f"CREATE VIEW {view} AS {union}")
    return con


def _scalar(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def metrics(sweep_dir: str | Path, sql: str | None = None) -> pd.DataFrame:
    """The result of ``sql`` (default: every metric row) over a sweep folder, as a pandas DataFrame."""
    con = connect(sweep_dir)
    try:
        return con.execute(sql or DEFAULT_SQL).df()
    finally:
        con.close()
