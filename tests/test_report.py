"""scoresde-report: a sweep's metrics.json and overrides become one table (stdout, CSV, Markdown)
and a plot."""

import csv
import json

import pytest

from scoresde.apps import report


def _fake_sweep(root, rows):
    for i, (overrides, metrics) in enumerate(rows):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (run / "metrics.json").write_text(json.dumps(metrics))
    return root


ROWS = [(["sde=vp", "seed=0"], {"nll": 2.5, "nll_se": 0.1, "kl": 0.05, "step": 100, "mode_w2": [1, 2]}),
        (["sde=subvp", "seed=0"], {"nll": 2.25, "nll_se": 0.1, "kl": 0.02, "step": 100}),
        (["sde=ve", "seed=0"], {"nll": 2.75, "nll_se": 0.1, "kl": 0.30, "step": 100})]


def test_collect_runs_reads_overrides_and_scalar_metrics(tmp_path):
    runs = report.collect_runs(_fake_sweep(tmp_path, ROWS))
    assert [r["run"] for r in runs] == ["0", "1", "2"]
    assert runs[1]["overrides"] == {"sde": "subvp", "seed": "0"}
    assert runs[0]["metrics"]["nll"] == 2.5 and "mode_w2" not in runs[0]["metrics"]   # lists are not scalars


def test_table_has_a_column_per_varying_override_and_lists_the_shared_ones(tmp_path):
    table = report.report_table(report.collect_runs(_fake_sweep(tmp_path, ROWS)), sort="nll")
    assert table.header[:2] == ["run", "sde"] and "seed" not in table.header
    assert table.shared == {"seed": "0"}
    assert [row[1] for row in table.rows] == ["subvp", "vp", "ve"]          # sorted by nll, ascending
    assert table.metrics == ["nll", "kl", "step"]


def test_write_report_writes_csv_markdown_and_png_and_prints(tmp_path, capsys):
    sweep = _fake_sweep(tmp_path / "sweep", ROWS)
    assert report.main([str(sweep), "--metrics", "kl", "nll", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "| run | sde | kl | nll |" in printed and "`seed=0`" in printed
    with open(tmp_path / "out" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["sde"], float(r["kl"])) for r in rows] == [("vp", 0.05), ("subvp", 0.02), ("ve", 0.30)]
    assert (tmp_path / "out" / "report.md").read_text().strip() in printed.strip() + "\n"
    assert (tmp_path / "out" / "report.png").stat().st_size > 1000


def test_sweep_dirs_sort_by_job_number_not_as_text(tmp_path):
    rows = [([f"seed={i}"], {"nll": float(i)}) for i in range(12)]
    runs = report.collect_runs(_fake_sweep(tmp_path, rows))
    assert [r["run"] for r in runs] == [str(i) for i in range(12)]


def test_errors_name_the_problem(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err
    assert report.main([str(tmp_path)]) == 1
    assert "no metrics.json" in capsys.readouterr().err
    _fake_sweep(tmp_path / "s", ROWS)
    with pytest.raises(ValueError, match="fid"):
        report.write_report(tmp_path / "s", metrics=["fid"])


def test_the_plot_fits_its_axis_so_a_0009_nat_difference_fills_the_panel_and_states_the_range(tmp_path):
    rows = [(["sde=vp"], {"nll": 2.1201, "nll_se": 0.0008, "mode_w2": 0.0316, "mode_w2_floor": 0.0201}),
            (["sde=subvp"], {"nll": 2.1291, "nll_se": 0.0008, "mode_w2": 0.0290, "mode_w2_floor": 0.0201}),
            (["sde=ve"], {"nll": 2.1250, "nll_se": 0.0008, "mode_w2": 0.0450, "mode_w2_floor": 0.0201})]
    runs = report.collect_runs(_fake_sweep(tmp_path, rows))
    table = report.report_table(runs, ["nll", "mode_w2"])
    fig = report.report_figure(runs, table, table.metrics)
    nll_ax, w2_ax = fig.axes
    lo, hi = nll_ax.get_ylim()
    assert lo > 2.1 and (2.1291 - 2.1201) / (hi - lo) > 0.5          # the difference spans most of the panel
    assert "not from 0" in nll_ax.get_title() and "spread 0.009" in nll_ax.get_title()
    # the floor is drawn beside the distance and inside the axis
    lo, hi = w2_ax.get_ylim()
    assert lo < 0.0201 < 0.0450 < hi and "floor (exact samples)" in [t.get_text() for t in w2_ax.get_legend().texts]
    fig.savefig(tmp_path / "report.png")


def test_the_plot_takes_undefined_values_errors_and_floors(tmp_path):
    """A sweep's metrics can hold NaN or infinity (a W2 over too few samples, an undefined standard
    error): the axis is fitted to the finite values, and the figure is drawn (the report exited with
    'Axis limits cannot be NaN or Inf' before)."""
    inf, nan = float("inf"), float("nan")
    rows = [(["sde=vp"], {"nll": 2.12, "nll_se": nan, "mode_w2": inf, "mode_w2_floor": 0.02}),
            (["sde=ve"], {"nll": 2.13, "nll_se": 0.001, "mode_w2": 0.04, "mode_w2_floor": inf})]
    runs = report.collect_runs(_fake_sweep(tmp_path, rows))
    table = report.report_table(runs, ["nll", "mode_w2"])
    fig = report.report_figure(runs, table, table.metrics)
    nll_ax, w2_ax = fig.axes
    assert 2.1 < nll_ax.get_ylim()[0] < 2.12 and 2.13 < nll_ax.get_ylim()[1] < 2.15
    lo, hi = w2_ax.get_ylim()
    assert lo < 0.02 < 0.04 < hi and hi < 1
    fig.savefig(tmp_path / "report.png")
