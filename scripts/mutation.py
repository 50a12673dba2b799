"""Mutation testing of the core modules with mutmut 3 (`make mutation`), and the killed/total table.

    python scripts/mutation.py                  # fresh run: every chunk, then the table
    python scripts/mutation.py --report         # the table of the last run only
    python scripts/mutation.py --chunk prune    # re-run one chunk, keeping the other results

mutmut (configured in pyproject.toml, [tool.mutmut]) copies compress/ to mutants/, writes every
mutant of the core files into that copy, records once which tests call which function, then runs,
per mutant, only the selected tests that reach the mutated function (pytest -x, in a process forked
from one that has already imported torch, so a mutant costs its tests' time, not an interpreter).

The core is the functions below (SCOPE): whole modules where the module is core logic, the named
functions where it also holds plumbing (export: the verification and its gate, not the exporter's
I/O; runtime: the statistics, interleaved timing and input-size rules, not the ONNX Runtime
session code; bench: the ratios and the accuracy/agreement of variants, not loading or printing).
The run is split into chunks, each holding /tmp/heavy.lock (MUTATION_LOCK; empty for none) so work
of others on a shared machine interleaves; OMP_NUM_THREADS=1 keeps torch fork-safe and on one core.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
SEP = "ǁ"  # mutmut's separator in method mutants: compress.runtime.xǁLatencyStatsǁfrom_seconds__mutmut_3

# module -> function globs (mutmut names functions x_<name>, methods xǁ<Class>ǁ<name>)
SCOPE: dict[str, list[str]] = {
    "compress/metrics.py": ["*"],
    "compress/export.py": ["x__max_abs_diff", "x_verify_onnx", "x_export_onnx"],
    "compress/runtime.py": [f"x{SEP}LatencyStats{SEP}*", "x_measure_interleaved", "x_resolve_input_size",
                            "x__fixed", "x_square_size"],
    "compress/bench/api.py": ["x__timing_rows", "x__static_rows"],
    "compress/bench/accuracy.py": ["x_accuracy", "x_agreement", "x_decisions", "x_predict_all", "x_data_metrics"],
    "compress/prune/structured.py": ["*"],
    "compress/prune/unstructured.py": ["*"],
    "compress/prune/sensitivity.py": ["*"],
    "compress/prune/search.py": ["*"],
    "compress/io.py": ["*"],
    "compress/artifact.py": ["*"],
    "compress/meta.py": ["*"],
    "compress/distill/losses.py": ["*"],
    "compress/distill/hints.py": ["*"],
    # quantization's arithmetic (issue 12): k-means sharing and its zero mask, ONNX Runtime's INT8
    # rounding as QAT simulates it, bias correction's weight error and output shift, and the
    # search's agreement/SQNR scores; not the ORT session plumbing or the fine-tuning loops
    "compress/quantize/kmeans.py": ["x_initial_centroids", "x_cluster_values", f"x{SEP}SharedWeight{SEP}*",
                                    "x_share_layer", "x_storage_estimate", f"x{SEP}HoldZeros{SEP}*"],
    "compress/quantize/qat.py": ["x_fake_quantize", "x_weight_scale", "x_quantize_weight", "x_activation_qparams"],
    "compress/quantize/biascorr.py": ["x__tap_sums", "x_weight_error", "x_output_shift"],
    "compress/quantize/int8.py": ["x_structures", "x_decisions", "x_agreement", "x_sqnr_db"],
    # Fashion-MNIST's path (issue 10): the IDX reader (format checks, file lookup, splits, grey
    # resizing and statistics), the rate schedules, weight averaging, batch augmentation, presets
    "compress/data/idx.py": ["*"],
    "compress/training/schedules.py": ["*"],
    "compress/training/swa.py": ["*"],
    "compress/training/augment.py": ["*"],
    "compress/training/presets.py": ["*"],
}
CHUNKS: dict[str, list[str]] = {  # each about 13 minutes of one core at most (quantize: 12.8)
    "metrics": ["compress/metrics.py"],
    "io-artifact-meta": ["compress/io.py", "compress/artifact.py", "compress/meta.py"],
    "export-runtime-bench": ["compress/export.py", "compress/runtime.py", "compress/bench/api.py",
                             "compress/bench/accuracy.py"],
    "prune": ["compress/prune/structured.py", "compress/prune/unstructured.py", "compress/prune/sensitivity.py",
              "compress/prune/search.py"],
    "distill": ["compress/distill/losses.py", "compress/distill/hints.py"],
    "quantize": ["compress/quantize/kmeans.py", "compress/quantize/qat.py", "compress/quantize/biascorr.py",
                 "compress/quantize/int8.py"],
    "data-training": ["compress/data/idx.py", "compress/training/schedules.py", "compress/training/swa.py",
                      "compress/training/augment.py", "compress/training/presets.py"],
}
CAUGHT = {"killed", "timeout"}  # a timeout is a mutant the tests noticed (it hung or looped)


def module_name(path: str) -> str:
    return path[:-3].replace("/", ".")


def patterns(paths: list[str]) -> list[str]:
    return [f"{module_name(p)}.{g}__mutmut_*" for p in paths for g in SCOPE[p]]


def in_scope(path: str, key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in patterns([path]))


@contextlib.contextmanager
def heavy_lock():
    """Hold the shared lock file (flock(1) semantics) for one chunk."""
    name = os.environ.get("MUTATION_LOCK", "/tmp/heavy.lock")
    if not name:
        yield
        return
    with open(name, "a") as f:
        started = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.monotonic() - started
        if waited > 1:
            print(f"  (waited {waited:.0f} s for {name})", flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def limit_memory() -> None:
    """A mutant can turn a bounded loop into an endless one that appends forever; cap the heap of
    mutmut and its workers (MUTATION_MEM_MB, default 4096) so it fails instead of eating the RAM
    of a shared machine."""
    mb = int(os.environ.get("MUTATION_MEM_MB", "4096"))
    if mb > 0:
        resource.setrlimit(resource.RLIMIT_DATA, (mb << 20, mb << 20))


def run_chunk(name: str, mutmut: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    cmd = [mutmut, "run", "--max-children", "1", *patterns(CHUNKS[name])]
    log = MUTANTS / f"run-{name}.log"
    with heavy_lock():
        start = time.monotonic()
        MUTANTS.mkdir(exist_ok=True)
        with open(log, "w") as out:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  preexec_fn=limit_memory)
        seconds = time.monotonic() - start
    tail = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-1:]
    print(f"  {name}: {seconds:.0f} s wall ({' '.join(tail)})", flush=True)
    if proc.returncode != 0:
        sys.exit(f"mutmut failed on chunk {name} (exit {proc.returncode}); see {log}")
    return seconds


def results() -> dict[str, dict[str, str]]:
    """{module path: {mutant: status}} for the mutants in SCOPE."""
    from mutmut.stats import status_by_exit_code

    out: dict[str, dict[str, str]] = {}
    for path in SCOPE:
        meta = MUTANTS / (path + ".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        out[path] = {k: status_by_exit_code[v] for k, v in codes.items() if in_scope(path, k)}
    return out


def report(fail_under: float, wall: float | None) -> int:
    res = results()
    rows, total_caught, total_n, survivors = [], 0, 0, []
    for path, statuses in res.items():
        counts: dict[str, int] = {}
        for key, status in sorted(statuses.items()):
            counts[status] = counts.get(status, 0) + 1
            if status not in CAUGHT:
                survivors.append(f"{status:12s} {key}")
        caught = sum(counts.get(s, 0) for s in CAUGHT)
        n = len(statuses)
        total_caught += caught
        total_n += n
        other = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k not in CAUGHT | {"survived"})
        rows.append((path, caught, n, counts.get("timeout", 0), counts.get("survived", 0), other))
    print(f"\n{'module':32s} {'killed/total':>13s} {'score':>7s}  (timeouts among killed; survived; other)")
    for path, caught, n, timeouts, survived, other in rows:
        score = f"{100 * caught / n:6.1f}%" if n else "     -"
        print(f"{path:32s} {caught:>6d}/{n:<6d} {score}  ({timeouts}; {survived}{'; ' + other if other else ''})")
    overall = 100 * total_caught / total_n if total_n else 0.0
    print(f"{'overall':32s} {total_caught:>6d}/{total_n:<6d} {overall:6.1f}%"
          + (f"   wall time {wall / 60:.1f} min" if wall is not None else ""))
    (MUTANTS / "survivors.txt").write_text("\n".join(survivors) + "\n")
    print(f"survivors (and any not run): {MUTANTS / 'survivors.txt'}; show one with .venv/bin/mutmut show NAME")
    if any(s.startswith("not checked") for s in survivors):
        print("some mutants in scope were not run: run every chunk (or the whole script) again")
        return 1
    if overall < fail_under:
        print(f"mutation score {overall:.1f}% is below {fail_under:g}%")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", action="append", choices=list(CHUNKS), help="run only these chunks, keep the rest")
    ap.add_argument("--report", action="store_true", help="only print the table of the last run")
    ap.add_argument("--fail-under", type=float, default=80.0, help="exit 1 below this score (default 80)")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    wall = None
    if not args.report:
        mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
        if not args.chunk:
            shutil.rmtree(MUTANTS, ignore_errors=True)  # a fresh run: no verdict carried over from old code
        start = time.monotonic()
        print(f"mutmut over {len(SCOPE)} core modules in {len(args.chunk or CHUNKS)} chunk(s), one core:", flush=True)
        for name in args.chunk or CHUNKS:
            run_chunk(name, mutmut)
        wall = time.monotonic() - start
    return report(args.fail_under, wall)


if __name__ == "__main__":
    sys.exit(main())
