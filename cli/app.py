"""Global state of one ``snap`` invocation: options, password, repository, output."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from dedupe.backends import open_backend, wrap_backend
from dedupe.backends.base import Backend
from dedupe.errors import SnapError
from dedupe.repository import Repository

if TYPE_CHECKING:
    from rich.console import Console


class UsageError(SnapError):
    """Bad flags or arguments, reported like any other error (exit code 1)."""


@dataclass
class App:
    repo_url: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    no_cache: bool = False
    cache_dir: str | None = None
    quiet: bool = False
    verbose: int = 0
    json: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)
    _backend: Backend | None = None
    _repo: Repository | None = None

    # rich is imported on first use: a quiet cron backup never pays for it.
    # soft_wrap: a warning is one line however long the path (logs and cron mail grep it).
    @functools.cached_property
    def console(self) -> "Console":
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    @functools.cached_property
    def err(self) -> "Console":
        from rich.console import Console

        return Console(stderr=True, highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------ output
    def info(self, message: str) -> None:
        """Human text on stdout; silent with --quiet or --json."""
        if not self.quiet and not self.json:
            self.console.print(message, markup=False)

    def verbose_info(self, message: str, level: int = 1) -> None:
        if self.verbose >= level and not self.quiet and not self.json:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        """Warnings go to stderr even with --quiet (they matter to cron mail)."""
        self.err.print(f"warning: {message}", markup=False)

    def emit_json(self, obj: Any) -> None:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    @property
    def interactive(self) -> bool:
        return sys.stdin.isatty() and sys.stderr.isatty()

    # ------------------------------------------------------------------ passwords
    def password(self, *, confirm: bool = False) -> bytes:
        """Resolve the password: --password-file, --password-command, SNAP_PASSWORD, prompt."""
        if self.password_file and self.password_command:
            raise UsageError("give either --password-file or --password-command, not both")
        if self.password_file:
            pw = read_password_file(self.password_file)
        elif self.password_command:
            pw = run_password_command(self.password_command)
        elif os.environ.get("SNAP_PASSWORD"):
            pw = os.environ["SNAP_PASSWORD"].encode()
        elif self.interactive:
            pw = prompt_password("enter password for repository: ", confirm=confirm)
        else:
            raise UsageError("no password given: use --password-file, SNAP_PASSWORD_FILE, "
                             "SNAP_PASSWORD_COMMAND or SNAP_PASSWORD")
        if not pw:
            raise UsageError("an empty password is not allowed")
        return pw

    # ------------------------------------------------------------------ repository
    @property
    def is_remote(self) -> bool:
        """An S3 repository (requests cost latency and money) rather than a local one."""
        return bool(self.repo_url) and self.repo_url.startswith("s3:")

    def backend(self) -> Backend:
        if self._backend is None:
            if not self.repo_url:
                raise UsageError("no repository given: use -r/--repo or SNAP_REPOSITORY")
            self._backend = wrap_backend(open_backend(self.repo_url, **self.backend_options))
        return self._backend

    def open_repo(self) -> Repository:
        if self._repo is None:
            self._repo = Repository.open(self.backend(), self.password,
                                         cache_root=self.cache_dir, no_cache=self.no_cache)
        return self._repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
        elif self._backend is not None:
            self._backend.close()


def read_password_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from None
    return data.rstrip(b"\r\n")


def run_password_command(command: str) -> bytes:
    try:
        proc = subprocess.run(command, shell=True, stdout=subprocess.PIPE, check=False)
    except OSError as exc:
        raise UsageError(f"password command failed: {exc}") from None
    if proc.returncode != 0:
        raise UsageError(f"password command exited with status {proc.returncode}")
    return proc.stdout.rstrip(b"\r\n")


def prompt_password(prompt: str, *, confirm: bool) -> bytes:
    first = click.prompt(prompt.rstrip(": "), hide_input=True, err=True, default="",
                         show_default=False)
    if confirm:
        again = click.prompt("enter password again", hide_input=True, err=True, default="",
                             show_default=False)
        if again != first:
            raise UsageError("passwords do not match")
    return first.encode()


pass_app = click.make_pass_decorator(App)
