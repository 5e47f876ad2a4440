"""The HTML page: one ``Section`` per experiment (filled by its analyses) and the page around them."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd


class Section:
    """The HTML of one experiment, built piece by piece.

    ``colors`` is the report's colour of every variant (by legend label and by run name; pass it to the
    figure functions so that a variant keeps its colour across figures); ``round_ends`` the env steps at
    which the runs' rounds end (per-step figures mark them).
    """

    def __init__(self, out_dir: Path, slug: str, colors: dict[str, str] | None = None, round_ends=()):
        self.out_dir, self.slug = out_dir, slug
        self.colors = dict(colors or {})
        self.round_ends = list(round_ends)
        self.parts: list[str] = []
        self.missing: list[str] = []
        self.figures: list[str] = []
        self.verdicts: list[tuple[str, str]] = []  # computed by analyses (regressions, correlations)

    def html(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, name: str, caption: str, draw) -> None:
        file = f"{self.slug}__{name}.png"
        draw(self.out_dir / file)
        self.figures.append(file)
        self.parts.append(
            f'<figure><img src="{html.escape(file)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>"
        )

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        body = frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, classes="tbl", escape=True)
        # pandas writes `<table border="0" class="dataframe tbl">` (pandas 2) or without `border` (pandas 3).
        self.parts.append(re.sub(r'<table[^>]*class="dataframe tbl">', lambda _: f'<table class="tbl">{cap}', body, count=1))

    def note_missing(self, what: str) -> None:
        self.missing.append(what)

    def verdict(self, text: str, verdict: str) -> None:
        """A verdict computed by an analysis (shown with the claims' verdicts)."""
        self.verdicts.append((text, verdict))


def slug(text: str) -> str:
    """``text`` as a file-name and HTML-id friendly string."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")



CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
table.tbl{border-collapse:collapse;font-size:.85em;margin:1em 0} .tbl td,.tbl th{border:1px solid #ddd;padding:3px 8px}
.tbl caption{text-align:left;font-weight:600;padding-bottom:4px}
.verdict{margin:.3em 0} .yes{color:#1a7f37;font-weight:600} .no{color:#cf222e;font-weight:600}
.partly{color:#9a6700;font-weight:600} .unresolved{color:#9a6700;font-weight:600} .na{color:#777;font-weight:600}
.missing{background:#fff8c5;border:1px solid #d4a72c;padding:.5em 1em;font-size:.9em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.8em}
"""

# Marks the page for the browser test: how many images decoded, and any script error.
CHECK_JS = """
window.addEventListener('error', function (e) { document.body.dataset.errors = (document.body.dataset.errors || '') + e.message + ';'; });
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = ok + '/' + imgs.length;
});
"""


def verdict_class(verdict: str) -> str:
    """The CSS class of a verdict by its first word(s): yes, no, partly, unresolved or na (not measured...)."""
    if verdict.startswith("not resolved"):
        return "unresolved"
    word = verdict.split(",", 1)[0].split(":", 1)[0]
    return {"yes": "yes", "no": "no", "partly": "partly"}.get(word, "na")


def _verdict_html(text: str, verdict: str) -> str:
    return (f'<li class="verdict">{html.escape(text)}: <span class="{verdict_class(verdict)}">{html.escape(verdict)}'
            "</span></li>")


INTRO = ("<p>Curves: mean over seeds with a 95% percentile-bootstrap band across seeds; dotted vertical lines mark "
         "the ends of rounds. Final values: interquartile mean (IQM) with a 95% stratified-bootstrap CI over seeds; "
         "the final value of a seed is the mean of its last 10% of measurements. Verdicts count the seeds in which "
         "the claim holds for every matching metric key; when the claim holds in some seeds only and the two "
         "sides' 95% CIs overlap, the verdict says it is not resolved at this seed count.</p>")


def shown_path(path: str) -> str:
    """An experiment file as the page names it: a shipped one as ``plastix/experiments/NAME.toml`` (not the
    absolute path of whichever checkout ran it, which published pages would otherwise carry), a user's as is."""
    p = Path(path)
    if p.parent.name == "experiments" and p.parent.parent.name == "plastix":
        return f"plastix/experiments/{p.name}"
    return path


def page_html(folder: Path, manifest: dict, sections, run_dirs: dict[str, Path] | None = None,
              kind: str = "sweep") -> str:
    """The page of a sweep (one section per experiment) or of one run folder (``kind = "run"``)."""
    esc = html.escape
    run_dirs = run_dirs or {r: folder / "runs" / r for r in manifest["runs"]}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>plastix report: {esc(folder.name)}</title><style>{CSS}</style>",
        f"<script>{CHECK_JS}</script></head><body>",
        f"<h1>plastix report: {esc(str(folder))}</h1>",
        INTRO,
    ]
    if kind == "sweep":
        parts.append("<h2>Contents</h2><ul>")
        for name, exp, *_ in sections:
            parts.append(f"<li><a href='#{slug(name)}'>{esc(name)}</a> ({esc(exp['scale'])}): "
                         f"{esc(exp['description'])}</li>")
        parts.append("</ul>")
    for name, exp, sec, verdicts, status in sections:
        scale = f" <small>({esc(exp['scale'])} scale)</small>" if exp.get("scale") else ""
        parts.append(f"<section id='{slug(name)}'><h2>{esc(name)}{scale}</h2>")
        where = f"file: {esc(shown_path(exp['path']))}; " if kind == "sweep" else ""
        parts.append(f"<p>{esc(exp['description'])}<br><small>{where}seeds: "
                     f"{esc(', '.join(map(str, exp['seeds'])))}</small></p>")
        if verdicts:
            parts.append("<h3>Verdicts</h3><ul>" + "".join(_verdict_html(t, v) for t, v in verdicts) + "</ul>")
        if sec.missing:
            parts.append(f"<div class='missing'><b>Missing from this {'sweep' if kind == 'sweep' else 'run'}</b> "
                         "(figures skipped):<ul>" + "".join(f"<li>{esc(m)}</li>" for m in sec.missing) + "</ul></div>")
        parts.extend(sec.parts)
        parts.append("<h3>Runs</h3>" + status.to_html(index=False, border=0, classes="tbl"))
        if kind == "sweep":
            config = {k: exp[k] for k in ("kind", "base", "grid", "arms", "analyses", "source", "task_switch")
                      if exp.get(k)}
            parts.append("<details><summary>Experiment config</summary><pre>"
                         + esc(json.dumps(config, indent=2, default=str)) + "</pre></details>")
        for r in exp["runs"]:
            cfg_path = run_dirs.get(r, folder / "runs" / r) / "config.json"
            if cfg_path.exists():
                parts.append(f"<details><summary>config.json of run {esc(r)}</summary><pre>{esc(cfg_path.read_text())}"
                             "</pre></details>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
