"""Plant known bugs one at a time and check that the tests catch each: the suite's regression guard.

Each bug is a `[[tool.amira.planted_bug]]` table of `pyproject.toml` (beside mutmut's `[tool.mutmut]`):
`name`, `file`, the exact text to `find` (it must occur once), its `replace`ment, and the `tests`
(pytest arguments) that must fail with it. Every bug is planted in a fresh copy of the working tree,
never in the checkout itself, and its tests run there with pytest-timeout, so a bug that makes the
code loop forever fails its tests instead of hanging the run.

    python -m amira.tooling.planted_bugs               # every bug: a table of caught / missed
    python -m amira.tooling.planted_bugs --only tdt-duration-index --keep
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]
TEST_TIMEOUT_SECS = 120  # per test, inside the copy
RUN_TIMEOUT_SECS = 900  # per bug, the whole pytest run


@attrs.frozen
class PlantedBug:
    name: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    description: str = ""

    def plant(self, tree: Path) -> None:
        path = tree / self.file
        text = path.read_text(encoding="utf-8")
        count = text.count(self.find)
        if count != 1:
            raise ValueError(f"{self.name}: the text to find occurs {count} times in {self.file}, not once")
        path.write_text(text.replace(self.find, self.replace), encoding="utf-8")


@attrs.frozen
class Outcome:
    bug: PlantedBug
    caught: bool
    seconds: float
    summary: str


def load_bugs(pyproject: Path = ROOT / "pyproject.toml") -> list[PlantedBug]:
    tables = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["amira"]["planted_bug"]
    return [PlantedBug(**{**table, "tests": tuple(table["tests"])}) for table in tables]


def copy_tree(destination: Path) -> None:
    """The working tree as git sees it (tracked and untracked files that are not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            target = destination / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(tree: Path, tests: Sequence[str]) -> tuple[int, str]:
    """pytest in `tree`, in its own process group (killed whole on the run's timeout)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += [f"--timeout={TEST_TIMEOUT_SECS}", *tests]
    env = os.environ | {"PYTHONPATH": str(tree)}
    process = subprocess.Popen(
        command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_SECS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return -1, f"no result within {RUN_TIMEOUT_SECS} s"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = output.decode(errors="replace").strip().splitlines()
    return process.returncode, lines[-1] if lines else ""


def check(bug: PlantedBug, keep: bool = False) -> Outcome:
    """Plant `bug` in a copy of the tree and run its tests: caught when they fail (not when pytest
    could not even collect them, which would say nothing about the bug)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"amira-planted-{bug.name}-"))
    try:
        copy_tree(scratch)
        bug.plant(scratch)
        began = time.monotonic()
        code, summary = run_tests(scratch, bug.tests)
        return Outcome(bug, code == 1, time.monotonic() - began, summary)
    finally:
        if keep:
            print(f"kept the tree with {bug.name} planted: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", default=[], help="plant only this bug (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the planted copies for inspection")
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    args = parser.parse_args(argv)
    bugs = load_bugs()
    if args.list:
        for bug in bugs:
            print(f"{bug.name}: {bug.description}")
        return 0
    unknown = set(args.only) - {bug.name for bug in bugs}
    if unknown:
        parser.error(f"unknown bugs: {', '.join(sorted(unknown))}")
    selected = [bug for bug in bugs if not args.only or bug.name in args.only]
    print("| planted bug | caught | seconds | pytest |\n|---|---|---|---|", flush=True)
    missed = 0
    for bug in selected:
        outcome = check(bug, args.keep)
        missed += not outcome.caught
        verdict = "yes" if outcome.caught else "**NO**"
        print(f"| {bug.name} | {verdict} | {outcome.seconds:.0f} | {outcome.summary} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
