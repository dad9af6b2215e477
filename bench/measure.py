"""Wall time and peak memory of a command or a pipeline of commands, run as child processes.

Each stage runs under GNU time (``/usr/bin/time``), whose ``%M`` is the kernel's peak resident set of
that stage, including any child processes the stage waited for (their maximum, not their sum: the
kernel keeps one high-water mark per process tree). Stages of a pipeline run at the same time, so a
pipeline's ``peak_rss_bytes`` is the SUM of its stages' peaks: an upper bound of what the pipeline
held at once, comparable with a single process doing all the work itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GNU_TIME = "/usr/bin/time"
# Elapsed seconds, peak RSS in KiB, exit status; one line, parsed below.
_TIME_FORMAT = "%e %M %x"
MIB = 1 << 20


@dataclass(frozen=True)
class StageResult:
    argv: tuple[str, ...]
    returncode: int
    seconds: float
    peak_rss_bytes: int

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name


@dataclass(frozen=True)
class Measurement:
    wall_seconds: float
    stages: tuple[StageResult, ...]
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return all(stage.returncode == 0 for stage in self.stages)

    @property
    def peak_rss_bytes(self) -> int:
        """Sum of the stages' peaks (they run concurrently); for one command, its own peak."""
        return sum(stage.peak_rss_bytes for stage in self.stages)

    @property
    def max_stage_rss_bytes(self) -> int:
        return max((stage.peak_rss_bytes for stage in self.stages), default=0)

    def rss_breakdown(self) -> str:
        """e.g. ``mariadb-dump 9.1 + gzip 1.8`` (MiB), for pipelines; empty for one command."""
        if len(self.stages) < 2:
            return ""
        return " + ".join(f"{stage.name} {stage.peak_rss_bytes / MIB:.1f}" for stage in self.stages)

    def describe_failure(self) -> str:
        failed = [f"{stage.name} exited {stage.returncode}" for stage in self.stages if stage.returncode != 0]
        tail = self.stderr_tail.strip().splitlines()
        return "; ".join(failed) + (f": {tail[-1]}" if tail else "")


class MeasureError(Exception):
    """GNU time is missing or did not report; not raised when the measured command itself fails."""


def gnu_time_available() -> bool:
    return os.access(GNU_TIME, os.X_OK)


def measure(
    pipeline: Sequence[Sequence[str]],
    *,
    stdin: Path | None = None,
    stdout: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stderr_log: Path | None = None,
) -> Measurement:
    """Runs ``stage1 | stage2 | …`` (each an argv list; no shell) and measures it.

    ``stdin`` feeds the first stage, ``stdout`` receives the last one's output (discarded when None).
    Stderr of every stage goes to ``stderr_log`` (a temporary file when None), whose tail is kept for
    error messages. A failing stage does not raise: check ``Measurement.ok``, as with ``set -o pipefail``.
    """
    if not pipeline:
        raise ValueError("the pipeline has no stage")
    if not gnu_time_available():
        raise MeasureError(f"{GNU_TIME} is missing: run bench/setup.sh (Debian package 'time')")
    full_env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as scratch:
        scratch_dir = Path(scratch)
        log_path = stderr_log if stderr_log is not None else scratch_dir / "stderr.log"
        reports = [scratch_dir / f"stage{index}.time" for index in range(len(pipeline))]
        with (
            open(os.devnull, "rb") if stdin is None else stdin.open("rb") as first_input,
            open(os.devnull, "wb") if stdout is None else stdout.open("wb") as last_output,
            log_path.open("ab") as log,
        ):
            processes: list[subprocess.Popen[bytes]] = []
            started = time.monotonic()
            try:
                previous: int | None = first_input.fileno()
                for index, argv in enumerate(pipeline):
                    last = index == len(pipeline) - 1
                    process = subprocess.Popen(  # noqa: S603 -- argv lists built by the harness, no shell
                        [GNU_TIME, "-o", str(reports[index]), "-f", _TIME_FORMAT, *argv],
                        stdin=previous,
                        stdout=last_output.fileno() if last else subprocess.PIPE,
                        stderr=log.fileno(),
                        env=full_env,
                        cwd=cwd,
                    )
                    if index > 0 and processes[-1].stdout is not None:
                        # Only the next stage may hold the pipe's read end, so that an early exit of a
                        # reader delivers SIGPIPE to its writer as it would in a shell.
                        processes[-1].stdout.close()
                    processes.append(process)
                    previous = process.stdout.fileno() if process.stdout is not None else None
                for process in processes:
                    process.wait()
            finally:
                for process in processes:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
            wall = time.monotonic() - started
        stages = tuple(_read_report(report, argv) for report, argv in zip(reports, pipeline, strict=True))
        return Measurement(wall_seconds=wall, stages=stages, stderr_tail=_tail(log_path))


def _read_report(report: Path, argv: Sequence[str]) -> StageResult:
    try:
        lines = report.read_text().strip().splitlines()
    except OSError as exc:
        raise MeasureError(f"GNU time wrote no report for {argv[0]}: {exc}") from exc
    # GNU time writes "Command exited with non-zero status N" (or a signal line) before the format line.
    fields = lines[-1].split() if lines else []
    if len(fields) != 3:
        raise MeasureError(f"unexpected GNU time report for {argv[0]}: {lines!r}")
    seconds, peak_kib, status = fields
    returncode = int(status)
    if any("terminated by signal" in line for line in lines[:-1]):
        # %x is 0 for a killed command; a signal is a failure all the same.
        returncode = returncode or -1
    return StageResult(tuple(argv), returncode, float(seconds), int(peak_kib) * 1024)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (apparent size, as ``du -sb``)."""
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size if path.exists() else 0


def which(program: str) -> str | None:
    return shutil.which(program)
