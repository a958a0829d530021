"""The few-shot plot: mean ± std bands over seeds, single-seed series as points, one y scale per figure."""

from __future__ import annotations

import statistics

import pytest
from matplotlib.collections import PolyCollection

from vlprompt.report import plots

GROUPS = {  # (method, backbone, dataset, shots) -> accuracy of each seed
    ("coop", "RN50", "dtd", 1): [50.0, 54.0, 58.0], ("coop", "RN50", "dtd", 4): [60.0, 62.0, 64.0],
    ("coop", "RN50", "eurosat", 1): [70.0, 80.0, 90.0], ("coop", "RN50", "eurosat", 4): [85.0, 86.0, 87.0],
    ("cocoop", "RN50", "dtd", 1): [40.0], ("cocoop", "RN50", "dtd", 4): [45.0],
    ("cocoop", "RN50", "eurosat", 1): [65.0], ("cocoop", "RN50", "eurosat", 4): [66.0],
    ("zeroshot", "RN50", "dtd", 1): [42.0], ("zeroshot", "RN50", "eurosat", 1): [48.0],
}


@pytest.fixture
def figure(tmp_path, monkeypatch):
    """Draw the plot and keep its figure (save_figure would close it)."""
    kept = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, paths: kept.append(fig) or list(paths))
    paths = plots.plot_fewshot(GROUPS, tmp_path / "report_fewshot")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    return kept[0]


def _panel(fig, title):
    return next(ax for ax in fig.axes if ax.get_visible() and ax.get_title() == title)


def test_series_mean_and_std_over_seeds_and_over_datasets():
    assert plots.fewshot_series(GROUPS, "coop", "RN50", ["dtd"]) == [(1, 54.0, 4.0, 3), (4, 62.0, 2.0, 3)]
    avg = plots.fewshot_series(GROUPS, "coop", "RN50", ["dtd", "eurosat"])
    assert avg == [(1, 67.0, 7.0, 3), (4, 74.0, 1.5, 3)]  # mean of the means, mean of the stds (4, 10 / 2, 1)
    assert plots.fewshot_series(GROUPS, "cocoop", "RN50", ["dtd"]) == [(1, 40.0, None, 1), (4, 45.0, None, 1)]
    assert plots.fewshot_series(GROUPS, "coop", "RN50", ["dtd", "missing"]) == []


def test_seeded_methods_have_a_band_single_seed_ones_are_points_and_zero_shot_a_line(figure):
    ax = _panel(figure, "dtd")
    lines = {line.get_label(): line for line in ax.get_lines()}
    coop = lines["coop (mean ± std over seeds)"]
    assert list(coop.get_ydata()) == [54.0, 62.0] and coop.get_linestyle() == "-"
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1  # coop's only: cocoop has one seed
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(50.0) and max(ys) == pytest.approx(64.0)  # 54 - 4 .. 62 + 2
    single = lines["cocoop (1 seed: points)"]
    assert single.get_linestyle() == "None" and single.get_marker() == "o"
    assert list(lines["zeroshot"].get_ydata()) == [42.0, 42.0] and lines["zeroshot"].get_linestyle() == "--"
    assert any("one seed" in t.get_text() for t in figure.texts)


def test_one_y_scale_for_every_panel(figure):
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["dtd", "eurosat", "average"]
    assert len({ax.get_ylim() for ax in panels}) == 1
    low, high = panels[0].get_ylim()
    assert low <= 40.0 and high >= 87.0  # spans every panel's data (cocoop dtd 40, coop eurosat 87)
    avg = {line.get_label(): line for line in _panel(figure, "average").get_lines()}
    assert list(avg["coop (mean ± std over seeds)"].get_ydata()) == [67.0, 74.0]
    assert statistics.fmean([42.0, 48.0]) == avg["zeroshot"].get_ydata()[0]


def test_demo_plot_is_one_seeds_gains_over_zero_shot_as_points_on_one_scale(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from vlprompt.cli.demo import plot_results

    kept = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: kept.append(fig))
    rows = [{"dataset": "world_shapes", "classes": 12, "zeroshot": 92.0, "coop": {1: 91.0, 4: 93.5}},
            {"dataset": "world_patterns", "classes": 7, "zeroshot": 41.0, "coop": {1: 35.0, 4: 31.0}}]
    plot_results({"rows": rows, "shots": [1, 4], "model": "m", "pretrained": "p", "seed": 1}, tmp_path / "x.png")
    panels = [ax for ax in kept[0].axes if ax.get_visible()]
    assert len({ax.get_ylim() for ax in panels}) == 1
    coop = [line for line in panels[1].get_lines() if line.get_label() == "CoOp (one seed)"][0]
    assert list(coop.get_ydata()) == [-6.0, -10.0] and coop.get_linestyle() == "None"
    assert "not a trend" in kept[0]._suptitle.get_text()
