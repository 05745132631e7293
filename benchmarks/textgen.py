"""Deterministic random streams and fast generators of realistic-looking text and binary data.

Everything here derives from ``Rng``, a BLAKE3 extendable-output stream keyed by a label. BLAKE3's
output is fixed by its specification, so the same label gives the same bytes on every machine and
with every library version. numpy's ``Generator`` and Python's ``random`` do not promise that (only
``random.random()`` is frozen), so they are never used to pick anything; numpy only does integer
arithmetic on bytes that came from the stream.

Speed matters (a 2 GB corpus must take well under a minute on a shared 2-core machine): text is
assembled from pools of pre-generated lines with one ``bytes.join`` per file or block, never
token by token, and binary data is produced in large slices of the XOF output.
"""

from __future__ import annotations

import numpy as np
from blake3 import blake3

# ---------------------------------------------------------------------------------------------
# the stream


class Rng:
    """A deterministic stream of bytes and small numbers, named by ``label`` parts."""

    _SCALAR_REFILL = 4096

    def __init__(self, *label: object) -> None:
        self._label = "/".join(str(part) for part in label)
        self._hasher = blake3(self._label.encode())
        self._pos = 0
        self._buf = b""
        self._bpos = 0

    def child(self, *label: object) -> "Rng":
        """An independent stream: what the child draws never shifts the parent's stream."""
        return Rng(self._label, *label)

    def bytes(self, n: int) -> bytes:
        out = self._hasher.digest(length=n, seek=self._pos) if n else b""
        self._pos += n
        return out

    def u32(self, n: int) -> np.ndarray:
        return np.frombuffer(self.bytes(4 * n), dtype=np.uint32)

    def indices(self, n: int, k: int) -> np.ndarray:
        """``n`` uniform integers in ``[0, k)`` (multiply-shift, no modulo bias worth noting)."""
        return ((self.u32(n).astype(np.uint64) * np.uint64(k)) >> np.uint64(32)).astype(np.int64)

    def _u64(self) -> int:
        if self._bpos + 8 > len(self._buf):
            self._buf = self.bytes(self._SCALAR_REFILL)
            self._bpos = 0
        value = int.from_bytes(self._buf[self._bpos : self._bpos + 8], "little")
        self._bpos += 8
        return value

    def below(self, n: int) -> int:
        return self._u64() % n if n > 1 else 0

    def between(self, lo: int, hi: int) -> int:
        """Uniform integer in ``[lo, hi]``."""
        return lo + self.below(hi - lo + 1)

    def chance(self, numerator: int, denominator: int = 100) -> bool:
        return self.below(denominator) < numerator

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def sample(self, seq, k: int) -> list:
        """``k`` distinct items in a stream-determined order (partial Fisher-Yates)."""
        pool = list(seq)
        k = min(k, len(pool))
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def size(self, classes: list[tuple[int, int, int]]) -> int:
        """A size drawn from ``(lo, hi, weight)`` classes, uniform inside the chosen class."""
        total = sum(w for _, _, w in classes)
        pick = self.below(total)
        for lo, hi, weight in classes:
            if pick < weight:
                return self.between(lo, hi)
            pick -= weight
        raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# vocabulary (fixed lists keep the text realistic: real words compress like real text)

ENGLISH = """the of and to in is that for it as with was on be by this are from or have an they
which one you were her all she there would their we him been has when who will more no if out so
said what up its about into than them can only other new some could time these two may then do
first any my now such like our over man me even most made after also did many before must through
back years where much your way well down should because each just those people how too little
state good very make world still own see men work long get here between both life being under
never day same another know while last might us great old year off come since against go came
right used take three system data server user service request file error network value memory
process should update record table query cache backup storage client version config default
""".split()

IDENT_PARTS = """get set add put load save read write open close init start stop run handle parse
format build make create delete update find check validate apply reset flush sync send recv
user data buffer config index key value item node list map table row column record entry cache
path name size count offset length time date file dir stream chunk block page pool queue task
job worker thread lock state status error result response request client server session token
header body context manager handler factory builder parser writer reader store repo object
id hash sum total max min temp tmp src dst ptr len idx num val obj cfg ctx msg err buf""".split()

PY_KEYWORDS = ["self", "None", "True", "False", "return", "yield", "await", "lambda"]
EXCEPTIONS = ["ValueError", "KeyError", "RuntimeError", "TypeError", "OSError", "IOError"]
C_TYPES = ["int", "size_t", "char *", "const char *", "uint32_t", "uint64_t", "void *", "bool"]
SERVICES = ["sshd", "nginx", "postgres", "cron", "systemd", "kernel", "dockerd", "app", "redis"]
HOSTS = ["web01", "web02", "db01", "cache01", "backup01"]
STATUSES = ["active", "inactive", "pending", "suspended", "deleted"]


def make_identifiers(rng: Rng, count: int) -> list[str]:
    idents = []
    for i in range(count):
        parts = [rng.choice(IDENT_PARTS) for _ in range(1 + rng.below(3))]
        if i % 3 == 0:
            idents.append(parts[0] + "".join(p.capitalize() for p in parts[1:]))
        else:
            idents.append("_".join(parts))
    return idents


def _words(rng: Rng, lo: int, hi: int) -> str:
    return " ".join(rng.choice(ENGLISH) for _ in range(rng.between(lo, hi)))


# ---------------------------------------------------------------------------------------------
# line pools: each language gets a pool of distinct lines; files are random walks through the
# pool. A pool is a few MB, larger than a file, so a single file compresses like real source
# (about 3x with zstd), while the pool's vocabulary is shared across files as in a real tree.


def _py_line(rng: Rng, ids: list[str]) -> str:
    a, b, c, d = (rng.choice(ids) for _ in range(4))
    ind = "    " * rng.below(4)
    n = rng.below(4096)
    kind = rng.below(14)
    if kind == 0:
        return f"def {a}({b}, {c}={n}):"
    if kind == 1:
        return f"{ind}return {a}.{b}({c}, {d})"
    if kind == 2:
        return f"{ind}{a} = {b}.{c}({n})"
    if kind == 3:
        return f"{ind}if {a} is None or {b} > {n}:"
    if kind == 4:
        return f'{ind}raise {rng.choice(EXCEPTIONS)}("{_words(rng, 3, 8)}")'
    if kind == 5:
        return f"from {a}.{b} import {c}"
    if kind == 6:
        return f"class {a.capitalize()}({b.capitalize()}):"
    if kind == 7:
        return f"{ind}# {_words(rng, 4, 12)}"
    if kind == 8:
        return f"{ind}for {a} in {b}.{c}():"
    if kind == 9:
        return f"{ind}self.{a}[{b}] = {c}"
    if kind == 10:
        return f'{ind}"""{_words(rng, 5, 14).capitalize()}."""'
    if kind == 11:
        return f"{ind}{a} = {{'{b}': {n}, '{c}': {rng.choice(PY_KEYWORDS)}}}"
    if kind == 12:
        return ""
    return f"{ind}log.debug('{_words(rng, 2, 6)} %s', {a})"


def _c_line(rng: Rng, ids: list[str]) -> str:
    a, b, c = (rng.choice(ids) for _ in range(3))
    ind = "\t" * rng.below(3)
    n = rng.below(65536)
    kind = rng.below(12)
    if kind == 0:
        return f"static {rng.choice(C_TYPES)} {a}(struct {b} *{c}, size_t len)"
    if kind == 1:
        return f"{ind}if ({a}->{b} == NULL || {c} < {n})"
    if kind == 2:
        return f"{ind}{a} = {b}({c}, {n});"
    if kind == 3:
        return f"{ind}return -E{rng.choice(['INVAL', 'NOMEM', 'IO', 'AGAIN'])};"
    if kind == 4:
        return f"{ind}/* {_words(rng, 4, 12)} */"
    if kind == 5:
        return f"#define {a.upper()}_{b.upper()} 0x{n:04x}"
    if kind == 6:
        return f"{ind}for (i = 0; i < {a}->{b}; i++) {{"
    if kind == 7:
        return f'{ind}pr_debug("{_words(rng, 2, 6)}: %d\\n", {a});'
    if kind == 8:
        return f"#include <{a}/{b}.h>"
    if kind in (9, 10):
        return f"{ind}}}"
    return ""


def _js_line(rng: Rng, ids: list[str]) -> str:
    a, b, c = (rng.choice(ids) for _ in range(3))
    ind = "  " * rng.below(4)
    kind = rng.below(11)
    if kind == 0:
        return f"export function {a}({b}, {c}) {{"
    if kind == 1:
        return f"{ind}const {a} = await {b}.{c}();"
    if kind == 2:
        return f"{ind}if (!{a} || {a}.length === 0) return null;"
    if kind == 3:
        return f"import {{ {a}, {b} }} from './{c}';"
    if kind == 4:
        return f"{ind}// {_words(rng, 4, 12)}"
    if kind == 5:
        return f"{ind}{a}.{b} = `{_words(rng, 2, 5)} ${{{c}}}`;"
    if kind == 6:
        return f"{ind}}});"
    if kind == 7:
        return f"{ind}return {{ {a}: {b}, {c}: {rng.below(1000)} }};"
    if kind == 8:
        return f"{ind}}}"
    return ""


def _doc_line(rng: Rng, ids: list[str]) -> str:
    kind = rng.below(8)
    if kind == 0:
        return "#" * rng.between(1, 3) + " " + _words(rng, 2, 6).title()
    if kind == 1:
        return ""
    if kind == 2:
        return f"- `{rng.choice(ids)}`: {_words(rng, 4, 12)}"
    return _words(rng, 8, 20).capitalize() + "."


def _conf_line(rng: Rng, ids: list[str]) -> str:
    kind = rng.below(9)
    a = rng.choice(ids)
    if kind == 0:
        return f"# {_words(rng, 3, 12)}"
    if kind == 1:
        return f"[{a}]"
    if kind == 2:
        return ""
    if kind == 3:
        return f"{a} = /var/lib/{rng.choice(ids)}/{rng.choice(ids)}"
    if kind == 4:
        return f"{a} = {rng.choice(['yes', 'no', 'true', 'false', 'on', 'off'])}"
    return f"{a} = {rng.below(100000)}"


LANGUAGES = {"py": _py_line, "c": _c_line, "js": _js_line, "md": _doc_line, "conf": _conf_line}


class LinePool:
    """A pool of ``size`` distinct lines of one language; ``text(rng, n)`` walks through it."""

    def __init__(self, lang: str, seed: int, size: int = 16384) -> None:
        rng = Rng(seed, "pool", lang)
        ids = make_identifiers(rng.child("ids"), 3000)
        make = LANGUAGES[lang]
        self.lines = np.array([(make(rng, ids) + "\n").encode() for _ in range(size)], dtype=object)
        self.mean = sum(len(x) for x in self.lines.tolist()) / size

    def text(self, rng: Rng, nbytes: int) -> bytes:
        """About ``nbytes`` (never fewer, then cut) of lines drawn from the pool."""
        if nbytes <= 0:
            return b""
        out = b""
        while len(out) < nbytes:
            count = int((nbytes - len(out)) / self.mean * 1.1) + 2
            out += b"".join(self.lines[rng.indices(count, len(self.lines))].tolist())
        return out[:nbytes]


# ---------------------------------------------------------------------------------------------
# logs and SQL: formatted row by row from columns drawn in bulk (about 100-300 MB/s)

_LOG_MESSAGES = [
    "Accepted publickey for %s from 10.%d.%d.%d port %d ssh2",
    "GET /api/v1/%s/%d HTTP/1.1 200 %d",
    "POST /api/v1/%s/%d HTTP/1.1 201 %d",
    "connection from 10.%d.%d.%d closed after %d ms by %s",
    "checkpoint complete: wrote %d buffers (%d.%d%%) %s",
    "session %d opened for user %s by (uid=%d)",
    "worker %d finished job %s in %d ms",
    "cache miss for key %s (size %d, ttl %d)",
]
# Each message takes four numbers (a, b, c, d) and one identifier (s) in its own order.
_LOG_ARGS = [
    lambda s, a, b, c, d: (s, a & 255, b & 255, c & 255, d),
    lambda s, a, b, c, d: (s, a, b),
    lambda s, a, b, c, d: (s, a, b),
    lambda s, a, b, c, d: (a & 255, b & 255, c & 255, d, s),
    lambda s, a, b, c, d: (a, b % 100, c % 10, s),
    lambda s, a, b, c, d: (a, s, b),
    lambda s, a, b, c, d: (a, s, b),
    lambda s, a, b, c, d: (s, a, b),
]

_TIME_OF_DAY = np.array([f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60)
                         for s in range(60)], dtype=object)


def _timestamps(times: np.ndarray) -> tuple[list[str], list[str]]:
    """(``YYYY-MM-DD``, ``HH:MM:SS``) lists for int64 epoch seconds, from lookup tables
    (per-element formatting would dominate the cost of logs and dumps)."""
    days = times // 86400
    first = int(days.min())
    names = np.array([_civil_date(d) for d in range(first, int(days.max()) + 1)], dtype=object)
    return names[days - first].tolist(), _TIME_OF_DAY[times % 86400].tolist()


def _civil_date(days: int) -> str:
    # civil-from-days (Howard Hinnant): integer only, so the same everywhere
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return f"{y:04d}-{m:02d}-{d:02d}"


def log_lines(rng: Rng, nbytes: int, start_time: int, service: str) -> tuple[bytes, int]:
    """At least ``nbytes`` of whole syslog-like lines with timestamps increasing from
    ``start_time`` (seconds since the epoch); also returns the last timestamp."""
    host = HOSTS[sum(map(ord, service)) % len(HOSTS)]
    ids = make_identifiers(rng.child("ids"), 200)
    prefixes = [f" {host} {service}[{pid}]: " for pid in range(1000, 1064)]
    chunks: list[bytes] = []
    total = 0
    t = start_time
    while total < nbytes:
        n = max(16, min(50000, (nbytes - total) // 90 + 1))
        times = np.cumsum(rng.indices(n, 30)) + t
        t = int(times[-1])
        dates, tods = _timestamps(times)
        kinds = rng.indices(n, len(_LOG_MESSAGES)).tolist()
        nums = rng.indices(4 * n, 60000).reshape(n, 4).tolist()
        who = rng.indices(n, len(ids)).tolist()
        pids = rng.indices(n, len(prefixes)).tolist()
        lines = [
            f"{dates[i]}T{tods[i]}{prefixes[pids[i]]}"
            f"{_LOG_MESSAGES[k] % _LOG_ARGS[k](ids[who[i]], *nums[i])}\n"
            for i, k in enumerate(kinds)
        ]
        chunk = "".join(lines).encode()
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks), t


SQL_HEADER = b"""-- PostgreSQL database dump (synthetic benchmark data)
SET statement_timeout = 0;
SET client_encoding = 'UTF8';
CREATE TABLE public.accounts (
    id bigint NOT NULL,
    email character varying(255) NOT NULL,
    name text,
    age integer,
    created_at timestamp without time zone,
    balance numeric(12,2),
    status character varying(16),
    token character(24)
);
"""

_SQL_ROW = "(%d,'%s.%s@example.org','%s',%d,'%s %s',%d.%02d,'%s','%s')"
_CAPITALS = {w: w.capitalize() for w in ENGLISH}


def sql_rows(rng: Rng, nbytes: int, first_id: int, start_time: int) -> tuple[bytes, int, int]:
    """At least ``nbytes`` of ``INSERT`` statements of 100 rows each, ids counting up from
    ``first_id``; also returns the next id and the last timestamp, to continue the dump."""
    chunks: list[bytes] = []
    total = 0
    ident = first_id
    t = start_time
    while total < nbytes:
        n = max(100, min(50000, (nbytes - total) // 110 + 100)) // 100 * 100
        times = np.cumsum(rng.indices(n, 97)) + t
        t = int(times[-1])
        dates, tods = _timestamps(times)
        first = [ENGLISH[i] for i in rng.indices(n, len(ENGLISH)).tolist()]
        last = [IDENT_PARTS[i] for i in rng.indices(n, len(IDENT_PARTS)).tolist()]
        ages = (rng.indices(n, 70) + 18).tolist()
        money = rng.indices(n, 10000000).tolist()
        status = [STATUSES[i] for i in rng.indices(n, len(STATUSES)).tolist()]
        token = rng.bytes(12 * n).hex()
        rows = [
            _SQL_ROW % (ident + i, f, last[i], _CAPITALS[f], ages[i], dates[i], tods[i],
                        money[i] // 100, money[i] % 100, status[i], token[24 * i : 24 * i + 24])
            for i, f in enumerate(first)
        ]
        ident += n
        stmts = [
            "INSERT INTO public.accounts VALUES " + ",\n".join(rows[j : j + 100]) + ";\n"
            for j in range(0, n, 100)
        ]
        chunk = "".join(stmts).encode()
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks), ident, t


# ---------------------------------------------------------------------------------------------
# binary content


def exe_like(rng: Rng, nbytes: int) -> bytes:
    """Like a shared library: 4 KiB pages, half random, some low-entropy, some zero."""
    page = 4096
    pages = (nbytes + page - 1) // page
    arr = np.frombuffer(rng.bytes(pages * page), dtype=np.uint8).copy().reshape(pages, page)
    kind = rng.indices(pages, 10)
    arr[(kind >= 5) & (kind < 8)] &= 0x0F  # code/relocations: about 2x compressible
    arr[kind >= 8] = 0  # padding and .bss
    return arr.tobytes()[:nbytes]
