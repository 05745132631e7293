"""The two tools under test and how each is invoked.

Both get the same treatment: repository given with ``-r``, password in the environment, their
own cache directory (``XDG_CACHE_HOME``, fresh per run), JSON output where the runner reads
numbers. Global flags come before the subcommand (click requires that; restic accepts it).

What the runner reads from ``snap`` (the contract for the CLI, modelled on restic's):
- ``snap --json backup PATH``: the last stdout line that parses as a JSON object with
  ``"message_type": "summary"``; fields used if present: ``files_new``, ``files_changed``,
  ``files_unmodified``, ``data_added``, ``total_bytes_processed``, ``total_duration``,
  ``snapshot_id`` (others are kept in the raw results). Any other stdout lines are ignored.
- ``snap --json snapshots``: a JSON array of snapshots (only its length is used).
- ``snap --json stats --mode raw-data``: a JSON object; ``total_size``,
  ``total_uncompressed_size`` and ``total_blob_count`` are shown if present. Optional.
- Exit code 0 on success; anything else is reported as a failure with stderr's last lines.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "snap-bench-password"  # a throw-away repository on a scratch directory


@dataclass
class Tool:
    name: str
    prefix: list[str]
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def argv(self, repo: str, *args: str, json_out: bool = False) -> list[str]:
        return [*self.prefix, "-r", repo, *(["--json"] if json_out else []), *args]

    def init(self, repo: str) -> list[str]:
        if self.name == "restic":
            # 0.14 already defaults to format 2 (compression); say so explicitly
            return self.argv(repo, "init", "--repository-version", "2")
        return self.argv(repo, "init")

    def backup(self, repo: str, path: str) -> list[str]:
        if self.name == "restic":
            return self.argv(repo, "--compression", "auto", "backup", path, json_out=True)
        return self.argv(repo, "backup", path, json_out=True)

    def restore(self, repo: str, target: str) -> list[str]:
        return self.argv(repo, "restore", "latest", "--target", target)

    def check(self, repo: str) -> list[str]:
        return self.argv(repo, "check", "--read-data")

    def snapshots(self, repo: str) -> list[str]:
        return self.argv(repo, "snapshots", json_out=True)

    def stats(self, repo: str) -> list[str]:
        return self.argv(repo, "stats", "--mode", "raw-data", json_out=True)


def restic_tool(install: bool) -> tuple[Tool | None, str]:
    """restic from PATH; installed with apt when missing and allowed (root). (tool, note)"""
    exe = shutil.which("restic")
    if exe is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("restic not found: installing Debian's package (apt-get install -y restic)",
              file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "restic"], env=env,
                       stdout=subprocess.DEVNULL)
        exe = shutil.which("restic")
    if exe is None:
        how = ("install it with: sudo apt-get install -y restic (Debian/Ubuntu), "
               "or put a restic binary on PATH")
        return None, f"restic not found; {how}"
    version = _first_line([exe, "version"])
    return Tool("restic", [exe], {"RESTIC_PASSWORD": PASSWORD}, version), version


def snap_tool(snap_cmd: str) -> tuple[Tool, str]:
    """``snap_cmd`` split like a shell would, or ``auto``: ``snap`` from PATH unless that is
    Ubuntu's snapd client, else ``python -m cli`` from this checkout."""
    env = {"SNAP_PASSWORD": PASSWORD}
    if snap_cmd != "auto":
        prefix = shlex.split(snap_cmd)
    else:
        exe = shutil.which("snap")
        if exe and "snapd" not in _output([exe, "--version"]).lower():
            prefix = [exe]
        else:
            prefix = [sys.executable, "-m", "cli"]
    if prefix[1:3] == ["-m", "cli"]:
        # the checkout, not whatever is installed, is what we benchmark
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    _compile_imports(prefix, env)
    return Tool("snap", prefix, env, " ".join(prefix)), git_commit()


def _compile_checkout() -> None:
    """Byte-compile the checkout's packages, as installing a wheel does. An editable install
    leaves that to Python at run time, and with PYTHONDONTWRITEBYTECODE set (this machine's
    default) every command would compile its modules again: ~0.05-0.1 s per command."""
    import compileall

    for package in ("dedupe", "cli"):
        compileall.compile_dir(str(REPO_ROOT / package), quiet=1)


# Imports every module of snap and sets up an S3 client (which imports more of botocore and
# the standard library); nothing is sent anywhere.
_IMPORT_ALL = """
import importlib, pkgutil
import cli, dedupe
for package in (dedupe, cli):
    for found in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not found.name.endswith("__main__"):
            try:
                importlib.import_module(found.name)
            except Exception:
                pass
from dedupe.backends.s3 import S3Backend
S3Backend("bench-compile", "", endpoint="http://127.0.0.1:9")
"""


def _compile_imports(prefix: list[str], env: dict[str, str]) -> None:
    """Have snap's Python write the byte code of every module snap imports (the standard
    library's and the dependencies' too), as installing them normally does. This machine's
    Python lacked it for part of both (botocore, email, dateutil, ...), and with
    PYTHONDONTWRITEBYTECODE set every S3 command compiled them again: ~0.2 s of a 0.97 s
    unchanged re-backup. This covers the checkout's packages too when they are what snap runs.
Best effort: the benchmark runs either way."""
    python = prefix[0] if prefix[1:3] == ["-m", "cli"] else _shebang(prefix[0])
    if python is None:  # (the checkout's own modules, at least)
        _compile_checkout()
        return
    run_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run_env.update(env)
    subprocess.run([python, "-c", _IMPORT_ALL], env=run_env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _shebang(command: str) -> str | None:
    """The interpreter of an installed console script, from its ``#!`` line."""
    try:
        with open(shutil.which(command) or command, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].split()
    return os.fsdecode(parts[0]) if parts else None


def git_commit() -> str:
    out = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"])
    if not out or "fatal" in out or "not found" in out:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                            "--untracked-files=no", "--", "dedupe", "cli"],
                           capture_output=True, text=True).stdout.strip()
    return out + ("+dirty" if dirty else "")


def _output(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not found ({exc})"
    return (r.stdout or r.stderr).strip()


def _first_line(argv: list[str]) -> str:
    text = _output(argv)
    return text.splitlines()[0] if text else ""


def parse_summary(stdout: str) -> dict:
    """The backup summary: the last JSON object line with message_type "summary"."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("message_type") == "summary":
            return obj
    return {}


def parse_json(stdout: str):
    """A whole-output JSON document, or the last line that parses; None if nothing does."""
    try:
        return json.loads(stdout)
    except ValueError:
        pass
    for line in reversed(stdout.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None
