"""Time the test suite against an older commit, in one sitting, and print the ratio.

A suite's speed only means something next to a reference measured on the same machine at the
same time, so this runs both: the reference commit's suite as it ran then (checked out into a
temporary git worktree, imported through PYTHONPATH ahead of the editable install, also by the
tests' child processes), then this
working tree's suite as ``make test`` runs it (pytest-xdist workers) and, for comparison, in
one process. Nothing else should run meanwhile.

    python bench/suite_time.py --base 290a677          # before issue 15
    python bench/suite_time.py --base 290a677 --skip-serial

Prints each run's wall time, pytest's own "in N s" and its pass/fail counts, then the ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=*\s*(?P<counts>.*?) in (?P<seconds>[0-9.]+)s", re.MULTILINE)


@dataclass(frozen=True)
class SuiteRun:
    label: str
    wall_s: float
    pytest_s: float
    counts: str
    returncode: int


def run_suite(label: str, tree: Path, pytest_args: list[str]) -> SuiteRun:
    """pytest over ``tree``'s tests with ``tree``'s sources first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    print(f"[{label}] {' '.join(command[1:])}  (in {tree})", flush=True)
    began = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    matches = list(SUMMARY.finditer(done.stdout))
    if not matches:
        sys.stdout.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"[{label}] no pytest summary line (exit {done.returncode})")
    last = matches[-1]
    for line in done.stdout.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            print(f"[{label}] {line}", flush=True)
    run = SuiteRun(label, wall, float(last["seconds"]), last["counts"], done.returncode)
    print(f"[{label}] {run.counts} in {run.pytest_s:.1f} s (wall {run.wall_s:.1f} s)",
          flush=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="reference commit (e.g. 290a677)")
    parser.add_argument("--workers", type=int, default=2,
                        help="pytest-xdist workers for this tree's run, as `make test` [2]")
    parser.add_argument("--skip-serial", action="store_true",
                        help="skip this tree's one-process run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="refground-suite-base-") as scratch:
        base_tree = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base_tree), args.base],
                       cwd=REPO, check=True)
        # Some tests start Python children with PYTHONPATH set to the repository root (not
        # src/): without this link those children would import the editable install, i.e.
        # this tree's code, and a reference test could fail on a mix of the two versions.
        (base_tree / "refground").symlink_to(base_tree / "src" / "refground",
                                            target_is_directory=True)
        try:
            runs = [run_suite(f"base {args.base}", base_tree, [])]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO,
                           check=False)
    runs.append(run_suite(f"now, {args.workers} workers", REPO,
                          ["-n", str(args.workers), "--dist", "loadscope"]))
    if not args.skip_serial:
        runs.append(run_suite("now, one process", REPO, []))

    base = runs[0]
    print(f"\n{'run':<28}{'pytest s':>10}{'wall s':>10}{'ratio':>8}  result")
    for run in runs:
        print(f"{run.label:<28}{run.pytest_s:>10.1f}{run.wall_s:>10.1f}"
              f"{run.pytest_s / base.pytest_s:>8.2f}  {run.counts}"
              + ("" if run.returncode == 0 else f" (exit {run.returncode})"))


if __name__ == "__main__":
    main()
