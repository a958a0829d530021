"""benchmarks/gpu_suite.py on its CPU path (``--device cpu --tiny``): the JSON and the Markdown table are written,
a failing equivalence check makes it exit non-zero, a timeout becomes a failure row."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_suite", None)


def _read(out: Path) -> tuple[dict, dict, str]:
    result = json.loads((out / "gpu_suite.json").read_text())
    return result, {b["name"]: b for b in result["benchmarks"]}, (out / "gpu_suite.md").read_text()


def test_injected_check_failures_and_a_timeout_fail_the_run(suite, tmp_path):
    code = suite.main(["--device", "cpu", "--tiny", "--in-process", "--out", str(tmp_path),
                       "--only", "training_step_coop_rn50", "deep_prompts", "tpt",
                       "--inject-failure", "training_step_coop_rn50",  # checked by the suite on the JSON rows
                       "--inject-failure", "deep_prompts",  # checked inside the benchmark (--check -1)
                       "--budget", "tpt=0.001"])
    assert code == 1  # an equivalence check failed
    result, by_name, md = _read(tmp_path)
    assert result["exit_code"] == 1 and set(result["failed"]) == {"training_step_coop_rn50", "deep_prompts", "tpt"}
    coop = by_name["training_step_coop_rn50"]
    assert coop["status"] == "check failed" and coop["rc"] == 0 and coop["rows"]  # it ran; the check failed
    assert coop["checks"] and all(c["tol"] == -1.0 and not c["ok"] for c in coop["checks"])
    assert coop["rows"][0]["published_s"] > 0 and coop["rows"][0]["vlprompt_s"] > 0
    deep = by_name["deep_prompts"]
    assert deep["status"] == "check failed" and deep["rc"] == 1 and "equivalence check failed" in deep["detail"]
    assert by_name["tpt"]["status"] == "timeout" and by_name["tpt"]["rc"] is None
    assert result["machine"]["torch"] and result["machine"]["cpu_count"]
    assert "| training_step_coop_rn50 | **check failed** |" in md and "| tpt | **timeout** |" in md
    assert "Machine" in md and "Multi-process training" in md


def test_subprocess_timeout_is_a_failure_row(suite, tmp_path):
    """The real mode (one process per benchmark): killed at its budget, recorded, exit 3 (no check failed)."""
    code = suite.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--only", "tda", "--budget", "tda=0.2"])
    assert code == 3
    result, by_name, md = _read(tmp_path)
    assert by_name["tda"]["status"] == "timeout" and by_name["tda"]["wall_s"] < 10
    assert "| tda | **timeout** |" in md


def test_bad_input_is_one_error_line(suite, capsys):
    with pytest.raises(SystemExit) as exc:
        suite.main(["--device", "cpu", "--only", "no_such_bench"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown benchmark 'no_such_bench'")


@pytest.mark.slow
def test_every_benchmark_runs_at_tiny_sizes(suite, tmp_path):
    """Every benchmark's command line at tiny sizes, equivalence checks passing: what the GPU run executes."""
    code = suite.main(["--device", "cpu", "--tiny", "--in-process", "--out", str(tmp_path)])
    result, by_name, _ = _read(tmp_path)
    assert code == 0, {n: b["detail"] for n, b in by_name.items() if b["status"] != "ok"}
    assert set(by_name) == {b.name for b in suite.BENCHES}
    assert all(b["rows"] for b in result["benchmarks"])  # each wrote its JSON rows
    checked = [c for b in result["benchmarks"] for c in b["checks"]]
    assert checked and all(c["ok"] and c["tol"] == 1e-4 for c in checked)
