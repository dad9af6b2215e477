"""Files backup benchmark: our engine against tar czf, tar | pigz and restic, on the same tree and machine.

    .venv/bin/python -m bench.files [--size-mib 560] [--only backup|incremental|restore|all] [--keep]
                                    [--skip-generate] [--runs N]

Makes sure the generated tree exists (bench/treegen.py; reused when its marker matches, any earlier
mutation undone), then runs, in this fixed order:

  backups:      tar czf, tar cf - | pigz, restic backup (first run, fresh repository), ours (encrypted)
  incremental:  1% of the files change (treegen.mutate), then restic backup (second run), ours incremental
  restores:     tar xzf, ours (the complete backup), ours (complete + incremental chain), each into an
                empty directory and compared file by file (size and SHA-256) with the tree it backed up;
                then ours verify (complete + incremental chain): what the verification service proves
                of a files part (archive digests, members, chain, every file's SHA-256), writing nothing

Before every measured run the file system is synced and, when permitted (root), the OS page cache is
dropped, so each tool reads the tree (or the backup) cold. Wall time and peak RSS come from
bench/measure.py (GNU time per process; a pipeline's RSS is the sum of its stages). Sizes are what
each tool leaves on disk: the archive (ours: archive + manifest), restic's repository, or for an
incremental run what it added. The tree is put back to its pristine state at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backup_common.engine.files.model import TREES
from bench import treegen

# The row type, its formatting and the measured runs are the database benchmark's own.
from bench.database import (
    Harness,
    Row,
    _mib,
    _notes,
    _read_json,
    _repeat,
    _rss,
    _short,
    _spread,
    ratio_of,
)
from bench.measure import MIB, gnu_time_available, path_size, which
from bench.run_ours import DEFAULT_PASSWORD, PASSWORD_VARIABLE
from bench.run_ours_files import manifest_path

ROOT = Path(__file__).resolve().parent.parent
WORK_DIR = ROOT / "var" / "bench"
OUT_DIR = WORK_DIR / "files"
RESTIC_REPO = WORK_DIR / "restic"
RESTIC_CACHE = WORK_DIR / "restic-cache"
RESTIC_PASSWORD = "bench-restic-password"  # noqa: S105 -- not a secret: protects a throwaway benchmark repository
RESULTS = WORK_DIR / "files-results.json"
RSS_LIMIT = 300 * MIB

TARGETS = (
    # (label, section, our row, reference row, metric, goal ratio)
    ("backup wall", "backup", "ours", "tar czf", "wall", 0.5),
    ("archive size", "backup", "ours", "tar czf", "size", 1.05),
    ("incremental wall", "incremental", "ours", "restic backup (2nd run)", "wall", 1.0),
    ("restore wall", "restore", "ours", "tar xzf", "wall", 1.0),
)

Digest = dict[str, tuple[int, str]]


def digest_tree(root: Path) -> Digest:
    """path → (size, SHA-256) of every file under root's uploads/, configs/ and logs/."""
    digest: Digest = {}
    for tree in TREES:
        for directory, _, names in os.walk(root / tree):
            for name in names:
                path = Path(directory, name)
                sha = hashlib.sha256()
                with path.open("rb") as handle:
                    while chunk := handle.read(1 << 20):
                        sha.update(chunk)
                digest[path.relative_to(root).as_posix()] = (path.stat().st_size, sha.hexdigest())
    return digest


def compare(expected: Digest, actual: Digest) -> str:
    """ "verified", or what differs (first few paths)."""
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    wrong = sorted(path for path in expected.keys() & actual.keys() if expected[path] != actual[path])
    if not (missing or extra or wrong):
        return f"verified ({len(expected)} files)"
    problems = [
        f"{label} {len(paths)}: {', '.join(paths[:3])}"
        for label, paths in (("missing", missing), ("unexpected", extra), ("different", wrong))
        if paths
    ]
    return "; ".join(problems)


@dataclass
class FilesBench(Harness):
    tree: Path
    seed: int
    size_mib: int
    drop_caches: bool
    notes: list[str] = field(default_factory=list)
    pristine: Digest | None = None
    mutated: Digest | None = None

    @property
    def tar_gz(self) -> Path:
        return OUT_DIR / "tar-czf.tar.gz"

    @property
    def pigz_gz(self) -> Path:
        return OUT_DIR / "tar-pigz.tar.gz"

    @property
    def ours_full(self) -> Path:
        return OUT_DIR / "ours-full.archive"

    @property
    def ours_incremental(self) -> Path:
        return OUT_DIR / "ours-incremental.archive"

    def restore_dir(self, name: str) -> Path:
        return OUT_DIR / "restore" / name

    def log(self, name: str) -> Path:
        return WORK_DIR / "logs" / f"files-{name}.log"

    # --- state between runs ---------------------------------------------------------------------

    def run(
        self,
        tool: str,
        log_name: str,
        pipeline: Sequence[Sequence[str]],
        *,
        stdout: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Row:
        return self.measured(tool, self.log(log_name), pipeline, stdout=stdout, env=env)

    def _ours(self, command: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "bench.run_ours_files", command, *args]

    def _ours_env(self) -> dict[str, str]:
        return {**os.environ, PASSWORD_VARIABLE: os.environ.get(PASSWORD_VARIABLE, DEFAULT_PASSWORD)}

    def _restic_env(self) -> dict[str, str]:
        return {**os.environ, "RESTIC_PASSWORD": RESTIC_PASSWORD, "RESTIC_CACHE_DIR": str(RESTIC_CACHE)}

    def _restic_backup(self) -> list[str]:
        # --host fixed, so the second run finds the first as its parent whatever the machine is called.
        argv = ["restic", "-r", str(RESTIC_REPO), "backup", "--host", "bench"]
        return argv + [str(self.tree / tree) for tree in TREES]

    def _subtrees(self) -> list[str]:
        return ["-C", str(self.tree), *TREES]

    # --- backups --------------------------------------------------------------------------------

    def backup_tar(self) -> Row:
        self.tar_gz.unlink(missing_ok=True)
        row = self.run("tar czf", "tar-czf", [["tar", "czf", str(self.tar_gz), *self._subtrees()]])
        return _with_size(row, self.tar_gz)

    def backup_pigz(self) -> Row:
        self.pigz_gz.unlink(missing_ok=True)
        row = self.run(
            "tar cf - | pigz", "tar-pigz", [["tar", "cf", "-", *self._subtrees()], ["pigz"]], stdout=self.pigz_gz
        )
        return _with_size(row, self.pigz_gz)

    def backup_restic(self) -> Row:
        tool = "restic backup (1st run)"
        if which("restic") is None:
            return Row(tool, status="not available: restic not on PATH (run bench/setup.sh)")
        # A first run: a new repository and no cache (restic init is not part of the measurement).
        shutil.rmtree(RESTIC_REPO, ignore_errors=True)
        shutil.rmtree(RESTIC_CACHE, ignore_errors=True)
        init = subprocess.run(  # noqa: S603 -- fixed argv
            ["restic", "-r", str(RESTIC_REPO), "init"],  # noqa: S607 -- found on PATH, as the other tools
            env=self._restic_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if init.returncode != 0:
            return Row(tool, status=f"failed: restic init: {init.stderr.strip()[-200:]}")
        row = self.run(
            tool, "restic-1", [self._restic_backup()], stdout=self.log("restic-1.out"), env=self._restic_env()
        )
        return _with_size(row, RESTIC_REPO)

    def backup_ours(self) -> Row:
        for path in (self.ours_full, manifest_path(self.ours_full)):
            path.unlink(missing_ok=True)
        argv = self._ours("files", "--root", str(self.tree), "--out", str(self.ours_full))
        report = self.log("ours-full.out")
        row = self.run("ours", "ours-full", [argv], stdout=report, env=self._ours_env())
        row.detail = _read_json(report)
        return _with_size(row, self.ours_full, manifest_path(self.ours_full))

    # --- incremental ----------------------------------------------------------------------------

    def incremental_restic(self) -> Row:
        tool = "restic backup (2nd run)"
        if not (RESTIC_REPO / "config").exists():
            return Row(tool, status="not available: no restic repository (run --only backup --keep first)")
        before = path_size(RESTIC_REPO)
        row = self.run(
            tool, "restic-2", [self._restic_backup()], stdout=self.log("restic-2.out"), env=self._restic_env()
        )
        if row.ok:
            row.size_bytes = path_size(RESTIC_REPO) - before
        return row

    def incremental_ours(self) -> Row:
        if not manifest_path(self.ours_full).exists():
            return Row("ours", status="not available: our complete backup did not run (no manifest to start from)")
        for path in (self.ours_incremental, manifest_path(self.ours_incremental)):
            path.unlink(missing_ok=True)
        argv = self._ours("incremental", "--root", str(self.tree), "--parent", str(manifest_path(self.ours_full)))
        argv += ["--out", str(self.ours_incremental)]
        report = self.log("ours-incremental.out")
        row = self.run("ours", "ours-incremental", [argv], stdout=report, env=self._ours_env())
        row.detail = _read_json(report)
        return _with_size(row, self.ours_incremental, manifest_path(self.ours_incremental))

    # --- restores -------------------------------------------------------------------------------

    def restore_tar(self) -> Row:
        if not self.tar_gz.exists():
            return Row("tar xzf", status="not available: no tar czf archive (run --only backup --keep first)")
        target = self._empty(self.restore_dir("tar"))
        row = self.run("tar xzf", "tar-xzf", [["tar", "xzf", str(self.tar_gz), "-C", str(target)]])
        return self._verify(row, target, self.pristine)

    def restore_ours(self) -> Row:
        if not self.ours_full.exists():
            return Row("ours", status="not available: our complete backup did not run")
        target = self._empty(self.restore_dir("ours"))
        argv = self._ours("restore", "--archive", str(self.ours_full), "--target", str(target))
        report = self.log("ours-restore.out")
        row = self.run("ours", "ours-restore", [argv], stdout=report, env=self._ours_env())
        row.detail = _read_json(report)
        return self._verify(row, target, self.pristine)

    def restore_ours_chain(self) -> Row:
        tool = "ours (full + incremental)"
        if not (self.ours_full.exists() and self.ours_incremental.exists()):
            return Row(tool, status="not available: our complete or incremental backup did not run")
        target = self._empty(self.restore_dir("ours-chain"))
        argv = self._ours("restore", "--archive", str(self.ours_full), "--archive", str(self.ours_incremental))
        argv += ["--target", str(target)]
        report = self.log("ours-restore-chain.out")
        row = self.run(tool, "ours-restore-chain", [argv], stdout=report, env=self._ours_env())
        row.detail = _read_json(report)
        return self._verify(row, target, self.mutated)

    def verify_ours_chain(self) -> Row:
        tool = "ours verify (chain)"
        if not (self.ours_full.exists() and self.ours_incremental.exists()):
            return Row(tool, status="not available: our complete or incremental backup did not run")
        argv = self._ours("verify", "--archive", str(self.ours_full), "--archive", str(self.ours_incremental))
        report = self.log("ours-verify-chain.out")
        row = self.run(tool, "ours-verify-chain", [argv], stdout=report, env=self._ours_env())
        row.detail = _read_json(report)
        if row.ok:
            row.verified = "verified: every check passed"
        return row

    def _empty(self, target: Path) -> Path:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        return target

    def _verify(self, row: Row, target: Path, expected: Digest | None) -> Row:
        """Checked outside the measurement, then the restored copy goes (it is as large as the tree)."""
        if row.ok and expected is not None:
            row.verified = compare(expected, digest_tree(target))
            if not row.verified.startswith("verified"):
                row.status = f"wrong data: {row.verified}"
        shutil.rmtree(target, ignore_errors=True)
        return row


def _with_size(row: Row, *paths: Path) -> Row:
    if row.ok:
        row.size_bytes = sum(path_size(path) for path in paths)
    return row


def _version(argv: Sequence[str]) -> str:
    if which(argv[0]) is None:
        return f"{argv[0]} missing"
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)  # noqa: S603 -- fixed argv
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else argv[0]


# --- report ---------------------------------------------------------------------------------------


SECTIONS = (
    ("backup", "backup", "size MiB"),
    ("incremental", "incremental after 1% change", "added MiB"),
    ("restore", "restore", ""),
)


def print_report(sections: dict[str, list[Row]], header: str, notes: list[str]) -> None:
    print()
    print(header)
    for key, title, size_title in SECTIONS:
        rows = sections.get(key, [])
        if not rows:
            continue
        print()
        print(f"{title:<30} {'wall s':>8} {size_title:>10} {'peak RSS MiB':>13}  note")
        for row in rows:
            if row.wall_seconds is None:
                print(f"{row.tool:<30} {_short(row.status)}")
                continue
            wall, size, rss = (
                f"{row.wall_seconds:.1f}",
                _mib(row.size_bytes) if size_title else "",
                _mib(row.peak_rss_bytes),
            )
            note = _short(row.status) if not row.ok else _notes(_spread(row), row.verified, _rss(row))
            print(f"{row.tool:<30} {wall:>8} {size:>10} {rss:>13}  {note}")
    lines = []
    for label, section, ours, reference, metric, goal in TARGETS:
        by_tool = {row.tool: row for row in sections.get(section, [])}
        mine, theirs = by_tool.get(ours), by_tool.get(reference)
        if mine is None or theirs is None:
            continue
        name = f"{label}: ours / {reference}"
        ratio = ratio_of(mine, theirs, metric)
        if ratio is None:
            reason = mine.status if not mine.ok else theirs.status
            lines.append(f"{name:<50} {'-':>6}  <= {goal:.2f}  n/a ({_short(reason, 70)})")
            continue
        lines.append(f"{name:<50} {ratio:>6.3f}  <= {goal:.2f}  {'met' if ratio <= goal else 'missed'}")
    ours_rows = [row for rows in sections.values() for row in rows if row.tool.startswith("ours")]
    measured = [row for row in ours_rows if row.ok and row.peak_rss_bytes is not None]
    if ours_rows:
        name = f"peak RSS of ours, all runs (MiB, < {RSS_LIMIT // MIB})"
        if len(measured) < len(ours_rows) or not measured:
            lines.append(f"{name:<50} {'-':>6}  {'':<7}  n/a (not every run of ours succeeded)")
        else:
            peak = max(row.peak_rss_bytes or 0 for row in measured)
            lines.append(f"{name:<50} {peak / MIB:>6.1f}  {'':<7}  {'met' if peak < RSS_LIMIT else 'missed'}")
    if lines:
        print()
        print(f"{'target':<50} {'value':>6}  {'goal':<7}  result")
        print("\n".join(lines))
    for note in notes:
        print(f"note: {note}")


# --- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.files",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    parser.add_argument("--size-mib", type=int, default=treegen.DEFAULT_SIZE_MIB, help="MiB of files to generate")
    parser.add_argument("--seed", type=int, default=treegen.DEFAULT_SEED)
    parser.add_argument("--only", choices=("backup", "incremental", "restore", "all"), default="all")
    parser.add_argument(
        "--keep", action="store_true", help="keep backups and restic's repository (needed by a later --only)"
    )
    parser.add_argument(
        "--skip-generate", action="store_true", help="use the tree as it is (its marker unchecked; mutations undone)"
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat backups and restores, report the median")
    parser.add_argument("--no-drop-caches", action="store_true", help="leave the OS page cache alone between runs")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_mib < 1:
        parser.error("--runs and --size-mib must be at least 1")
    if not gnu_time_available():
        raise SystemExit("/usr/bin/time (GNU time) is missing: run bench/setup.sh")

    tree_dir = treegen.TREE_DIR
    if args.skip_generate:
        if not all((tree_dir / tree).is_dir() for tree in TREES):
            raise SystemExit(f"--skip-generate: no tree under {tree_dir}")
        treegen.revert(tree_dir, seed=args.seed, size_mib=args.size_mib)
    else:
        treegen.ensure_tree(tree_dir, seed=args.seed, size_mib=args.size_mib)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    bench = FilesBench(tree_dir, args.seed, args.size_mib, not args.no_drop_caches)
    files = sum(1 for tree in TREES for path in (tree_dir / tree).rglob("*") if path.is_file())
    versions = ", ".join(_version(command) for command in (["tar", "--version"], ["pigz", "--version"]))
    versions += ", " + _version(["restic", "version"]).split(" compiled")[0]
    order = "runs in the order listed" + (f", backups and restores round-robin x{args.runs}" if args.runs > 1 else "")
    cold = ", each after the page cache was dropped" if bench.drop_caches else ""
    header = (
        f"tree {tree_dir.relative_to(ROOT)}: {files} files, "
        f"{sum(path_size(tree_dir / tree) for tree in TREES) / MIB:.1f} MiB; {os.cpu_count()} CPUs; "
        f"{versions}; {order}{cold}"
    )
    print(header, flush=True)

    sections: dict[str, list[Row]] = {}
    restoring = args.only in ("restore", "all")
    try:
        if args.only in ("backup", "all"):
            print("backups:")
            sections["backup"] = _repeat(
                args.runs, [bench.backup_tar, bench.backup_pigz, bench.backup_restic, bench.backup_ours]
            )
        if restoring:
            # What every restore of the complete backups must reproduce, read before the tree changes.
            bench.pristine = digest_tree(tree_dir)
        if args.only in ("incremental", "all") or (restoring and bench.ours_incremental.exists()):
            treegen.mutate(tree_dir, 1.0, seed=args.seed, size_mib=args.size_mib)
            if restoring:
                bench.mutated = digest_tree(tree_dir)
        if args.only in ("incremental", "all"):
            print("incremental (after 1% of the files changed):")
            sections["incremental"] = [bench.incremental_restic(), bench.incremental_ours()]
        if restoring:
            print("restores (each compared with the tree it backed up):")
            sections["restore"] = _repeat(args.runs, [bench.restore_tar, bench.restore_ours])
            sections["restore"].append(bench.restore_ours_chain())
            sections["restore"].append(bench.verify_ours_chain())
    finally:
        treegen.revert(tree_dir, seed=args.seed, size_mib=args.size_mib)
        shutil.rmtree(OUT_DIR / "restore", ignore_errors=True)
        # Only what this invocation wrote: --only restore leaves the backups it was given.
        if not args.keep and args.only != "restore":
            shutil.rmtree(OUT_DIR, ignore_errors=True)
            shutil.rmtree(RESTIC_REPO, ignore_errors=True)
            shutil.rmtree(RESTIC_CACHE, ignore_errors=True)
    print_report(sections, header, bench.notes)
    results = {
        "header": header,
        **{name: [asdict(row) for row in rows] for name, rows in sections.items()},
        "notes": bench.notes,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {RESULTS.relative_to(ROOT)}; logs: {(WORK_DIR / 'logs').relative_to(ROOT)}/files-*")
    return 1 if any(not row.ok for rows in sections.values() for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
