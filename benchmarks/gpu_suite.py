"""Every benchmark of docs/benchmarks.md on one device in one run: one JSON, one Markdown table, non-zero on failure.

    python benchmarks/gpu_suite.py [--device cuda] [--out gpu_suite_out] [--only NAME ...]
        [--budget NAME=SECONDS ...] [--tiny] [--in-process] [--inject-failure NAME]

Runs each benchmark script of docs/benchmarks.md through its own command line (so the scripts' own changes flow
in), with ``--device`` and ``--json`` added, at sizes chosen so that the whole suite takes under 8 minutes on one
H100 (``BENCHES``: per-benchmark sizes and budgets; random weights, no downloads). Each benchmark runs in its own
process under a timeout (its budget; ``--budget NAME=S`` overrides it), and the suite stops starting benchmarks
once ``--total-budget`` (480 s) is spent. Writes ``OUT/gpu_suite.json`` (the machine, every benchmark's command,
status, wall time, peak memory, its own result rows and the equivalence checks) and ``OUT/gpu_suite.md`` (the
machine line and one table), and the benchmarks' output under ``OUT/logs/``.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the whole benchmark process (the resets the
benchmarks make for their own per-step peaks are folded in), next to the per-step peaks the benchmarks report;
on CPU, the process's peak resident memory (``ru_maxrss``; subprocess mode only).

Equivalence checks (fp32; TF32 is turned off for the benchmark processes with ``NVIDIA_TF32_OVERRIDE=0`` so that
cuBLAS / cuDNN round as fp32):

* bench_training_step.py: every row's ``loss_diff`` (published vs vlprompt first-step loss) <= 1e-4, checked here
  on its JSON rows (losses are 1-7; measured <= 1.4e-6 on CPU);
* bench_deep_prompts.py: ``--check 1e-4`` (the benchmark exits non-zero), and the same check here on its rows;
* bench_tpt_step.py: ``--check`` (the benchmark exits non-zero unless the initial contexts are equal, at most 0.1%
  of the tuned context coordinates differ by more than 1e-3 of the step's move, and the top-1 agrees).

The other benchmarks compare no two paths (timings only). The exit status is 1 if an equivalence check failed,
3 if a benchmark crashed, timed out or was not started (the total budget spent), else 0. ``--inject-failure NAME``
sets NAME's tolerances to -1, so that its check must fail (the suite's test).

``--tiny``: tiny sizes (the test towers, a few classes) for the CPU path; ``--in-process`` runs the benchmarks in
this process (no interpreter start per benchmark; timeouts by ``SIGALRM``), as the test suite does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import runpy
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOTAL_BUDGET_S = 480.0  # 8 minutes on one H100
FAIL_TOL = -1.0  # an injected failure: every |diff| >= 0 exceeds it


@dataclass(frozen=True)
class Check:
    """An equivalence check on the benchmark's JSON rows: ``row[key] <= tol`` for every row that has ``key``."""

    key: str
    tol: float
    what: str


@dataclass(frozen=True)
class Bench:
    """One benchmark command of docs/benchmarks.md at GPU and at tiny sizes.

    ``check_args`` / ``fail_args``: the options that turn on the benchmark's own equivalence check, and the same
    with a tolerance it must fail (``--inject-failure``); ``marker``: the text its failing check prints.
    """

    name: str
    section: str
    script: str
    args: tuple[str, ...]
    budget_s: float
    tiny: tuple[str, ...]
    checks: tuple[Check, ...] = ()
    check_args: tuple[str, ...] = ()
    fail_args: tuple[str, ...] = ()
    marker: str = ""
    tiny_budget_s: float = 120.0


LOSS = Check("loss_diff", 1e-4, "|first-step loss, reference - vlprompt| (fp32)")
_TS = "Training step: vlprompt vs the published CoOp / CoCoOp step"
_VIT, _RN = ("--model", "ViT-B-16-quickgelu"), ("--model", "RN50-quickgelu")
_TINY_VIT, _TINY_RN = ("--model", "vlprompt-test-vit"), ("--model", "vlprompt-test-rn")

#: The benchmarks, in docs/benchmarks.md's order, with their sizes and budgets on one H100 (the budgets add up to
#: 454 s; the expected times are below them: a process start, a random-init model and steps of a few seconds).
BENCHES: tuple[Bench, ...] = (
    Bench("training_step_coop_vit", _TS, "bench_training_step.py",
          (*_VIT, "--methods", "coop", "--classes", "50", "1000", "--rounds", "3", "--ours-per-round", "3"), 45,
          (*_TINY_VIT, "--methods", "coop", "--classes", "5", "--rounds", "1", "--ours-per-round", "1", "--batch", "4"),
          checks=(LOSS,)),
    Bench("training_step_coop_rn50", _TS, "bench_training_step.py",
          (*_RN, "--methods", "coop", "--classes", "50", "1000", "--rounds", "3", "--ours-per-round", "3"), 45,
          (*_TINY_RN, "--methods", "coop", "--classes", "5", "--rounds", "1", "--ours-per-round", "1", "--batch", "4"),
          checks=(LOSS,)),
    Bench("training_step_cocoop", _TS, "bench_training_step.py",
          (*_VIT, "--methods", "cocoop", "--classes", "50", "--cocoop-batch", "4", "--rounds", "3"), 30,
          (*_TINY_VIT, "--methods", "cocoop", "--classes", "5", "--cocoop-batch", "2", "--rounds", "1",
           "--ours-per-round", "1"),
          checks=(LOSS,)),
    Bench("training_step_cocoop_1000", _TS, "bench_training_step.py",
          (*_VIT, "--methods", "cocoop", "--classes", "1000", "--cocoop-batch", "1", "--rounds", "2"), 30,
          (*_TINY_VIT, "--methods", "cocoop", "--classes", "7", "--cocoop-batch", "1", "--rounds", "1",
           "--ours-per-round", "1"),
          checks=(LOSS,)),
    Bench("deep_prompts", "Deep prompts: MaPLe / PromptSRC step vs the plain forward", "bench_deep_prompts.py",
          (*_VIT, "--classes", "50", "--methods", "maple", "promptsrc", "--rounds", "3"), 30,
          (*_TINY_VIT, "--classes", "5", "--methods", "maple", "promptsrc", "--batch", "2", "--rounds", "1"),
          checks=(LOSS,), check_args=("--check", "1e-4"), fail_args=("--check", str(FAIL_TOL)),
          marker="equivalence check failed"),
    Bench("cocoop_memory_fp32", "CoCoOp at 1000 classes: memory", "bench_cocoop_memory.py",
          ("--model", "ViT-B-16", "--classes", "1000", "--batch", "8", "--precision", "fp32"), 22,
          (*_TINY_VIT, "--classes", "10", "--batch", "2", "--precision", "fp32")),
    Bench("cocoop_memory_amp", "CoCoOp at 1000 classes: memory", "bench_cocoop_memory.py",
          ("--model", "ViT-B-16", "--classes", "1000", "--batch", "8", "--precision", "amp"), 22,
          (*_TINY_VIT, "--classes", "10", "--batch", "2", "--precision", "amp")),
    Bench("tpt", "TPT: the per-image step (test-time prompt tuning, issue 27)", "bench_tpt_step.py",
          (*_VIT, "--classes", "200", "1000", "--views", "64", "--rounds", "2", "--ours-per-round", "2"), 45,
          (*_TINY_VIT, "--classes", "5", "10", "20", "--authors-max", "10", "--views", "10", "--rounds", "1",
           "--ours-per-round", "1"),
          check_args=("--check",), fail_args=("--check", "--atol", str(FAIL_TOL)), marker="not the same step"),
    Bench("tda", "Online caches: TDA's and BoostAdapter's cost per image (issue 28)", "bench_tda_overhead.py",
          ("--model", "ViT-B-16", "--classes", "1000", "--images", "1000", "--views", "64", "--batch", "8",
           "--rounds", "3"), 30,
          (*_TINY_VIT, "--classes", "20", "--images", "10", "--views", "10", "--batch", "2", "--rounds", "1",
           "--chunk", "5")),
    Bench("neglabel", "NegLabel: OOD evaluation vs zero-shot evaluation, and mining the negatives (issue 29)",
          "bench_neglabel_ood.py", ("--model", "ViT-B-16", "--batch", "16", "--rounds", "5", "--words", "4000"), 30,
          (*_TINY_VIT, "--classes", "10", "--negatives", "200", "--batch", "2", "--rounds", "1", "--words", "20")),
    Bench("fit_training_free", "Training-free few-shot classifiers: fitting on cached features (issue 28)",
          "bench_fit_training_free.py",
          ("--classes", "1000", "--shots", "16", "--dim", "512", "--views", "10", "--val-per-class", "4"), 30,
          ("--classes", "5", "--shots", "2", "--dim", "16", "--views", "2", "--val-per-class", "2",
           "--tip-betas", "1")),
    Bench("zeroshot", "Zero-shot evaluation throughput", "bench_zeroshot.py",
          ("--model", "ViT-B-16", "--images", "96", "--batch", "32"), 25,
          (*_TINY_VIT, "--images", "12", "--batch", "12", "--workers", "0")),
    Bench("augment_views", "K cached augmented views (opt-in approximation)", "augment_views_world.py",
          ("--datasets", "world_shapes", "--seeds", "1", "--views", "4,8", "--epochs", "50"), 35,
          ("--datasets", "world_shapes", "--seeds", "1", "--views", "2", "--epochs", "1")),
    Bench("tower_kinds", "One line per text-tower kind", "bench_tower_kinds.py",
          ("--classes", "20", "--cocoop-classes", "5", "--repeats", "1"), 35,
          ("--models", "vlprompt-test-vit", "--classes", "5", "--cocoop-classes", "3", "--repeats", "1")),
)

#: Sections of docs/benchmarks.md with no benchmark script to run on one device (listed in the outputs).
NOT_RUN = {"Multi-process training": "torchrun across N processes: needs 2+ devices (one GPU here); nothing measured"}


# ----------------------------------------------------------------------------------------------- the child side


class _PeakMemory:
    """The CUDA peak over the whole process: ``torch.cuda.reset_peak_memory_stats`` is wrapped so that the peak
    reached before each reset a benchmark makes (for its own per-step peaks) is kept."""

    def __init__(self) -> None:
        import torch

        self.torch, self.peak = torch, 0
        self.original = torch.cuda.reset_peak_memory_stats
        torch.cuda.reset_peak_memory_stats = self._reset  # type: ignore[assignment]
        if self._active():
            self.original()

    def _active(self) -> bool:
        return bool(self.torch.cuda.is_available() and self.torch.cuda.is_initialized())

    def _current(self) -> int:
        return int(self.torch.cuda.max_memory_allocated()) if self._active() else 0

    def _reset(self, *args: Any, **kwargs: Any) -> None:
        self.peak = max(self.peak, self._current())
        self.original(*args, **kwargs)

    def close(self) -> float | None:
        """Restore the wrapped function; the peak in GiB, None if CUDA was not used."""
        self.torch.cuda.reset_peak_memory_stats = self.original  # type: ignore[assignment]
        used = self._active()
        self.peak = max(self.peak, self._current())
        return self.peak / 2**30 if used else None


def run_script(script: Path, argv: Sequence[str]) -> int:
    """Run ``script`` as ``__main__`` with ``argv``; its exit status (a ``SystemExit`` message goes to stderr)."""
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(exc.code, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.path[:] = old_argv, old_path


def child_main(script: str, peak_file: str, argv: Sequence[str]) -> int:
    """The benchmark process: run the script, then write its peak memory to ``peak_file``."""
    peak = _PeakMemory()
    code = 1
    try:
        code = run_script(Path(script), argv)
    except Exception:
        traceback.print_exc()
    finally:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        Path(peak_file).write_text(json.dumps({"cuda_peak_gib": peak.close(), "max_rss_gib": rss}))
    return code


# ---------------------------------------------------------------------------------------------- the suite side


class BenchTimeout(BaseException):
    """Raised by ``SIGALRM`` in ``--in-process`` mode (a BaseException: the benchmarks' ``except Exception`` must
    not swallow it)."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise BenchTimeout

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _run_subprocess(script: Path, argv: list[str], budget: float, log: Path, peak_file: Path
                    ) -> tuple[int | None, dict[str, Any]]:
    """One benchmark in its own process group, killed at ``budget`` s; (exit status or None on timeout, peaks)."""
    env = dict(os.environ, NVIDIA_TF32_OVERRIDE="0", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", str(script), str(peak_file), *argv]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the benchmark and its data-loader workers
            proc.wait()
            code = None
    peaks = json.loads(peak_file.read_text()) if peak_file.is_file() else {}
    return code, peaks


def _run_in_process(script: Path, argv: list[str], budget: float, log: Path) -> tuple[int | None, dict[str, Any]]:
    """One benchmark in this process (``--in-process``), stopped by ``SIGALRM`` at ``budget`` s."""
    buf = io.StringIO()
    code: int | None = 1
    peak = _PeakMemory()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), _alarm(budget):
            code = run_script(script, argv)
    except BenchTimeout:
        code = None
    except Exception:
        buf.write(traceback.format_exc())
    finally:
        cuda_peak = peak.close()
    log.write_text(buf.getvalue())
    return code, {"cuda_peak_gib": cuda_peak}


def _tail(log: Path, n: int = 3) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    return " | ".join(lines[-n:])


def run_bench(bench: Bench, args: argparse.Namespace, out: Path, raw: Path, budget: float) -> dict[str, Any]:
    """Run one benchmark; its result record (status, times, peaks, rows, checks)."""
    inject = bench.name in args.inject_failure
    script = HERE / bench.script
    json_path = raw / f"{bench.name}.json"
    argv = [*(bench.tiny if args.tiny else bench.args), *(bench.fail_args if inject else bench.check_args),
            "--device", args.device, "--json", str(json_path)]
    log = out / "logs" / f"{bench.name}.log"
    record: dict[str, Any] = {
        "name": bench.name, "section": bench.section, "budget_s": budget,
        "command": shlex.join(["python", f"benchmarks/{bench.script}", *argv[:-1], f"{bench.name}.json"]),
        "injected_failure": inject}
    print(f"[{bench.name}] {record['command']}  (budget {budget:g} s)", flush=True)
    t0 = time.perf_counter()
    if args.in_process:
        code, peaks = _run_in_process(script, argv, budget, log)
    else:
        code, peaks = _run_subprocess(script, argv, budget, log, raw / f"{bench.name}.peak.json")
    record["wall_s"] = time.perf_counter() - t0
    record.update(rc=code, peak_cuda_gib=peaks.get("cuda_peak_gib"), peak_rss_gib=peaks.get("max_rss_gib"),
                  log=str(log.relative_to(out)))
    rows: list[dict[str, Any]] = json.loads(json_path.read_text()) if json_path.is_file() else []
    record["rows"] = rows
    checks = []
    for check in bench.checks:
        tol = FAIL_TOL if inject else check.tol
        for i, row in enumerate(rows):
            if check.key in row:
                value = float(row[check.key])
                checks.append({"key": check.key, "what": check.what, "row": i, "value": value, "tol": tol,
                               "ok": value <= tol})
    record["checks"] = checks
    if code is None:
        status, detail = "timeout", f"killed after its budget of {budget:g} s"
    elif code != 0:
        tail = _tail(log)
        status = "check failed" if bench.marker and bench.marker in tail else "failed"
        detail = f"exit {code}: {tail}"
    elif not all(c["ok"] for c in checks):
        status = "check failed"
        detail = "; ".join(f"row {c['row']}: {c['key']} {c['value']:.2e} > {c['tol']:g}" for c in checks if not c["ok"])
    elif bench.checks and not checks:
        status, detail = "check failed", f"no row carries {', '.join(c.key for c in bench.checks)}"
    else:
        status, detail = "ok", ""
    record.update(status=status, detail=detail)
    print(f"[{bench.name}] {status} in {record['wall_s']:.1f} s{': ' + detail if detail else ''}", flush=True)
    return record


def machine(device: str) -> dict[str, Any]:
    """GPU name, driver, CUDA, torch / open_clip versions, CPU count, for the outputs' machine line."""
    import torch

    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                            "python": platform.python_version()}
    with contextlib.suppress(Exception):
        import open_clip

        info["open_clip"] = open_clip.__version__
    if device.startswith("cuda"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True)
            name, driver, memory = (x.strip() for x in smi.stdout.splitlines()[0].split(","))
            info.update(gpu=name, driver=driver, gpu_memory=memory)
        except Exception:
            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                info.update(gpu=props.name, driver="unknown", gpu_memory=f"{props.total_memory / 2**30:.0f} GiB")
    return info


def machine_text(m: dict[str, Any]) -> str:
    gpu = (f"{m.get('gpu', '?')} ({m.get('gpu_memory', '?')}), driver {m.get('driver', '?')}, CUDA {m['cuda']}"
           if "gpu" in m else f"device {m['device']} (no GPU)")
    return (f"{gpu}; torch {m['torch']}, open_clip {m.get('open_clip', '?')}, Python {m['python']}; "
            f"{m['cpu_count']} CPUs ({m['cpu']})")


# ------------------------------------------------------------------------------------------------- the outputs


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _row_cells(row: dict[str, Any]) -> tuple[str, str, str, str]:
    """(label, times, ratio (bound), peaks) of one result row of any benchmark (generic over their keys)."""
    label = row.get("step") or row.get("name") or " ".join(str(row[k]) for k in ("method", "stage") if k in row)
    if row.get("authors_extrapolated") or row.get("extrapolated"):
        label = f"{label} (partly extrapolated, see the benchmark)"
    times = []
    for k, v in row.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if k == "images_per_s":
            times.append(f"{v:.4g} images/s")
        elif k.endswith("_s") or k == "seconds":
            times.append(f"{k.removesuffix('_s')} {v:.4g} s")
        elif k.endswith("seconds_per_image"):
            what = k.removesuffix("seconds_per_image").rstrip("_").replace("_", " ")
            times.append(f"{what + ' ' if what else ''}{v * 1e3:.4g} ms/image")
    ratios = []
    if isinstance(row.get("ratio"), (int, float)):
        rng = (f" ({row['ratio_min']:.1f}-{row['ratio_max']:.1f})" if "ratio_min" in row and "ratio_max" in row
               else "")
        ratios.append(f"**{row['ratio']:.3g}x**{rng}")
    ratios += [f"{k.removesuffix('_ratio')} {v:.3g}x" for k, v in row.items()
               if k.endswith("_ratio") and isinstance(v, (int, float))]
    ratios += [f"{k.replace('_', ' ')} {100 * v:.3g}%" for k, v in row.items()
               if "fraction" in k and isinstance(v, (int, float))]
    bounds = [f"{v:.3g}x" for k, v in row.items() if k in ("macs_bound", "bound") or k.endswith("_bound")
              if isinstance(v, (int, float))]
    ratio = ", ".join(ratios) + (f" (bound {', '.join(bounds)})" if bounds else "")
    peaks = ", ".join(f"{k.removesuffix('_gib')} {v:.3g} GiB" for k, v in row.items()
                      if k.endswith("peak_gib") or k.endswith("peak_rss_gib") if isinstance(v, (int, float)))
    return str(label), "; ".join(times), ratio, peaks


def markdown(result: dict[str, Any]) -> str:
    """The machine line and one table: per benchmark, a first line with its status, wall time / budget and process
    peak, then its result rows (absolute times, ratio and bound, per-step peaks, checks)."""
    head = ["benchmark", "status", "wall / budget (s)", "process peak", "row", "times", "ratio (bound)",
            "step peaks", "check"]
    lines = [f"# GPU suite: {result['device']}{' (tiny sizes)' if result['tiny'] else ''}", "",
             f"**Machine**: {machine_text(result['machine'])}. Total wall {result['wall_s']:.1f} s "
             f"(budget {result['total_budget_s']:.0f} s); exit status {result['exit_code']}.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    esc = str.maketrans({"|": "\\|", "\n": " "})
    for b in result["benchmarks"]:
        peak = (f"{b['peak_cuda_gib']:.2f} GiB (CUDA)" if b.get("peak_cuda_gib") is not None
                else f"{b['peak_rss_gib']:.2f} GiB (RSS)" if b.get("peak_rss_gib") is not None else "-")
        first = [b["name"], f"**{b['status']}**", f"{b.get('wall_s', 0):.1f} / {b['budget_s']:g}", peak]
        rows = b.get("rows") or []
        if not rows:
            lines.append("| " + " | ".join(c.translate(esc) for c in [*first, b.get("detail") or "-", "", "", "", ""])
                         + " |")
        for i, row in enumerate(rows):
            checks = [c for c in b.get("checks", []) if c["row"] == i]
            check = ", ".join(f"{c['key']} {c['value']:.1e} {'<=' if c['ok'] else '>'} {c['tol']:g}"
                              for c in checks) or ("-" if i else (b.get("detail") or "-"))
            cells = [*(first if i == 0 else [""] * 4), *_row_cells(row), check]
            lines.append("| " + " | ".join(c.translate(esc) for c in cells) + " |")
    for section, why in result["not_run"].items():
        lines.append(f"| {section} | not run | - | - | {why} |  |  |  |  |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the device every benchmark runs on (default cuda)")
    ap.add_argument("--out", type=Path, default=Path("gpu_suite_out"), help="folder of gpu_suite.json / .md / logs")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these benchmarks")
    ap.add_argument("--budget", action="append", default=[], metavar="NAME=SECONDS",
                    help="override one benchmark's timeout (repeatable)")
    ap.add_argument("--total-budget", type=float, default=TOTAL_BUDGET_S,
                    help="stop starting benchmarks once this many seconds are spent (default 480: 8 minutes)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (test towers, a few classes): the CPU path")
    ap.add_argument("--in-process", action="store_true",
                    help="run the benchmarks in this process (no interpreter start each; timeouts by SIGALRM)")
    ap.add_argument("--inject-failure", action="append", default=[], metavar="NAME",
                    help="run NAME with its equivalence tolerances at -1, so that its check fails (tests; "
                         "repeatable)")
    args = ap.parse_args(argv)
    names = [b.name for b in BENCHES]
    for name in [*(args.only or []), *args.inject_failure]:
        if name not in names:
            ap.exit(2, f"error: unknown benchmark '{name}' (one of: {', '.join(names)})\n")
    for bench in BENCHES:
        if bench.name in args.inject_failure and not (bench.checks or bench.check_args):
            ap.exit(2, f"error: --inject-failure: '{bench.name}' has no equivalence check\n")
    budgets: dict[str, float] = {}
    for item in args.budget:
        name, _, value = item.partition("=")
        try:
            budgets[name] = float(value)
        except ValueError:
            ap.exit(2, f"error: --budget: expected NAME=SECONDS, got '{item}'\n")
        if name not in names:
            ap.exit(2, f"error: --budget: unknown benchmark '{name}'\n")
    args.budgets = budgets
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.exit(2, f"error: --device {args.device}: no CUDA device on this machine (--device cpu --tiny runs "
                       "the CPU path)\n")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; the exit status (0 ok, 1 an equivalence check failed, 3 a crash / timeout / not started)."""
    args = parse_args(argv)
    out: Path = args.out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    info = machine(args.device)
    print(f"gpu_suite on {machine_text(info)}", flush=True)
    records = []
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        for bench in BENCHES:
            if args.only and bench.name not in args.only:
                continue
            budget = args.budgets.get(bench.name, bench.tiny_budget_s if args.tiny else bench.budget_s)
            left = args.total_budget - (time.perf_counter() - t_start)
            if left <= 1.0:
                records.append({"name": bench.name, "section": bench.section, "budget_s": budget, "wall_s": 0.0,
                                "status": "not started", "rc": None, "rows": [], "checks": [],
                                "detail": f"the suite's total budget of {args.total_budget:.0f} s was spent"})
                continue
            records.append(run_bench(bench, args, out, Path(tmp), min(budget, left)))
    check_failed = any(r["status"] == "check failed" for r in records)
    other_failed = any(r["status"] not in ("ok", "check failed") for r in records)
    code = 1 if check_failed else 3 if other_failed else 0
    result = {"device": args.device, "tiny": args.tiny, "in_process": args.in_process, "machine": info,
              "total_budget_s": args.total_budget, "wall_s": time.perf_counter() - t_start, "exit_code": code,
              "failed": [r["name"] for r in records if r["status"] != "ok"], "benchmarks": records,
              "not_run": NOT_RUN}
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_suite.md").write_text(markdown(result))
    print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'}; {len(records)} benchmarks, failed: "
          f"{', '.join(result['failed']) or 'none'}; {result['wall_s']:.1f} s; exit {code}", flush=True)
    return code


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        sys.exit(child_main(sys.argv[2], sys.argv[3], sys.argv[4:]))
    sys.exit(main())
