"""The registry of analyses: the names an experiment file may list in ``analyses = [...]``.

An analysis registers itself with the ``analysis`` decorator in its own module under
``plastix/report/analyses/``; every module of that folder is imported with the package, so a new file is
all it takes (see the package docstring of ``plastix.report``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Analysis:
    """One analysis of the report.

    Attributes:
        name: what an experiment file writes in ``analyses = [...]``.
        description: one line, shown in the error for an unknown name.
        draw: ``draw(sec, frame, keys, run_labels, exp)`` for an analysis of the runs' metrics (``frame``:
            rows ``run, seed, update, env_step, key, value`` of the experiment's runs; ``keys``: the sorted
            metric keys present; ``run_labels``: ``{run: legend label}``; ``exp``: the experiment's entry of
            ``sweep.json``); ``draw(sec, rows, exp)`` for a probe analysis (``rows`` from ``read``, or None
            when the probe has not run).
        read: a probe analysis only: ``read(sweep_dir, experiment_name) -> rows | None``.
        finals: a probe analysis only: ``finals(rows) -> (rows run, seed, key, value; {run: {field: value}})``,
            the values the experiment's claims are judged on.
        single_run: whether ``plastix report RUN_DIR`` (the page of one run folder) draws it too; False for
            an analysis that needs several variants (a regression across arms).
    """

    name: str
    description: str
    draw: Callable
    read: Callable | None = None
    finals: Callable | None = None
    single_run: bool = True

    @property
    def is_probe(self) -> bool:
        return self.read is not None


ANALYSES: dict[str, Analysis] = {}


def analysis(name: str, description: str, *, read: Callable | None = None, finals: Callable | None = None,
             single_run: bool = True):
    """Decorator: register ``draw`` as the analysis ``name`` (a name registered twice is an error)."""

    def register(draw: Callable) -> Callable:
        if name in ANALYSES and ANALYSES[name].draw is not draw:
            raise ValueError(f"analysis {name!r} is registered twice ({ANALYSES[name].draw.__module__} and "
                             f"{draw.__module__})")
        ANALYSES[name] = Analysis(name, description, draw, read, finals, single_run)
        return draw

    return register


def descriptions() -> dict[str, str]:
    """``{name: description}`` of every registered analysis (importing them first)."""
    import plastix.report.analyses  # noqa: F401  (registers every analysis module)

    return {name: a.description for name, a in ANALYSES.items()}
