"""Path patterns with restic's semantics: ``--exclude``, ``--include``, ``find``.

Reading patterns and paths from files (``--exclude-file``, ``--files-from``) and ``glob``
are in ``dedupe/filelists.py``.

The rules (restic ``internal/filter/filter.go``, ``doc/040_backup.rst``):

* A pattern is cleaned like Go's ``filepath.Clean`` (``//`` collapsed, ``.`` and ``..``
  resolved, trailing ``/`` dropped) and split into components. Each component is a Go
  ``filepath.Match`` glob: ``*`` (never crosses ``/``), ``?`` (one character), ``[a-z]``,
  ``[^a-z]`` (``^`` negates, ``!`` does not), ``\\x`` for a literal ``x``. A component that
  is exactly ``**`` matches any number of path components, zero included.
* A pattern starting with ``/`` is anchored at the root; any other behaves as ``/**/pattern``.
* A pattern matches a path when it matches the path *or one of its parent directories*, so
  ``/bin`` matches ``/bin/bash`` and excluding a directory excludes everything in it.
* In a list, ``!pattern`` cancels earlier matches (restic >= 0.13, like gitignore): the last
  pattern that matches decides. As a directory's match covers its contents, nothing below an
  excluded directory comes back unless the ``!`` pattern also matches the directory.
* ``child_may_match(dir)`` is restic's ``ChildMatch`` (restore ``--include`` uses it to decide
  whether to descend): unanchored patterns always may; anchored ones compare their
  components up to the first ``**`` with the directory's.
* Case-insensitive lists (``--iexclude`` ...) lowercase the pattern and every path.

Paths are ``bytes`` as stored (``str`` is taken as ``os.fsdecode`` gives it). Matching works
on characters: bytes are decoded as UTF-8 with ``surrogateescape``, so an invalid byte is one
character for ``?``, like a Go rune, and stays distinct from every other byte. Each list is
compiled once into two regular expressions (anchored, unanchored); ``matches`` costs two
regex calls unless a ``!`` pattern has to be consulted.

Deliberate differences from restic, all in corner cases:

* Each ``**`` may match zero components. restic's expansion loop bounds every ``**`` as if
  the *other* ``**`` parts took one component each, so ``a/**/**/x`` fails on ``/a/x`` and
  ``foo/**/bar/**/x`` on the relative ``foo/bar/x`` (both match once the path is deeper).
* ``--iexclude`` keeps invalid UTF-8 bytes distinct (Go's ``strings.ToLower`` turns each into
  U+FFFD). Lowercasing is Python's ``str.lower`` (full case mapping), not Go's per-rune one.
* A glob never matches part of a valid multi-byte character (Go's can, for patterns that
  hold stray UTF-8 continuation bytes).
* ``child_may_match(b"/")`` is true; restic's says false (it never asks about the root).
* ``PatternList(negation=False)`` (for ``find``) keeps a leading ``!`` as a literal
  character; restic's ``find`` silently drops it.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from typing import AnyStr, Protocol

__all__ = [
    "PatternList",
    "PatternGroup",
    "exclude_selector",
    "include_selector",
    "validate_pattern",
]

PathArg = bytes | str

_ANY_COMPONENT = "(?:/[^/]*)"
_SURROGATES = (0xDC80, 0xDCFF)  # where surrogateescape puts invalid bytes
_NEVER = re.compile(r"(?!)")
_REST = "[^/]*+"  # a trailing '*': the rest of the component


def _text(path: PathArg) -> str:
    if isinstance(path, bytes):
        return path.decode("utf-8", "surrogateescape")
    if isinstance(path, str):
        return path
    raise TypeError(f"path must be bytes or str, not {type(path).__name__}")


def _go_clean(path: AnyStr) -> AnyStr:
    """Go's filepath.Clean: like posixpath.normpath, except a leading ``//`` becomes ``/``."""
    cleaned = posixpath.normpath(path)
    return cleaned[1:] if cleaned[:2] in ("//", b"//") else cleaned


# --- one component: Go filepath.Match -> regular expression -----------------------------


def _class_regex(ranges: list[tuple[int, int]], negated: bool) -> str:
    """A regex for one Go character class over a single path character (never ``/``).

    Go decodes an invalid byte as U+FFFD; here it is a surrogate in DC80-DCFF, so those
    surrogates are in the class exactly when U+FFFD is. Python rejects reversed ranges, which
    Go accepts as empty: they are dropped.
    """
    wanted: list[tuple[int, int]] = []
    fffd = False
    for lo, hi in ranges:
        if lo > hi:
            continue
        fffd = fffd or lo <= 0xFFFD <= hi
        # Cut out '/' (paths are matched whole, so a class must not cross components) and
        # the escape surrogates (handled through U+FFFD above).
        wanted.extend(_subtract((lo, hi), [(0x2F, 0x2F), _SURROGATES]))
    if fffd:
        wanted.append(_SURROGATES)
    body = "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in wanted)
    if negated:
        return f"[^/{body}]"
    return f"[{body}]" if body else "(?!)"


def _subtract(span: tuple[int, int], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = [span]
    for h_lo, h_hi in holes:
        nxt = []
        for a, b in pieces:
            if b < h_lo or a > h_hi:
                nxt.append((a, b))
                continue
            if a < h_lo:
                nxt.append((a, h_lo - 1))
            if b > h_hi:
                nxt.append((h_hi + 1, b))
        pieces = nxt
    return pieces


def _component_regex(part: str) -> tuple[str, bool]:
    """Translate one path component of a pattern; returns (regex, is_literal).

    Raises ValueError (message without the pattern) where Go returns ErrBadPattern.
    """
    # Elements between stars form "chunks" of fixed width. Like Go's Match, the chunk after
    # a star is taken at its leftmost fit and never reconsidered, an atomic (?>...) group:
    # exact, because a component cannot end anywhere but at the next '/', and it keeps
    # "*a*a*a*b" linear where plain backtracking is exponential. The last chunk must end the
    # component, so it keeps the ordinary star; a trailing star takes everything left.
    chunks: list[list[str]] = [[]]
    literal = True
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        if c == "*":
            literal = False
            while i < n and part[i] == "*":
                i += 1
            chunks.append([])
            continue
        out = chunks[-1]
        if c == "?":
            literal = False
            out.append("[^/]")
        elif c == "\\":
            literal = False
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            i += 1
            out.append(re.escape(part[i]))
        elif c == "[":
            literal = False
            i += 1
            negated = i < n and part[i] == "^"
            if negated:
                i += 1
            ranges: list[tuple[int, int]] = []
            while True:
                if i < n and part[i] == "]" and ranges:
                    break
                lo, i = _class_char(part, i)
                hi = lo
                if part[i] == "-":  # _class_char guarantees i < n
                    hi, i = _class_char(part, i + 1)
                ranges.append((lo, hi))
            out.append(_class_regex(ranges, negated))
        else:
            out.append(re.escape(c))
        i += 1
    regex = "".join(chunks[0])
    for k, chunk in enumerate(chunks[1:], 2):
        body = "".join(chunk)
        if not body:
            regex += _REST  # only the last chunk can be empty: stars were merged
        elif k == len(chunks):
            regex += "[^/]*" + body
        else:
            regex += f"(?>[^/]*?{body})"
    return regex, literal


def _class_char(part: str, i: int) -> tuple[int, int]:
    """Go's getEsc: one (possibly escaped) class member at ``i``; returns (codepoint, next i)."""
    n = len(part)
    if i >= n:
        raise ValueError("unclosed character class '['")
    if part[i] in "-]":
        raise ValueError(f"unescaped {part[i]!r} in character class")
    if part[i] == "\\":
        i += 1
        if i >= n:
            raise ValueError("unclosed character class '['")
    c = part[i]
    if 0xDC80 <= ord(c) <= 0xDCFF:
        raise ValueError("invalid UTF-8 in character class")
    if i + 1 >= n:
        raise ValueError("unclosed character class '['")
    return ord(c), i + 1


# --- whole patterns --------------------------------------------------------------------------


class _Pattern:
    """One compiled pattern: its regex over the whole path and its ChildMatch prefix."""

    __slots__ = ("source", "negated", "anchored", "regex", "find", "prefix")

    def __init__(self, source: str, case_insensitive: bool, negation: bool) -> None:
        self.source = source
        text = source.lower() if case_insensitive else source
        self.negated = negation and text.startswith("!")
        if self.negated:
            text = text[1:]
        parts = _go_clean(text).split("/")
        self.anchored = parts[0] == ""
        if self.anchored:
            parts = parts[1:]  # "/" leaves [""], which restic treats like "**"
        # Tokens: None = "**", "" = exactly one arbitrary component, else "/component-regex".
        tokens: list[str | None] = []
        # Components before the first "**": compared one by one by child_may_match.
        prefix: list[str | re.Pattern[str] | None] = []
        in_prefix = self.anchored
        for part in parts:
            if part in ("**", ""):
                tokens.append(None)
                in_prefix = False
                continue
            try:
                rx, literal = _component_regex(part)
            except ValueError as exc:
                raise ValueError(f"invalid pattern {source!r}: {exc}") from None
            only_stars = rx == _REST
            tokens.append("" if only_stars else "/" + rx)
            if in_prefix:
                prefix.append(None if only_stars else part if literal else re.compile(rx))
        self.prefix = prefix if self.anchored else None
        # An unanchored pattern is "/**/pattern". Rather than spelling out the leading "**"
        # (a backtracking loop per pattern), it is searched for: every token starts with '/',
        # so a search can only start on a component boundary. Any "**" at the front of the
        # pattern is absorbed the same way; its "*" components remain, exactly that many.
        if not self.anchored:
            i = singles = 0
            while i < len(tokens) and (tokens[i] is None or tokens[i] == ""):
                singles += tokens[i] == ""
                i += 1
            tokens = [""] * singles + tokens[i:]
        regex = _join_tokens(tokens)
        if not self.anchored and regex.startswith("/[^/]*") and not regex.startswith("/" + _REST):
            # "*.o" anywhere: a search for ".o" already starts anywhere inside a component,
            # and no token can match '/', so the "/[^/]*" in front adds nothing but work.
            regex = regex[len("/[^/]*") :]
        self.regex = regex + r"(?=/|\Z)"
        if self.anchored:
            self.find = re.compile(r"\A" + self.regex).match
        else:
            self.find = re.compile(self.regex).search

    def match(self, text: str) -> bool:
        """Match a path already decoded (and lowercased); relative paths get a '/' in front."""
        if text[:1] == "/":
            return self.find(text) is not None
        return not self.anchored and self.find("/" + text) is not None

    def child_may_match(self, components: list[str] | None) -> bool:
        """restic ChildMatch; ``components`` of an absolute dir, None for a relative one."""
        if self.prefix is None:
            return True  # an unanchored pattern can always match further down
        if components is None:
            return False
        for want, have in zip(self.prefix, components):
            if want is None:
                continue
            if isinstance(want, str):
                if want != have:
                    return False
            elif want.fullmatch(have) is None:
                return False
        return True


def _join_tokens(tokens: list[str | None]) -> str:
    """Concatenate tokens; a run of "**" and "*" components becomes one counted repetition.

    Adjacent "**"s (and "**/*/**") would otherwise nest quantifiers and backtrack
    polynomially on paths that do not match; the run's meaning is just "at least k
    components" (k = number of "*" components), or exactly k without a "**".
    """
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok is not None and tok != "":
            out.append(tok)
            i += 1
            continue
        singles, open_ended = 0, False
        while i < len(tokens) and (tokens[i] is None or tokens[i] == ""):
            if tokens[i] is None:
                open_ended = True
            else:
                singles += 1
            i += 1
        if open_ended:
            out.append(f"{_ANY_COMPONENT}{{{singles},}}" if singles else f"{_ANY_COMPONENT}*")
        else:
            out.append(f"{_ANY_COMPONENT}{{{singles}}}")
    return "".join(out)


def _alternation(regexes: list[str], anchor: str) -> Callable[[str], object]:
    if not regexes:
        return _NEVER.match
    if all(r.startswith("/") for r in regexes):
        # one leading '/' lets the regex engine skip to candidate positions quickly
        body = "/(?:" + "|".join(r[1:] for r in regexes) + ")"
    else:
        body = "(?:" + "|".join(regexes) + ")"
    rx = re.compile(anchor + body)
    return rx.match if anchor else rx.search


def validate_pattern(pattern: PathArg) -> None:
    """Raise ValueError (one line, naming the pattern) if ``pattern`` is malformed in Go's sense.

    The empty pattern is valid: pattern lists ignore it, as restic does.
    """
    text = _text(pattern)
    if text:
        _Pattern(text, False, True)


class PathMatcher(Protocol):
    """What a backup's excludes, a restore's includes and excludes and ``find`` need of a
    pattern list (``PatternList`` and ``PatternGroup`` fit)."""

    def matches(self, path: bytes) -> bool: ...


class PatternList:
    """An ordered list of patterns with ``!`` negation, compiled once.

    ``matches(path)`` is restic's ``filter.List``; ``child_may_match(dir)`` the child half of
    ``filter.ListWithChild``. An empty list (empty patterns are dropped) is false and matches
    nothing.
    """

    def __init__(
        self,
        patterns: Iterable[PathArg],
        case_insensitive: bool = False,
        *,
        negation: bool = True,
    ) -> None:
        self.case_insensitive = case_insensitive
        texts = [t for t in map(_text, patterns) if t]
        self._patterns = [_Pattern(t, case_insensitive, negation) for t in texts]
        self.patterns: tuple[str, ...] = tuple(texts)
        self._any_negated = any(p.negated for p in self._patterns)
        # All positive patterns as two regexes: anchored ones matched at the start, the others
        # searched for. A path no positive pattern matches is not selected, whatever follows;
        # that is the common case and costs two regex calls.
        positive = [p for p in self._patterns if not p.negated]
        self._anchored = _alternation([p.regex for p in positive if p.anchored], r"\A")
        self._floating = _alternation([p.regex for p in positive if not p.anchored], "")
        self._reversed = self._patterns[::-1]

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def __len__(self) -> int:
        return len(self._patterns)

    def __repr__(self) -> str:
        ci = ", case_insensitive=True" if self.case_insensitive else ""
        return f"PatternList({list(self.patterns)!r}{ci})"

    def _prepare(self, path: PathArg) -> str:
        text = path.decode("utf-8", "surrogateescape") if type(path) is bytes else _text(path)
        if not text:
            raise ValueError("cannot match the empty path")
        return text.lower() if self.case_insensitive else text

    def matches(self, path: PathArg) -> bool:
        """True if the list selects ``path`` (or a parent of it), negation applied."""
        text = self._prepare(path)
        if text[0] == "/":
            if self._anchored(text) is None and self._floating(text) is None:
                return False
        elif self._floating("/" + text) is None:
            return False
        if not self._any_negated:
            return True
        for p in self._reversed:  # the last pattern that matches decides
            if p.match(text):
                return not p.negated
        return False  # unreachable: a positive pattern matched

    def child_may_match(self, dir_path: PathArg) -> bool:
        """True if something below ``dir_path`` may match (restore must descend into it)."""
        text = self._prepare(dir_path)
        components = None if text[0] != "/" else ([] if text == "/" else text[1:].split("/"))
        for p in reversed(self._patterns):
            if p.negated:
                if p.match(text):
                    return False
            elif p.child_may_match(components):
                return True
        return False


class PatternGroup:
    """Several lists applied side by side (``--exclude`` and ``--iexclude``): any one decides.

    A ``!`` pattern only cancels matches of its own list, as in restic.
    """

    def __init__(self, lists: Iterable[PatternList] = ()) -> None:
        self.lists = tuple(pl for pl in lists if pl)

    def __bool__(self) -> bool:
        return bool(self.lists)

    def __repr__(self) -> str:
        return f"PatternGroup({list(self.lists)!r})"

    def matches(self, path: PathArg) -> bool:
        return any(pl.matches(path) for pl in self.lists)

    def child_may_match(self, dir_path: PathArg) -> bool:
        return any(pl.child_may_match(dir_path) for pl in self.lists)


def include_selector(includes: PatternList | PatternGroup) -> Callable[[PathArg, bool], tuple[bool, bool]]:
    """restic restore with ``--include``: (restore this node?, descend into it?)."""

    def select(path: PathArg, is_dir: bool) -> tuple[bool, bool]:
        selected = includes.matches(path)
        return selected, is_dir and (selected or includes.child_may_match(path))

    return select


def exclude_selector(excludes: PatternList | PatternGroup) -> Callable[[PathArg, bool], tuple[bool, bool]]:
    """restic restore with ``--exclude``: an excluded directory is not entered at all."""

    def select(path: PathArg, is_dir: bool) -> tuple[bool, bool]:
        selected = not excludes.matches(path)
        return selected, selected and is_dir

    return select
