"""``gasnet report``: a static HTML page of a run (no server, no external files).

The page has the run summary, the evaluation tables, the run figures, one figure per
spectrum (flagged ones first, up to ``max_spectra``) and an anomaly gallery of the flagged
spectra with their reasons. Images are PNG files beside ``index.html``. A few lines of
inline script mark, once the page has loaded, how many images loaded (``data-images`` on
``<body>``) — the report's test reads it; the page needs no script to display.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from gasnet_plugin.evaluate import Truth, evaluate, text_table, truth_from_archive
from gasnet_plugin.io.archive import RunArchive
from gasnet_plugin.report.plots import run_figures, spectrum_figure, thumbnail
from gasnet_plugin.zwarning import describe

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px;
       color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; }
pre { background: #f6f6f6; padding: .6em; font-size: .8em; overflow-x: auto; }
.figs img { max-width: 32%; margin: .2em; border: 1px solid #ddd; }
.spectrum img { width: 100%; border: 1px solid #ddd; }
.gallery { display: flex; flex-wrap: wrap; gap: .6em; }
.gallery figure { margin: 0; width: 330px; font-size: .75em; }
.gallery img { width: 100%; border: 1px solid #e99; }
"""

CHECK_IMAGES = """
window.addEventListener('load', function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute('data-images', ok + '/' + images.length);
});
"""


def write_report(archive: RunArchive, folder: str | os.PathLike[str],
                 truth: Truth | None = None, max_spectra: int = 24,
                 title: str = "gasnet run") -> Path:
    """Write ``folder/index.html`` and its figures; returns the page's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results = archive.results
    truth = truth or truth_from_archive(results)
    evaluation = evaluate(results, truth)
    from gasnet_plugin.evaluate import format_evaluation

    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<pre>{html.escape(archive.summary())}</pre>",
             "<h2>Scores</h2>", f"<pre>{html.escape(format_evaluation(evaluation))}</pre>"]
    figures = run_figures(archive, truth, evaluation, folder)
    parts.append("<h2>The run</h2><div class='figs'>" + "".join(
        f"<img src='{p.name}' alt='{name}'>" for name, p in figures.items()) + "</div>")

    has_arrays = archive.arrays is not None and {"flux", "model"} <= set(archive.arrays.arrays)
    zwarn = np.asarray(results["ZWARN"])
    measured = np.isfinite(np.asarray(results["Z"], dtype=float))
    if not has_arrays:
        parts.append("<p>No spectra to show: run with <code>output: {arrays: [flux, ivar, "
                     "model, residual, chi2_curves]}</code> to see them here.</p>")
    else:
        flagged = np.flatnonzero((zwarn != 0) & measured)
        order = np.concatenate([flagged, np.flatnonzero((zwarn == 0) & measured)])
        parts.append(f"<h2>Spectra ({min(max_spectra, order.size)} of {order.size} measured, "
                     "flagged first)</h2>")
        for index in order[:max_spectra]:
            name = f"spectrum-{index:06d}.png"
            spectrum_figure(archive, int(index), folder / name)
            reason = html.escape(str(results["ZWARN_REASON"][index]))
            parts.append(f"<div class='spectrum'><img src='{name}' alt='row {index}'>"
                         + (f"<p>ZWARN: {reason}</p>" if reason else "") + "</div>")
        parts.append("<h2>Anomaly gallery</h2>")
        gallery = np.flatnonzero(zwarn != 0)
        if gallery.size == 0:
            parts.append("<p>No spectrum is flagged.</p>")
        parts.append("<div class='gallery'>")
        for index in gallery[:60]:
            reason = html.escape(str(results["ZWARN_REASON"][index]))
            bits = ", ".join(describe(int(zwarn[index])))
            if measured[index]:
                name = f"thumb-{index:06d}.png"
                thumbnail(archive, int(index), folder / name)
                image = f"<img src='{name}' alt='row {index}'>"
            else:
                image = ""
            source = html.escape(Path(str(results["SOURCE"][index])).name)
            parts.append(f"<figure>{image}<figcaption><b>{source}</b> [{results['ROW'][index]}]"
                         f" {bits}: {reason}</figcaption></figure>")
        parts.append("</div>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"<script>{CHECK_IMAGES}</script></head><body>" + "\n".join(parts)
            + "</body></html>")
    index_path = folder / "index.html"
    index_path.write_text(page, encoding="utf-8")
    return index_path


__all__ = ["text_table", "write_report"]
