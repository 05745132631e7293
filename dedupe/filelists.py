"""Lists read from files and the file system, as restic reads them: ``--exclude-file`` /
``--include-file`` patterns (``read_pattern_file``, ``collect_patterns``), ``--files-from``
paths (``read_files_from``) and the ``glob`` that expands them.

The matching itself is ``dedupe/filters.py``. Deliberate differences from restic:

* ``glob`` with ``**`` (restic's newest ``--files-from``) starts at ``/`` for anchored
  patterns (restic walks ``.`` and finds nothing), does not list the contents of a directory
  that matched (it is backed up whole; restic lists every entry again), and skips unreadable
  directories instead of failing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import BinaryIO

from .filters import PathArg, PatternGroup, PatternList, _component_regex, _go_clean, validate_pattern

__all__ = [
    "collect_patterns",
    "expand_env",
    "glob",
    "read_files_from",
    "read_pattern_file",
]

# Go's unicode.IsSpace; str.strip() would also strip \x1c-\x1f, which Go keeps.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


# --- pattern files -------------------------------------------------------------------------


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Go's os.Expand as restic applies it to pattern files: ``$VAR``, ``${VAR}``, ``$$`` -> ``$``.

    Unset variables expand to nothing; a malformed ``${`` is dropped, as in Go.
    """
    env = os.environ if environ is None else environ
    if "$" not in text:
        return text
    out: list[str] = []
    i = j = 0
    n = len(text)
    while j < n:
        if text[j] == "$" and j + 1 < n:
            out.append(text[i:j])
            name, width = _shell_name(text, j + 1)
            if name:
                out.append("$" if name == "$" else env.get(name, ""))
            elif width == 0:
                out.append("$")  # "$" not followed by a name stays
            j += width
            i = j + 1
        j += 1
    out.append(text[i:])
    return "".join(out)


_SPECIAL = frozenset("*#$@!?-0123456789")


def _is_alnum(c: str) -> bool:
    return c == "_" or "0" <= c <= "9" or "a" <= c <= "z" or "A" <= c <= "Z"


def _shell_name(s: str, k: int) -> tuple[str, int]:
    """Go's getShellName on ``s[k:]`` (non-empty): (name, characters consumed)."""
    if s[k] == "{":
        if len(s) - k > 2 and s[k + 1] in _SPECIAL and s[k + 2] == "}":
            return s[k + 1], 3
        close = s.find("}", k + 1)
        if close == -1:
            return "", 1  # bad syntax: "${" is eaten
        if close == k + 1:
            return "", 2  # "${}" is eaten
        return s[k + 1 : close], close - k + 1
    if s[k] in _SPECIAL:
        return s[k], 1
    e = k
    while e < len(s) and _is_alnum(s[e]):
        e += 1
    return s[k:e], e - k


def _decode_text_file(data: bytes) -> bytes:
    """restic textfile.Decode: drop a UTF-8 BOM, convert UTF-16 (with BOM) to UTF-8."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:]
    if data.startswith((b"\xfe\xff", b"\xff\xfe")):
        return data.decode("utf-16", "replace").encode("utf-8", "surrogateescape")
    return data


def _lines(data: bytes) -> list[bytes]:
    """Go bufio.ScanLines: split at \\n, drop one trailing \\r, no empty last line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def _read(source: str | bytes | os.PathLike | BinaryIO, what: str) -> bytes:
    if hasattr(source, "read"):
        return source.read()  # type: ignore[union-attr]
    try:
        with open(source, "rb") as f:  # type: ignore[arg-type]
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {os.fsdecode(source)!r}: {exc.strerror or exc}") from None


def read_pattern_file(
    path: str | bytes | os.PathLike, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Patterns from an ``--exclude-file``/``--include-file``, as restic reads them.

    UTF-8 (BOM dropped) or UTF-16 with BOM; each line stripped of white space; empty lines
    and lines starting with ``#`` skipped; environment variables expanded (``$$`` for a
    literal ``$``, no ``~``). Raises ValueError on an unreadable file or a malformed pattern,
    naming the file and line.
    """
    data = _decode_text_file(_read(path, "pattern file"))
    patterns: list[str] = []
    for number, raw in enumerate(_lines(data), 1):
        line = raw.decode("utf-8", "surrogateescape").strip(_GO_SPACE)
        if not line or line.startswith("#"):
            continue
        line = expand_env(line, environ)
        try:
            validate_pattern(line)
        except ValueError as exc:
            raise ValueError(f"{os.fsdecode(path)}:{number}: {exc}") from None
        patterns.append(line)
    return patterns


def collect_patterns(
    patterns: Iterable[PathArg] = (),
    files: Iterable[str | bytes | os.PathLike] = (),
    ipatterns: Iterable[PathArg] = (),
    ifiles: Iterable[str | bytes | os.PathLike] = (),
    environ: Mapping[str, str] | None = None,
) -> PatternGroup:
    """restic's CollectPatterns: ``--exclude`` + ``--exclude-file`` lines (in that order) form
    one case-sensitive list, ``--iexclude`` + ``--iexclude-file`` one insensitive list.

    Patterns given directly are not environment-expanded (the shell did that). Raises
    ValueError on a malformed pattern or an unreadable file.
    """
    sensitive = list(patterns)
    for f in files:
        sensitive += read_pattern_file(f, environ)
    insensitive = list(ipatterns)
    for f in ifiles:
        insensitive += read_pattern_file(f, environ)
    return PatternGroup([PatternList(sensitive), PatternList(insensitive, case_insensitive=True)])


# --- --files-from ----------------------------------------------------------------------------


def read_files_from(
    source: str | bytes | os.PathLike | BinaryIO,
    mode: str = "glob",
    *,
    on_no_match: Callable[[bytes], None] | None = None,
) -> list[bytes]:
    """The paths listed for ``backup --files-from`` (``mode="glob"``), ``--files-from-verbatim``
    (``"verbatim"``) or ``--files-from-raw`` (``"raw"``).

    ``source`` is a file name or an open binary file (pass ``sys.stdin.buffer`` for ``-``).

    * glob: text file (UTF-8, or UTF-16 with BOM); lines stripped; empty lines and ``#``
      comments skipped; each line expanded with :func:`glob`; a line that matches nothing is
      reported to ``on_no_match`` and skipped.
    * verbatim: text file; every non-empty line is a path, as is (no stripping, no comments).
    * raw: every name ends with a NUL byte; any bytes allowed. A missing final NUL or an empty
      name is an error.

    Raises ValueError on an unreadable file, a malformed glob or a malformed raw listing.
    """
    what = {"glob": "--files-from", "verbatim": "--files-from-verbatim", "raw": "--files-from-raw"}
    if mode not in what:
        raise ValueError(f"unknown files-from mode {mode!r}")
    data = _read(source, f"{what[mode]} file")
    if mode == "raw":
        if not data:
            return []
        if not data.endswith(b"\0"):
            raise ValueError("--files-from-raw: trailing zero byte missing")
        names = data[:-1].split(b"\0")
        if b"" in names:
            raise ValueError("--files-from-raw: empty filename in listing")
        return names
    lines = _lines(_decode_text_file(data))
    if mode == "verbatim":
        return [ln for ln in lines if ln]
    paths: list[bytes] = []
    for raw in lines:
        line = raw.decode("utf-8", "surrogateescape").strip(_GO_SPACE)
        if not line or line.startswith("#"):
            continue
        pattern = line.encode("utf-8", "surrogateescape")
        expanded = glob(pattern)
        if not expanded and on_no_match is not None:
            on_no_match(pattern)
        paths += expanded
    return paths


def _has_meta(path: bytes) -> bool:
    return any(c in path for c in (b"*", b"?", b"[", b"\\"))


def _component_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    rx = re.compile(_component_regex(pattern.decode("utf-8", "surrogateescape"))[0] + r"\Z")
    return lambda name: rx.match(name.decode("utf-8", "surrogateescape")) is not None


def glob(pattern: PathArg) -> list[bytes]:
    """Go's ``filepath.Glob`` on bytes (sorted names, dot files included, symlinks followed
    for directories), extended like restic's ``--files-from`` so a ``**`` component matches
    any number of directories. Raises ValueError on a malformed pattern.
    """
    pat = pattern if isinstance(pattern, bytes) else os.fsencode(pattern)
    try:
        for part in pat.split(b"/"):  # validate every component up front, as Go does
            _component_regex(part.decode("utf-8", "surrogateescape"))
    except ValueError as exc:
        raise ValueError(f"invalid pattern {os.fsdecode(pat)!r}: {exc}") from None
    return _glob_recursive(pat) if b"**" in pat else _glob(pat)


def _glob(pat: bytes) -> list[bytes]:
    if not _has_meta(pat):
        return [pat] if os.path.lexists(pat) else []
    cut = pat.rfind(b"/") + 1
    directory, name = pat[:cut], pat[cut:]
    directory = b"." if not directory else directory if directory == b"/" else directory[:-1]
    match = _component_matcher(name)
    if not _has_meta(directory):
        return _glob_in(directory, match)
    found: list[bytes] = []
    for d in _glob(directory):
        found += _glob_in(d, match)
    return found


def _glob_in(directory: bytes, match: Callable[[bytes], bool]) -> list[bytes]:
    if not os.path.isdir(directory):
        return []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []  # Go's glob ignores unreadable directories too
    return [_go_clean(directory + b"/" + n) for n in names if match(n)]


def _glob_recursive(pat: bytes) -> list[bytes]:
    text = pat.decode("utf-8", "surrogateescape")
    plist = PatternList([text], negation=False)
    parts = _go_clean(pat).split(b"/")
    static: list[bytes] = []
    for part in parts:
        if _has_meta(part):
            break
        static.append(part)
    root = b"/".join(static) or (b"/" if pat.startswith(b"/") else b".")
    found: list[bytes] = []

    def walk(path: bytes) -> None:
        if plist.matches(path):
            found.append(path)  # everything below matches too; the directory covers it
            return
        if path != root and not plist.child_may_match(path):
            return
        try:
            with os.scandir(path) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except OSError:
            return
        for name, is_dir in sorted(entries):
            child = _go_clean(path + b"/" + name)
            if is_dir:
                walk(child)
            elif plist.matches(child):
                found.append(child)

    if os.path.lexists(root):
        if os.path.isdir(root) and not os.path.islink(root):
            walk(root)
        elif plist.matches(root):
            found.append(root)
    return sorted(found)
