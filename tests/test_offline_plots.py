"""`dvc plots show` with the offline template: the page draws its charts in headless
Chromium with every network request refused (Debian's `chromium`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reglab.config.compose import compose, to_yaml
from reglab.report.offline_plots import template
from tests.conftest import DIGITS, PROJECT_ROOT

# The full tier: a page in headless Chromium.
pytestmark = pytest.mark.slow

LEADERBOARD = """\
variant,test_accuracy,test_accuracy_low,test_accuracy_high,test_data_loss,generalization_gap,seeds
baseline,0.801,0.790,0.812,0.62,0.135,3
dropout,0.797,0.794,0.800,0.543,0.096,3
l2,0.794,0.783,0.805,0.587,0.119,3
"""
DVC = str(Path(sys.executable).with_name("dvc"))
CURVES = "variant,epoch,val_data_loss,train_data_loss\n" + "".join(
    f"{variant},{epoch},{loss - 0.02 * epoch},{loss - 0.04 * epoch}\n"
    for variant, loss in (("baseline", 0.9), ("l2", 0.85))
    for epoch in (1, 2, 3)
)


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory) -> Path:
    """The project's dvc.yaml and plot templates, the compare stage's plot files, and
    the page `dvc plots show --html-template` writes."""
    root = tmp_path_factory.mktemp("plots")
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root)
    (root / "params.yaml").write_text(to_yaml(compose(DIGITS)))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=root, check=True)
    shutil.copytree(PROJECT_ROOT / ".dvc/plots", root / ".dvc/plots", dirs_exist_ok=True)
    plots = root / "reports/plots"
    plots.mkdir(parents=True)
    (plots / "leaderboard.csv").write_text(LEADERBOARD)
    (plots / "val_data_loss.csv").write_text(CURVES)
    page = root / "template.html"
    page.write_text(template())
    subprocess.run(
        [DVC, "plots", "show", "--html-template", str(page), "-o", "out"],
        cwd=root, check=True, capture_output=True,
    )  # fmt: skip
    return root / "out/index.html"


def test_the_page_loads_nothing_from_the_network(plots_page):
    html = plots_page.read_text()
    assert "window.vegaEmbed" in html
    assert not re.search(r"<script[^>]+src=", html)
    assert "cdn.jsdelivr" not in html


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_chromium_draws_the_charts_offline(plots_page):
    offline = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=10000",
    ]  # fmt: skip
    url = plots_page.as_uri()
    screenshot = f"--screenshot={plots_page.with_suffix('.png')}"
    subprocess.run(
        [*offline, screenshot, "--window-size=1200,1400", url],
        capture_output=True, timeout=400, check=True,
    )  # fmt: skip
    dom = subprocess.run(
        [*offline, "--dump-dom", url], capture_output=True, text=True, timeout=400, check=True
    ).stdout  # fmt: skip
    # vega-embed draws each chart (an SVG or a canvas it sizes) inside a div it marks;
    # a plot without data (the confusion plots here) gets a 0x0 one.
    charts = re.findall(r'class="vega-embed[^"]*"', dom)
    drawn = [
        (int(width), int(height))
        for width, height in re.findall(r'<(?:svg|canvas)[^>]*width="(\d+)" height="(\d+)"', dom)
        if int(width) > 100 and int(height) > 100
    ]
    assert len(charts) >= 2, dom[-3000:]
    assert len(drawn) == 2, drawn  # the learning curves and the leaderboard
    assert "test_accuracy" in dom and "val_data_loss" in dom
