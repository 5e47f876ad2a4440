"""The report's colour map and round marks, the report and query of one run folder, the query views."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import fake_new_sweep

from plastix.cli import main
from plastix.query import metrics
from plastix.report import build_report, final_values, round_rows
from plastix.report.figures import PALETTE, color_map
from plastix.report.page import slug

JA_RUN = "env_id=GridWorld-v0__shift=permute__arm=warm_start"


def record_figures(monkeypatch) -> dict[str, dict]:
    """Patch ``Figure.savefig`` to record, per PNG file, every labelled line's, scatter's and bar's colour
    (``colors``: ``[(label, hex)]``), the x of every vertical line (``vlines``) and the x ticks of each axis
    labelled ``round`` (``round_ticks``)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex
    from matplotlib.container import BarContainer
    from matplotlib.figure import Figure

    seen: dict[str, dict] = {}
    original = Figure.savefig

    def savefig(self, path, *args, **kwargs):
        rec = seen.setdefault(Path(path).name, {"colors": [], "vlines": set(), "round_ticks": []})
        for ax in self.axes:
            for line in ax.get_lines():
                x = np.asarray(line.get_xdata(), np.float64)
                if line.get_label().startswith("_") and len(x) == 2 and x[0] == x[1]:
                    rec["vlines"].add(float(x[0]))
                elif not line.get_label().startswith("_"):
                    rec["colors"].append((line.get_label(), to_hex(line.get_color())))
            for coll in ax.collections:
                if not coll.get_label().startswith("_") and len(coll.get_facecolor()):
                    rec["colors"].append((coll.get_label(), to_hex(coll.get_facecolor()[0], keep_alpha=False)))
            labels = [t.get_text() for t in ax.get_yticklabels()]
            for cont in ax.containers:
                if isinstance(cont, BarContainer):
                    rec["colors"] += [(lab, to_hex(p.get_facecolor(), keep_alpha=False))
                                      for lab, p in zip(labels, cont.patches)]
            if ax.get_xlabel() == "round":
                rec["round_ticks"].append(list(ax.get_xticks()))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return fake_new_sweep(tmp_path_factory.mktemp("views"))


@pytest.fixture(scope="module")
def figures(sweep, tmp_path_factory) -> dict[str, dict]:
    """What every figure of the sweep's report drew (``record_figures``)."""
    with pytest.MonkeyPatch.context() as mp:
        seen = record_figures(mp)
        build_report(sweep, tmp_path_factory.mktemp("report"))
    return seen


def test_a_variant_keeps_one_colour_in_every_figure(sweep, figures):
    """Rounds, return curves, IQM bars and the regression scatter draw a variant in the colour of its run in
    the report's map: the palette in the order of the sorted run names (once, the rounds figure and the bar
    charts coloured the same arm differently)."""
    seen = figures
    manifest = pd.read_json(sweep / "sweep.json", typ="series")
    runs = sorted(manifest["runs"])
    expected = color_map(runs)
    assert expected[runs[0]] == PALETTE[0] and expected[runs[1]] == PALETTE[1]
    by_label: dict[str, set] = {}
    for rec in seen.values():
        for label, color in rec["colors"]:
            by_label.setdefault(label, set()).add(color)
    assert {k: v for k, v in by_label.items() if len(v) > 1} == {}
    ja = [f for f in ("juliani-ash__rounds.png", "juliani-ash__return.png", "juliani-ash__return_iqm.png",
                      "juliani-ash__rounds_final.png", "juliani-ash__regression.png")]
    for fig in ja:
        labels = {lab for lab, _ in seen[fig]["colors"]}
        assert "arm=warm_start" in labels and "arm=reset_all" in labels, (fig, labels)
    assert by_label["arm=warm_start"] == {expected[JA_RUN]}
    assert by_label["arm=reset_all"] == {expected[JA_RUN.replace("warm_start", "reset_all")]}
    assert by_label["activation=relu"] == {expected["activation=relu"]}  # task relevance: the source run's


def test_rounds_are_marked_on_per_step_figures_and_counted_in_integers(figures):
    """The made-up J&A runs end rounds at updates 8, 16 and 24 of 1,024 env steps: per-step figures mark
    8,192 and 16,384 (the run's end is no boundary); runs without rounds get no marks."""
    seen = figures
    for fig in ("juliani-ash__return.png", "juliani-ash__weights__model.png", "juliani-ash__dead__dead_units.png"):
        assert seen[fig]["vlines"] == {8192.0, 16384.0}, fig
    assert seen["ocp-perturb__return.png"]["vlines"] == set()
    ticks = seen["juliani-ash__rounds.png"]["round_ticks"]
    assert ticks and all(float(t).is_integer() for axis in ticks for t in axis), ticks


def test_report_of_one_run_folder(sweep, tmp_path, capsys):
    """``plastix report RUN`` on a run inside a sweep and on a run folder of its own: curves, per-layer
    diagnostics, rounds and what is missing."""
    run = sweep / "runs" / JA_RUN
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    page = tmp_path / "r" / "index.html"
    assert f"report: {page}" in capsys.readouterr().out
    html = page.read_text()
    prefix = slug(JA_RUN)
    for fig in ("return", "rounds", "rounds_final", "dead__dead_units", "weights__model"):
        assert f"{prefix}__{fig}.png" in html and (page.parent / f"{prefix}__{fig}.png").exists(), fig
    assert "Missing from this run" in html and "losses: no `loss/*` or `optim/*` rows" in html
    assert "regression" not in html.lower()  # a regression across arms needs several runs
    assert "could not be drawn" not in html
    with pytest.raises(FileNotFoundError, match="neither a sweep folder .* nor a run folder"):
        build_report(tmp_path / "r")


def test_query_views_of_a_sweep_and_of_one_run(sweep):
    """``final_return`` is the report's final value of return/episodic (the mean of the last 10%), ``rounds``
    the report's round rows; a run folder has the same views over its own rows; probe views always exist."""
    frame = metrics(sweep, 'SELECT run, seed, "update", env_step, "key", value FROM metrics')
    want = final_values(frame[frame.key == "return/episodic"]).set_index(["run", "seed"]).value
    got = metrics(sweep, "SELECT run, seed, final_return, last_n, n FROM final_return").set_index(["run", "seed"])
    assert set(got.n) == {24} and set(got.last_n) == {3}  # 24 updates: the last ceil(2.4) = 3
    pd.testing.assert_series_equal(got.final_return.sort_index(), want.sort_index(), check_names=False)
    rounds = metrics(sweep, "SELECT run, seed, round, \"key\", value FROM rounds")
    expected = round_rows(frame[frame.key.str.startswith("round/")])
    key = ["run", "seed", "round", "key"]
    pd.testing.assert_frame_equal(rounds.sort_values(key).reset_index(drop=True),
                                  expected.sort_values(key).reset_index(drop=True), check_dtype=False)
    assert metrics(sweep, "SELECT count(*) AS n FROM task_switch").n.item() == 0
    assert metrics(sweep, "SELECT count(*) AS n FROM task_relevance").n.item() > 0
    run = sweep / "runs" / JA_RUN
    one = metrics(run, "SELECT DISTINCT run, arm, shift FROM metrics")
    assert one.to_dict("records") == [{"run": JA_RUN, "arm": "warm_start", "shift": "permute"}]
    mine = metrics(run, "SELECT seed, final_return FROM final_return ORDER BY seed").final_return.to_numpy()
    np.testing.assert_allclose(mine, want.loc[JA_RUN].sort_index().to_numpy())
    assert metrics(run, "SELECT count(*) AS n FROM rounds").n.item() == (rounds.run == JA_RUN).sum() > 0
    assert metrics(run, "SELECT * FROM runs").seeds.item() == "0,1"


def test_query_cli_on_a_run_and_its_help(sweep, capsys):
    run = sweep / "runs" / JA_RUN
    assert main(["query", str(run), "SELECT round, count(*) AS n FROM rounds GROUP BY ALL ORDER BY 1"]) == 0
    assert capsys.readouterr().out.split() == ["round", "n", "0", "10", "1", "10", "2", "10"]  # 5 keys x 2 seeds
    assert main(["query", "--help"]) == 0
    help_ = capsys.readouterr().out
    for view in ("metrics", "runs", "final_values", "final_return", "rounds", "task_switch", "task_relevance"):
        assert f"\n  {view} " in help_, view
    assert main(["query", str(run / "metrics.parquet")]) == 2
    assert "neither a sweep folder" in capsys.readouterr().err


def test_query_and_report_of_a_run_folder_outside_a_sweep(tmp_path):
    """A run folder of its own: no variant fields, seeds from config.json; the final return of 30 episodes
    is the mean of the last 3 (the report's last 10%), in the query and on the report's page."""
    from plastix import store

    run = tmp_path / "my-run"
    run.mkdir()
    store.write_config(run, {"seeds": "3,4"})
    returns = np.arange(1.0, 61.0).reshape(30, 2)  # [updates, seeds]
    store.write_metrics_part(run, store.metrics_table({"return/episodic": returns}, [3, 4], 1, 512), 1)
    got = metrics(run, "SELECT run, seed, final_return, last_n, n FROM final_return ORDER BY seed")
    assert got.to_dict("records") == [{"run": "my-run", "seed": 3, "final_return": 57.0, "last_n": 3, "n": 30},
                                      {"run": "my-run", "seed": 4, "final_return": 58.0, "last_n": 3, "n": 30}]
    assert metrics(run, "SELECT * FROM runs").to_dict("records") == [{"run": "my-run", "seeds": "3,4"}]
    page = build_report(run)
    html = page.read_text()
    assert page == run / "report" / "index.html" and "my-run__return.png" in html
    assert "<td>3: 57, 4: 58</td>" in html  # the final-return table's per-seed values
