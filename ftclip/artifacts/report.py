"""``report.html``: a run on one self-contained page (no network, no scripts, plots inlined as PNG).

Written by ``ftclip fit`` when a run ends and by ``ftclip export`` (so it shows the loading snippet of
the newest export). It holds the run's facts (task, model, stages and what each trains), the
metrics of every evaluation (before training, after each stage, and ``ftclip eval`` results kept in
``eval.json``), every plot under ``plots/``, how to load the export, and the resolved recipe.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import yaml

from ftclip.artifacts.layout import EXPORT_META
from ftclip.io import atomic_write_text, read_json
from ftclip.logs import format_seconds, is_number
from ftclip.runs import RunDir
from ftclip.version import __version__

REPORT_FILE = "report.html"
EVAL_FILE = "eval.json"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
figure { display: inline-block; margin: 0.5rem; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8rem; color: #555; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _cell(key: str, value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if key.endswith("_seconds"):
            return format_seconds(value)
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    return _e(value)


def _table(rows: list[tuple[str, dict]]) -> str:
    """One row per evaluation, one column per number (in first-seen order); tables a task keeps in
    metrics.json beside its numbers (per-class accuracy, ...) stay there."""
    columns: list[str] = []
    for _, values in rows:
        columns += [k for k, v in values.items() if k not in columns and is_number(v)]
    head = "".join(f"<th>{_e(c)}</th>" for c in ["evaluation", *columns])
    body = "".join(
        "<tr><td>" + _e(name) + "</td>" + "".join(f"<td>{_cell(c, values[c]) if c in values else ''}</td>"
                                                  for c in columns) + "</tr>"
        for name, values in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plots(run: RunDir, order: list[str]) -> list[Path]:
    """The run's PNGs: the run-wide ones first, then per evaluation in the run's order."""
    folder = run.path / "plots"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    rank = {name: i for i, name in enumerate(order)}

    def key(path: Path) -> tuple[int, str]:
        stage = next((s for s in sorted(order, key=len, reverse=True) if path.name.startswith(f"{s}_")), None)
        return (-1 if stage is None else rank[stage], path.name)

    return sorted(files, key=key)


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(path.stem)}">'
            f"<figcaption>{_e(path.name)}</figcaption></figure>")


def _export_section(run: RunDir) -> str:
    meta = read_json(run.path / "export" / EXPORT_META)
    if not meta:
        return (f"<p>No export yet. Write one with</p><pre>ftclip export {_e(run.path)} --format open_clip onnx</pre>")
    folder = run.path / "export"
    lines = ["import open_clip",
             f"model, _, preprocess = open_clip.create_model_and_transforms('local-dir:{folder.resolve()}')"]
    if meta.get("open_clip_one_liner"):
        lines += ["# or with the stock model name:", f"model, _, preprocess = {meta['open_clip_one_liner']}"]
    lines += ["", "# or through ftclip (the task's feature and heads):", "import ftclip",
              f"model = ftclip.load('{folder.resolve()}')"]
    return (f"<p>{_e(meta.get('model_name'))} for task {_e(meta.get('task'))}, feature {_e(meta.get('feature'))}, "
            f"formats {_e(', '.join(meta.get('formats', [])))}; exported from checkpoint "
            f"{_e(meta.get('checkpoint'))}.</p><pre>{_e(chr(10).join(lines))}</pre>")


def render_report(run_dir: str | Path) -> str:
    """The HTML text of ``run_dir``'s report."""
    run = RunDir(run_dir)
    recipe_text = run.config_path.read_text(encoding="utf-8")
    cfg = yaml.safe_load(recipe_text) or {}
    metrics = run.metrics()
    completed = run.completed_stages()
    stages = cfg.get("stages", {}) or {}
    model = cfg.get("model", {}) or {}
    title = f"{cfg.get('name', run.path.name)} — ftclip run"

    facts = [("task", cfg.get("task")), ("run directory", run.path.resolve()),
             ("model", f"{model.get('name')} ({model.get('pretrained') or 'random init'}), input "
                       f"{'x'.join(str(v) for v in model.get('image_size', []))}"),
             ("seed", cfg.get("seed")),
             ("stages completed", ", ".join(completed) + f" of {len(stages)}" if completed else f"none of {len(stages)}")]
    fact_rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in facts)
    stage_rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{_e(s.get('kind'))}</td><td>{_e(', '.join(s.get('train', [])))}</td>"
        f"<td>{_e(s.get('epochs'))}</td><td>{_e((s.get('optimizer') or {}).get('name'))} lr "
        f"{_e((s.get('optimizer') or {}).get('lr'))}</td><td>{'done' if name in completed else 'not done'}</td></tr>"
        for name, s in stages.items())

    rows = [(name, values) for name, values in metrics.items()]
    evaluation = read_json(run.path / EVAL_FILE)
    if evaluation and isinstance(evaluation.get("metrics"), dict):
        rows.append((f"ftclip eval ({evaluation.get('stage') or evaluation.get('kind')}, "
                     f"{Path(str(evaluation.get('checkpoint') or '')).name or 'weights'})", evaluation["metrics"]))
    metrics_html = _table(rows) if rows else "<p>No evaluation recorded yet.</p>"
    plots = _plots(run, ["initial", *stages])
    plots_html = "".join(_figure(p) for p in plots) or "<p>No plots yet.</p>"

    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<table><tbody>{fact_rows}</tbody></table>
<h2>Stages</h2>
<table><thead><tr><th>stage</th><th>kind</th><th>trains</th><th>epochs</th><th>optimizer</th><th>state</th></tr></thead>
<tbody>{stage_rows}</tbody></table>
<h2>Metrics</h2>
{metrics_html}
<h2>Plots</h2>
{plots_html}
<h2>Load the export</h2>
{_export_section(run)}
<h2>Recipe (resolved)</h2>
<pre>{_e(recipe_text)}</pre>
<p><small>written by ftclip {_e(__version__)}</small></p>
</body>
</html>
"""


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.html`` atomically; returns its path."""
    return atomic_write_text(Path(run_dir) / REPORT_FILE, render_report(run_dir))
