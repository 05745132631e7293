"""snap backup: save files, directories or a stream as a new snapshot."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime

import click

from dedupe.archiver import Archiver, BackupOptions, BackupProgress, start_stat_ahead
from dedupe.errors import SourceError
from dedupe.filelists import collect_patterns, read_files_from
from dedupe.statahead import StatAhead

from .app import App, UsageError, pass_app
from .errors import EXIT_INCOMPLETE
from .progress import LiveLine, Ticker, backup_line
from .requests import request_summary
from .sizes import format_size, parse_size


def _patterns(exclude, iexclude, exclude_file, iexclude_file) -> list:
    try:
        group = collect_patterns(exclude, exclude_file, iexclude, iexclude_file)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    return [group] if group else []


def _if_present(values) -> list[tuple[bytes, bytes | None]]:
    out = []
    for v in values:
        name, _, header = v.partition(":")
        out.append((os.fsencode(name), header.encode() if header else None))
    return out


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").astimezone()
    except ValueError:
        raise UsageError(f"invalid --time {value!r}: use \"YYYY-MM-DD HH:MM:SS\"") from None


@click.command("backup", context_settings={"ignore_unknown_options": False})
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option("-e", "--exclude", multiple=True, metavar="PATTERN", help="Exclude matching paths.")
@click.option("--iexclude", multiple=True, metavar="PATTERN", help="Like --exclude, ignoring case.")
@click.option("--exclude-file", multiple=True, metavar="FILE", help="Read exclude patterns from FILE.")
@click.option("--iexclude-file", multiple=True, metavar="FILE", help="Like --exclude-file, ignoring case.")
@click.option("--exclude-caches", is_flag=True, help="Exclude directories holding a valid CACHEDIR.TAG.")
@click.option("--exclude-if-present", multiple=True, metavar="NAME[:HEADER]",
              help="Exclude directories holding file NAME (starting with HEADER, if given).")
@click.option("--exclude-larger-than", metavar="SIZE", help="Exclude files larger than SIZE (e.g. 1G).")
@click.option("-x", "--one-file-system", is_flag=True, help="Do not cross file system boundaries.")
@click.option("--files-from", multiple=True, metavar="FILE", help="Read paths to back up from FILE.")
@click.option("--files-from-verbatim", multiple=True, metavar="FILE",
              help="Read paths from FILE, one per line, without glob expansion.")
@click.option("--files-from-raw", multiple=True, metavar="FILE", help="Read NUL-separated paths from FILE.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Add tags (comma separated or repeated).")
@click.option("--host", "--hostname", "host", metavar="NAME", help="Host name to record.")
@click.option("--time", "time_", metavar="TIME", help='Snapshot time, "YYYY-MM-DD HH:MM:SS" local time.')
@click.option("--parent", metavar="SNAPSHOT", help="Compare with this snapshot instead of the latest.")
@click.option("--force", is_flag=True, help="Re-read every file, even unchanged ones.")
@click.option("--ignore-ctime", is_flag=True, help="Ignore ctime changes when detecting changes.")
@click.option("--ignore-inode", is_flag=True, help="Ignore inode changes when detecting changes.")
@click.option("-n", "--dry-run", is_flag=True, help="Do everything but write to the repository.")
@click.option("--with-atime", is_flag=True,
              help="Store access times too (they change whenever a file is read).")
@click.option("--read-concurrency", type=click.IntRange(1, 64), default=2, show_default=True,
              metavar="N", help="Read N files at once (of those over the smallest chunk, "
              "512 KiB by default; smaller ones are read as the walk goes).")
@click.option("--stdin", "use_stdin", is_flag=True, help="Back up standard input as one file.")
@click.option("--stdin-filename", default="stdin", show_default=True, metavar="NAME")
@click.option("--stdin-from-command", is_flag=True,
              help="Back up the output of the command given after the flags (use -- CMD ARGS).")
@pass_app
def command(app: App, paths, exclude, iexclude, exclude_file, iexclude_file, exclude_caches,
            exclude_if_present, exclude_larger_than, one_file_system, files_from, files_from_verbatim,
            files_from_raw,
            tags, host, time_, parent, force, ignore_ctime, ignore_inode, dry_run, with_atime,
            read_concurrency, use_stdin, stdin_filename, stdin_from_command) -> int:
    """Create a new snapshot of PATHS (or of stdin / a command's output)."""
    sources = list(paths)
    try:
        for mode, files in (("glob", files_from), ("verbatim", files_from_verbatim),
                            ("raw", files_from_raw)):
            for f in files:
                src = sys.stdin.buffer if f == "-" else f
                sources += [os.fsdecode(p) for p in read_files_from(
                    src, mode, on_no_match=lambda p: app.warn(f"{os.fsdecode(p)}: no match"))]
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if use_stdin and stdin_from_command:
        raise UsageError("--stdin and --stdin-from-command cannot be combined")
    if stdin_from_command and not sources:
        raise UsageError("--stdin-from-command needs a command: snap backup --stdin-from-command -- CMD ARGS")
    if not use_stdin and not stdin_from_command and not sources:
        raise UsageError("nothing to back up: give paths, --files-from, --stdin or --stdin-from-command")
    if use_stdin and sources:
        raise UsageError("--stdin takes no paths")
    try:
        larger = parse_size(exclude_larger_than) if exclude_larger_than else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    opts = BackupOptions(
        excludes=_patterns(exclude, iexclude, exclude_file, iexclude_file),
        exclude_if_present=_if_present(exclude_if_present), exclude_caches=exclude_caches,
        exclude_larger_than=larger, one_file_system=one_file_system, force=force,
        ignore_ctime=ignore_ctime, ignore_inode=ignore_inode, dry_run=dry_run,
        tags=[t for tag in tags for t in tag.split(",") if t], hostname=host,
        time=_parse_time(time_), read_concurrency=read_concurrency,
        with_atime=with_atime, count_totals=_shows_status(app))
    streamed = use_stdin or stdin_from_command
    # Started before the repository is opened, so its walk overlaps the key derivation.
    early = None if streamed else start_stat_ahead(sources, opts)
    try:
        repo = app.open_repo()
        if parent:
            opts.parent = repo.find_snapshot(parent)
        progress = BackupProgress()
        archiver = Archiver(repo, opts, progress=progress, on_warning=app.warn)
        if streamed:
            result = _backup_stream(app, archiver, sources if stdin_from_command else None,
                                    stdin_filename)
        else:
            result = _backup_paths(app, archiver, progress, sources, early)
    finally:
        if early is not None:
            early.close()  # (the backup closed it already, unless something failed first)
    _report(app, repo, result, dry_run)
    return EXIT_INCOMPLETE if result.warnings else 0


def _shows_status(app: App) -> bool:
    """A live line on a terminal, or JSON status messages: both show totals."""
    return not app.quiet and (app.json or sys.stderr.isatty())


def _backup_paths(app: App, archiver: Archiver, progress: BackupProgress, sources: list[str],
                  early: StatAhead | None):
    if not _shows_status(app):
        return archiver.backup(sources, early)
    if app.json:
        def emit(final: bool) -> None:
            if not final:
                app.emit_json({
                    "message_type": "status", "files_done": progress.files_done,
                    "bytes_done": progress.bytes_done, "total_files": progress.total_files,
                    "total_bytes": progress.total_bytes, "current_files": [progress.current],
                    "error_count": progress.errors,
                    "percent_done": (progress.bytes_done / progress.total_bytes)
                    if progress.totals_done and progress.total_bytes else 0.0})
        with Ticker(emit, 1.0):
            return archiver.backup(sources, early)
    with LiveLine(app.err) as live, Ticker(lambda final: live.update(backup_line(progress)), 0.25):
        return archiver.backup(sources, early)


def _backup_stream(app: App, archiver: Archiver, command: list[str] | None, filename: str):
    if command is None:
        return archiver.backup_stream(sys.stdin.buffer, filename)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    except OSError as exc:
        raise SourceError(f"cannot run {command[0]}: {exc.strerror}") from None
    def check_exit() -> None:  # called before the snapshot would be written
        code = proc.wait()
        if code != 0:
            raise SourceError(f"command {command[0]!r} exited with status {code}; "
                              "no snapshot was written")

    try:
        return archiver.backup_stream(proc.stdout, filename, finished=check_exit)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _report(app: App, repo, result, dry_run: bool) -> None:
    s = result.summary
    if app.json:
        out = {"message_type": "summary", **s, "dry_run": dry_run,
               "snapshot_id": result.snapshot.id if result.snapshot else None,
               "requests": request_summary(repo.backend)}
        app.emit_json(out)
        return
    app.info(f"Files:       {s['files_new']} new, {s['files_changed']} changed, "
             f"{s['files_unmodified']} unmodified")
    app.info(f"Dirs:        {s['dirs_new']} new, {s['dirs_changed']} changed, "
             f"{s['dirs_unmodified']} unmodified")
    verb = "Would add" if dry_run else "Added to the repository:"
    app.info(f"{verb} {format_size(s['data_added'])} ({s['data_blobs']} data blobs, "
             f"{s['tree_blobs']} tree blobs)")
    app.info(f"processed {s['total_files_processed']} files, "
             f"{format_size(s['total_bytes_processed'])} in {s['total_duration']:.2f}s")
    if app.verbose:
        app.verbose_info("requests: " + ", ".join(f"{k} {v}" for k, v in
                                                  request_summary(repo.backend).items()))
    if result.snapshot:
        app.info(f"snapshot {result.snapshot.short_id} saved")
    if result.warnings:
        app.warn(f"{len(result.warnings)} files or directories could not be read; "
                 "the snapshot is incomplete")
