"""``plastix report SWEEP_DIR``: an HTML page and PNG figures of every experiment of a sweep.

For each experiment of ``sweep.json`` the page shows its verdicts (one line per claim of its file), the
figures of its ``analyses``, tables of final values, its config and the runs' full configs. Curves are the
mean over seeds with a 95% percentile-bootstrap confidence band across seeds (``bootstrap_ci``); final
performance is the interquartile mean (IQM) with a 95% stratified-bootstrap CI (``iqm``,
``stratified_bootstrap_ci``; Agarwal et al. 2021, the rliable estimators, implemented here with numpy
because rliable 1.2 does not import with pandas 3). Metrics that a run did not record are reported as
missing on the page; nothing fails because a key is absent.

Statistics:
    final value of a key in one seed: mean of its last ``max(1, 10%)`` measurements (claims with
    ``stat = "mean"`` use the mean of all measurements);
    IQM: mean of the middle 50% of the sorted scores (``scipy.stats.trim_mean(x, 0.25)``);
    stratified bootstrap: resample the runs of each task (here: seeds within an env) with replacement.

Modules:
    ``stats``     IQM, bootstrap CIs, binned curves, final values, the claims' verdicts (``evaluate_claim``)
    ``figures``   matplotlib set-up, colours, curves with bootstrap bands (``curves_figure``), IQM bars
    ``page``      ``Section`` (what an analysis writes into) and the HTML page
    ``common``    helpers shared by analyses: per-layer keys, one line per variant, final-value tables
    ``registry``  ``ANALYSES`` and the ``analysis`` decorator
    ``build``     ``build_report``: reads the sweep, judges the claims, runs each experiment's analyses
    ``analyses/`` one module per analysis (``return``, ``dormancy``, ``rounds``, ...)

How to add an analysis (one new file; nothing else to edit):
    Create ``src/plastix/report/analyses/my_analysis.py``; every module of that folder is imported with
    the package, and the decorator registers the function under the name an experiment file lists in
    ``analyses = ["my_analysis"]`` (``plastix.experiments.load`` accepts exactly the registered names)::

        from plastix.report.common import variant_lines
        from plastix.report.figures import curves_figure
        from plastix.report.registry import analysis


        @analysis("my_analysis", "one line saying what it draws (shown when a name is unknown)")
        def analysis_my_analysis(sec, frame, keys, run_labels, exp):
            # frame: rows run, seed, update, env_step, key, value of the experiment's runs; keys: the sorted
            # metric keys present; run_labels: {run: legend label}; exp: the experiment's sweep.json entry.
            if "my/key" not in keys:
                sec.note_missing("my analysis: no `my/key` rows")   # shown on the page; never raise
                return
            panels = [("my/key", variant_lines(frame, "my/key", run_labels))]
            sec.figure("my_analysis", "My key (mean over seeds, 95% bootstrap band)",
                       lambda path: curves_figure(path, panels, "value", colors=sec.colors,
                                                  round_ends=sec.round_ends))
            sec.verdict("What the paper says", "yes, ...")        # optional: a computed verdict
            sec.table(some_frame, "caption")                      # optional: a table

    ``sec`` (a ``page.Section``) collects figures, tables, verdicts and what is missing; ``sec.colors`` is
    the report's colour of every variant (by legend label and run name: pass it to every figure of
    variants, so that a variant keeps one colour across the page) and ``sec.round_ends`` the env steps at
    which rounds end (per-step figures mark them). An analysis of a probe's own result file (like
    ``task_switch``) passes ``read=`` and ``finals=`` to the decorator and is called as
    ``draw(sec, rows, exp)``; ``single_run=False`` keeps an analysis that needs several variants off the
    page of one run folder (``plastix report RUN``). See ``registry.Analysis``.

Colours: ``figures.color_map`` gives every run of the page a colour in the order of the sorted run names;
figures pick from it (``figures.pick_colors``), so a variant has one colour and one legend label in every
figure of a report.
"""

from plastix.report import analyses as _analyses  # noqa: F401  (registers every analysis)
from plastix.report.analyses.dormancy import analysis_dormancy
from plastix.report.analyses.dormancy_vs_gradient import analysis_dormancy_vs_gradient
from plastix.report.analyses.juliani_ash_regression import (
    REGRESSION_CLAIM,
    THEIR_REGRESSION_CLAIM,
    analysis_juliani_ash_regression,
    change_since_first_round,
    encoder_output_keys,
    ols,
    regression_data,
    regression_verdict,
)
from plastix.report.analyses.losses import analysis_losses
from plastix.report.analyses.mitigations import analysis_mitigations
from plastix.report.analyses.overlap import analysis_overlap
from plastix.report.analyses.ranks import analysis_ranks
from plastix.report.analyses.returns import analysis_return
from plastix.report.analyses.rounds import analysis_rounds, round_curve, round_rows
from plastix.report.analyses.task_relevance import analysis_task_relevance, relevance_table, relevance_verdict
from plastix.report.analyses.task_switch import analysis_task_switch
from plastix.report.analyses.weights import analysis_weights
from plastix.report.build import build_report, short_labels
from plastix.report.page import Section
from plastix.report.registry import ANALYSES, analysis
from plastix.report.stats import (
    binned_curves,
    bootstrap_ci,
    evaluate_claim,
    final_values,
    iqm,
    stratified_bootstrap_ci,
)

__all__ = [
    "ANALYSES", "REGRESSION_CLAIM", "THEIR_REGRESSION_CLAIM", "Section", "analysis", "analysis_dormancy",
    "analysis_dormancy_vs_gradient", "analysis_juliani_ash_regression", "analysis_losses", "analysis_mitigations",
    "analysis_overlap", "analysis_ranks", "analysis_return", "analysis_rounds", "analysis_task_relevance",
    "analysis_task_switch", "analysis_weights", "binned_curves", "bootstrap_ci", "build_report",
    "change_since_first_round", "encoder_output_keys", "evaluate_claim", "final_values", "iqm", "ols",
    "regression_data", "regression_verdict", "relevance_table", "relevance_verdict", "round_curve", "round_rows",
    "short_labels", "stratified_bootstrap_ci",
]
