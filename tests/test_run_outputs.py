"""What a finished run leaves for its user: the stage history, best checkpoint and early stopping,
the loggers named by trainer.logger, plots that are never blank, and a self-contained report.html."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest

from ftclip.logs import read_history


def test_history_best_checkpoint_and_early_stopping(tiny_trained_run):
    run, _ = tiny_trained_run
    rows = read_history(run.dir / "logs" / "image" / "metrics.csv")
    epochs = [r for r in rows if "lr" in r]
    assert [int(r["epoch"]) for r in epochs] == [0, 1]  # 3 epochs asked, stopped after the second
    assert all("train/loss_epoch" in r and "train/triplet_epoch" in r for r in epochs)
    vals = [r for r in rows if "val/mAP" in r]
    assert [int(r["epoch"]) for r in vals] == [0, 1]  # eval_every=1
    image = run.metrics["image"]
    assert image["stopped_early_at_epoch"] == 2
    best = max(vals, key=lambda r: (r["val/mAP"], -r["epoch"]))  # ModelCheckpoint keeps the first of equals
    assert image["best/epoch"] == int(best["epoch"]) + 1 and image["best/mAP"] == best["val/mAP"]
    assert (run.dir / "checkpoints" / "image" / "best.ckpt").is_file()
    assert (run.dir / "checkpoints" / "image" / "last.ckpt").is_file()
    assert not (run.dir / "checkpoints" / "prompts" / "best.ckpt").exists()  # no monitor there
    assert image["train_seconds"] > 0


def test_tensorboard_logger_writes_events_beside_the_history(tiny_trained_run):
    run, _ = tiny_trained_run
    for stage in ("prompts", "image"):
        assert list((run.dir / "logs" / "tensorboard" / stage).glob("events.out.tfevents.*")), stage
        assert (run.dir / "logs" / stage / "metrics.csv").is_file()  # the history is always written


def test_plots_of_a_run(tiny_trained_run, monkeypatch):
    run, _ = tiny_trained_run
    plots = run.dir / "plots"
    expected = ["metrics.png", "prompts_loss.png", "prompts_lr.png", "image_loss.png", "image_lr.png",
                "initial_ranklist.png", "initial_cmc.png", "image_ranklist.png", "image_cmc.png"]
    for name in expected:
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # stage 1's loss is its supcon term: one line, named for both
    from ftclip import plots as shared

    figures = []
    monkeypatch.setattr(shared, "save_figure", lambda fig, path: figures.append(fig) or path)
    shared.plot_losses(read_history(run.dir / "logs" / "prompts" / "metrics.csv"), plots / "x.png", "prompts")
    labels = [line.get_label() for line in figures[0].axes[0].lines]
    assert labels and all(label.startswith("loss = supcon") for label in labels), labels


def test_a_one_step_stage_plot_is_not_blank(tmp_path, monkeypatch):
    from ftclip import plots as shared

    figures = []
    monkeypatch.setattr(shared, "save_figure", lambda fig, path: figures.append(fig) or path)
    rows = [{"epoch": 0.0, "step": 1.0, "train/loss_epoch": 0.7, "lr": 1e-3}]
    shared.plot_losses(rows, tmp_path / "l.png", "s")
    shared.plot_lr(rows, tmp_path / "r.png", "s")
    shared.plot_run_metrics(tmp_path / "m.png", [("s", 1, rows)], {"initial": {"mAP": 0.1}, "s": {"mAP": 0.2}})
    assert len(figures) == 3
    for fig in figures:  # every single point is drawn with a marker (a line needs two points to be seen)
        marked = [line for ax in fig.axes for line in ax.lines
                  if len(line.get_xdata()) and line.get_marker() not in (None, "None", "")]
        assert marked, fig


def _data_images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_is_valid_self_contained_html(tiny_trained_run):
    import html5lib

    run, _ = tiny_trained_run
    text = (run.dir / "report.html").read_text(encoding="utf-8")
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)  # raises on any parse error
    assert text.startswith("<!DOCTYPE html>")
    images = _data_images(text)
    assert len(images) == len(list((run.dir / "plots").glob("*.png"))) >= 9
    assert all(image.startswith(b"\x89PNG") for image in images)
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing to fetch: no network, no files beside it
    assert "<script" not in text
    final = run.metrics["image"]
    assert f"{final['mAP']:.4f}" in text and f"{run.metrics['initial']['mAP']:.4f}" in text
    assert "early_stopping" in text and "monitor: mAP" in text  # the resolved recipe
    assert f"local-dir:{(run.dir / 'export').resolve()}" in text  # how to load the export


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install -y chromium; .ci/run does)")
def test_report_renders_in_headless_chromium(tiny_trained_run, tmp_path):
    """A real browser lays the report out and decodes every inlined plot."""
    run, _ = tiny_trained_run
    text = (run.dir / "report.html").read_text(encoding="utf-8")
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             "document.body.setAttribute('data-decoded', imgs.filter(i => i.complete && i.naturalWidth > 0).length);"
             "document.body.setAttribute('data-images', imgs.length); });</script>")
    page = tmp_path / "report_probe.html"
    page.write_text(text.replace("</body>", probe + "</body>"), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([_chromium(), *flags, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = len(_data_images(text))
    assert f'data-images="{images}"' in dom.stdout and f'data-decoded="{images}"' in dom.stdout
    assert "ftclip run" in dom.stdout and "<table>" in dom.stdout

    shot = tmp_path / "report.png"
    done = subprocess.run([_chromium(), *flags, "--window-size=1200,1600", f"--screenshot={shot}",
                           (run.dir / "report.html").as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    assert pixels.getextrema()[0] < 100  # something dark was drawn: text, tables, plots (a blank page is all white)
