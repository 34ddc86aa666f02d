"""Run the hostile-input property of every decoder with a large budget.

The decoders, their strategies and the property are those of
tests/schemas/decoder_targets.py, which tests/schemas/test_hostile_decoders.py
runs with 300 examples each. Run from the repository root:

    python benchmarks/fuzz.py --minutes 2
    python benchmarks/fuzz.py --examples 100000 --decoder fragment --decoder envelope
    python benchmarks/fuzz.py --minutes 10 --atheris

Hypothesis runs each decoder in rounds, each with its own seed, until the
decoder has run `--examples` examples or used its share of `--minutes`.
Each round's size follows the measured speed of the rounds before it, so a
decoder overruns its share by at most a few seconds. A failure is
reported once per distinct error type and place, with its shrunk example
and the seed that reproduces it. Examples run counts every call of the
property, those made while shrinking a failure included.

`--atheris` also runs each decoder under atheris, a coverage-guided
fuzzer, where it is installed (it is not a dependency of shardbus), for the
same time. Atheris feeds raw bytes to the same `check`, and libFuzzer stops
at the first failure, so it finds at most one failure per decoder.

The exit status is 1 when any decoder failed, else 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_TESTS = REPO_ROOT / "tests" / "schemas"
for _path in (REPO_ROOT, SCHEMA_TESTS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# The project is imported inside functions only: an atheris child process
# must import it under atheris.instrument_imports to collect coverage.

#: Examples in a decoder's first round, before its speed is known.
FIRST_ROUND = 200
#: Bounds of a later round's size.
MIN_ROUND, MAX_ROUND = 50, 20_000
#: The share of a decoder's remaining time a later round is sized to fill.
ROUND_SHARE = 0.5


@dataclass
class Failure:
    """One distinct failure: an error type raised at one place."""

    error: str
    place: str
    example: str
    seed: int


@dataclass
class Outcome:
    """The examples, time and failures of one fuzzer on one decoder."""

    decoder: str
    fuzzer: str
    examples: int = 0
    seconds: float = 0.0
    failures: dict[tuple[str, str], Failure] = field(default_factory=dict)
    note: str = ""


def _leaf_errors(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaf_errors(inner)]
    return [error]


def _relative(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return filename


def _place(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown place"
    return f"{_relative(frames[-1].filename)}:{frames[-1].lineno}"


def _example(error: BaseException) -> str:
    notes = getattr(error, "__notes__", [])
    # Hypothesis adds the shrunk example as a note on the error.
    text = " ".join(" ".join(note.split()) for note in notes if "data=" in note)
    return f"{type(error).__name__}: {str(error)[:200]}" + (f"; {text[:400]}" if text else "")


def run_hypothesis(target, *, examples: int, seconds: float, seed: int) -> Outcome:
    """Run `target`'s property in rounds until `examples` examples or `seconds` seconds are spent."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as seed_of

    outcome = Outcome(target.name, "hypothesis")
    started = time.monotonic()
    round_size = min(FIRST_ROUND, examples)
    round_number = 0
    while outcome.examples < examples and time.monotonic() - started < seconds:
        calls = 0

        def property_of(data: bytes) -> None:
            nonlocal calls
            calls += 1
            target.check(data)

        round_seed = seed + round_number
        test = seed_of(round_seed)(settings(
            max_examples=round_size,
            database=None,
            deadline=None,
            derandomize=False,
            # Normal verbosity adds the shrunk example to the error as a note.
            verbosity=Verbosity.normal,
            report_multiple_bugs=True,
            suppress_health_check=list(HealthCheck),
            # The explain phase would add minutes per failure for one more note.
            phases=[Phase.generate, Phase.target, Phase.shrink],
        )(given(target.hostile)(property_of)))
        round_started = time.monotonic()
        try:
            test()
        except Exception as error:  # noqa: BLE001 - every failure of the property is a finding to report.
            for leaf in _leaf_errors(error):
                key = (type(leaf).__name__, _place(leaf))
                outcome.failures.setdefault(key, Failure(key[0], key[1], _example(leaf), round_seed))
        outcome.examples += calls
        round_number += 1
        per_example = (time.monotonic() - round_started) / max(calls, 1)
        remaining = seconds - (time.monotonic() - started)
        round_size = int(min(MAX_ROUND, max(MIN_ROUND, remaining * ROUND_SHARE / per_example)))
        round_size = min(round_size, examples - outcome.examples)
    outcome.seconds = time.monotonic() - started
    return outcome


def run_atheris(name: str, *, examples: int, seconds: float, crash_folder: Path) -> Outcome:
    """Run one decoder under atheris in a child process, for at most `seconds` seconds."""
    outcome = Outcome(name, "atheris")
    command = [
        sys.executable, str(Path(__file__).resolve()), "--atheris-child", name,
        f"-max_total_time={max(1, int(seconds))}", f"-runs={examples}", "-print_final_stats=1",
        f"-artifact_prefix={crash_folder}/{name}-",
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False,
                            stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
    outcome.seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    outcome.examples = int(executed.group(1)) if executed else 0
    if result.returncode != 0:
        uncaught = re.search(r"=== Uncaught Python exception: ===\n(.+)", output)
        error = uncaught.group(1).strip() if uncaught else f"exit status {result.returncode}"
        frames = re.findall(r'File "([^"]+)", line (\d+)', output)
        place = f"{_relative(frames[-1][0])}:{frames[-1][1]}" if frames else "unknown place"
        crash = re.search(r"Test unit written to (\S+)", output)
        example = f"input saved in {crash.group(1)}" if crash else output.strip().splitlines()[-1][:200]
        outcome.failures[(error, place)] = Failure(error, place, example, 0)
    return outcome


def atheris_child(name: str, libfuzzer_args: list[str]) -> None:
    """Fuzz one decoder under atheris, passing `libfuzzer_args` on to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["schemas", "shardbus", "streams"]):
        from decoder_targets import TARGETS_BY_NAME
    atheris.Setup([sys.argv[0], *libfuzzer_args], TARGETS_BY_NAME[name].check)
    atheris.Fuzz()


def atheris_installed() -> bool:
    return importlib.util.find_spec("atheris") is not None


def print_report(outcomes: list[Outcome]) -> None:
    print(f"{'decoder':<20} {'fuzzer':<10} {'examples':>10} {'failures':>9} {'seconds':>8}")
    for outcome in outcomes:
        print(f"{outcome.decoder:<20} {outcome.fuzzer:<10} {outcome.examples:>10} "
              f"{len(outcome.failures):>9} {outcome.seconds:>8.1f}{'  ' + outcome.note if outcome.note else ''}")
    for outcome in outcomes:
        for failure in outcome.failures.values():
            print(f"\n{outcome.decoder} ({outcome.fuzzer}): {failure.error} at {failure.place}")
            if failure.seed:
                print(f"  seed {failure.seed}")
            print(f"  {failure.example}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1_000_000, metavar="N",
                        help="maximum examples per decoder and fuzzer (default: 1000000)")
    parser.add_argument("--minutes", type=float, default=2.0, metavar="M",
                        help="total time, shared equally by the decoders and fuzzers (default: 2)")
    parser.add_argument("--decoder", action="append", metavar="NAME",
                        help="fuzz only this decoder; repeat for more (default: every decoder)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the first hypothesis round (default: from the clock)")
    parser.add_argument("--atheris", action="store_true", help="also run atheris where it is installed")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error(f"--examples must be at least 1, got {args.examples}")
    if args.minutes <= 0:
        parser.error(f"--minutes must be above 0, got {args.minutes}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from decoder_targets import TARGETS, TARGETS_BY_NAME

    unknown = sorted(set(args.decoder or ()) - set(TARGETS_BY_NAME))
    if unknown:
        print(f"unknown decoder {', '.join(unknown)}: expected one of {', '.join(TARGETS_BY_NAME)}", file=sys.stderr)
        return 2
    targets = [TARGETS_BY_NAME[name] for name in args.decoder] if args.decoder else list(TARGETS)
    use_atheris = args.atheris and atheris_installed()
    seed = args.seed if args.seed is not None else int(time.time())
    share = args.minutes * 60 / (len(targets) * (2 if use_atheris else 1))

    import hypothesis

    print(f"fuzz: {len(targets)} decoders, {args.minutes:g} minutes, at most {args.examples} examples each, "
          f"seed {seed}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, hypothesis {hypothesis.__version__}")
    if args.atheris and not use_atheris:
        print("atheris is not installed, so only hypothesis runs")

    crash_folder = Path(tempfile.mkdtemp(prefix="shardbus-fuzz-")) if use_atheris else None
    if crash_folder is not None:
        print(f"atheris writes failing inputs to {crash_folder}")

    outcomes = []
    for target in targets:
        outcomes.append(run_hypothesis(target, examples=args.examples, seconds=share, seed=seed))
        if crash_folder is not None:
            outcomes.append(run_atheris(target.name, examples=args.examples, seconds=share, crash_folder=crash_folder))
    print()
    print_report(outcomes)
    return 1 if any(outcome.failures for outcome in outcomes) else 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--atheris-child":
        atheris_child(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
