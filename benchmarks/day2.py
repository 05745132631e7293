"""The "day 2" mutation of a generated corpus: what a server's file system does in a day.

- edits in about 3% of the small text files (a line replaced, inserted or deleted),
- appends to every live log, and one logrotate (log -> log.1 -> log.2, old .gz deleted),
- inserts in the middle of the SQL dump (three places: content-defined chunking must resync
  after each shift and deduplicate the rest) plus an append,
- in-place overwrites in the VM image: 64 KiB extents and 4 KiB pages in a hot area of 2%,
  plus four metadata pages elsewhere,
- deletes (2%), renames (2%) and rewrites (1%) of binaries,
- one source directory deleted and another renamed (its content must deduplicate),
- new source files, new media files and a new package.

The choices depend only on the seed and on the corpus (file lists are sorted), so the same day-1
corpus and seed always give the same day-2 bytes. Applied once; applying it again mutates again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .corpus import BASE_TIME, MARKER, MEDIA_SIZES, PIECE, TEXT_SIZES
from .textgen import LinePool, Rng, exe_like, log_lines, make_identifiers, sql_rows

TEXT_LANG = {".py": "py", ".c": "c", ".h": "c", ".js": "js", ".md": "md", ".conf": "conf",
             ".sh": "conf"}
BINARY_DIRS = ("usr/lib/", "var/www/media/", "var/cache/apt/")


def _listing(root: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                out.append((os.path.relpath(path, root), os.path.getsize(path)))
    return sorted(out)


def _rewrite_with_inserts(path: Path, inserts: dict[int, bytes], append: bytes) -> None:
    """Streams ``path`` into a new file with ``inserts`` (offset -> bytes) spliced in."""
    tmp = path.with_name(path.name + ".day2-tmp")
    mode = path.stat().st_mode & 0o7777
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        pos = 0
        for offset in sorted(inserts) + [None]:
            while offset is None or pos < offset:
                want = PIECE if offset is None else min(PIECE, offset - pos)
                data = src.read(want)
                if not data:
                    break
                dst.write(data)
                pos += len(data)
            if offset is None:
                break
            dst.write(inserts[offset])
        dst.write(append)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _line_start_after(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        window = f.read(64 * 1024)
    nl = window.find(b"\n")
    return offset + nl + 1 if nl >= 0 else offset


def mutate(root: Path, seed: int) -> dict:
    if not (root / MARKER).exists():
        raise FileNotFoundError(f"{root} is not a generated corpus (no {MARKER})")
    rng = Rng(seed, "day2")
    files = _listing(root)
    total = sum(size for _, size in files)
    pools = {lang: LinePool(lang, seed) for lang in set(TEXT_LANG.values())}
    gone: set[str] = set()
    st = {"edited": 0, "appended_bytes": 0, "inserted_bytes": 0, "overwritten_bytes": 0,
          "deleted": 0, "renamed": 0, "rewritten": 0, "new_files": 0, "new_bytes": 0}

    # small text edits
    texts = [rel for rel, size in files if Path(rel).suffix in TEXT_LANG and 0 < size < 256_000]
    for rel in rng.sample(texts, max(1, len(texts) // 33)):
        pool = pools[TEXT_LANG[Path(rel).suffix]]
        lines = (root / rel).read_bytes().split(b"\n")
        at = rng.below(len(lines))
        op = rng.below(10)
        new = pool.text(rng, rng.between(30, 400)).split(b"\n")[:-1] or [b"# edited"]
        if op < 5:
            lines[at : at + 1] = new[:1]
        elif op < 8:
            lines[at:at] = new
        else:
            del lines[at]
        (root / rel).write_bytes(b"\n".join(lines))  # same inode and mode: an in-place save
        st["edited"] += 1

    # logs: appends everywhere, one logrotate
    logs = [rel for rel, _ in files if rel.startswith("var/log/") and rel.endswith(".log")]
    for rel in logs:
        svc = Path(rel).stem
        data, _ = log_lines(rng.child("log", svc), max(512, (root / rel).stat().st_size // 30),
                            BASE_TIME + 86400, svc)
        with open(root / rel, "ab") as f:
            f.write(data)
        st["appended_bytes"] += len(data)
    if logs:
        rotated = root / rng.choice(logs)
        mode = rotated.stat().st_mode & 0o7777
        gz = rotated.with_name(rotated.name + ".2.gz")
        if gz.exists():
            gz.unlink()
            gone.add(str(gz.relative_to(root)))
            st["deleted"] += 1
        for src, dst in ((".1", ".2"), ("", ".1")):
            a = rotated.with_name(rotated.name + src)
            if a.exists():
                os.rename(a, rotated.with_name(rotated.name + dst))
                gone.add(str(a.relative_to(root)))
                st["renamed"] += 1
        data, _ = log_lines(rng.child("log", "fresh"), 4096, BASE_TIME + 86400, rotated.stem)
        rotated.write_bytes(data)
        os.chmod(rotated, mode)
        st["new_files"] += 1
        st["new_bytes"] += len(data)

    # SQL dumps: three inserts in the middle, one append
    for rel, size in files:
        if not rel.endswith(".sql"):
            continue
        path = root / rel
        inserts = {}
        for quarter in (1, 2, 3):
            offset = _line_start_after(path, size * quarter // 4 + rng.below(max(1, size // 8)))
            data, _, _ = sql_rows(rng, max(1024, size // 1000), 10_000_000 * quarter, BASE_TIME)
            inserts[offset] = data
            st["inserted_bytes"] += len(data)
        append, _, _ = sql_rows(rng, max(2048, size // 200), 90_000_000, BASE_TIME + 86400)
        _rewrite_with_inserts(path, inserts, append)
        st["appended_bytes"] += len(append)

    # VM images: in-place overwrites, clustered as a guest's writes are (journal, databases,
    # logs inside the guest land in a small hot area), plus a few metadata pages elsewhere
    for rel, size in files:
        if not rel.endswith(".img") or size < 1 << 20:
            continue
        hot_len = max(256 * 1024, size // 50) // 4096 * 4096
        hot = rng.below((size - hot_len) // 4096 + 1) * 4096
        with open(root / rel, "r+b") as f:
            for _ in range(16):
                f.seek(hot + rng.below(max(1, (hot_len - 65536) // 4096)) * 4096)
                f.write(rng.bytes(65536))
                st["overwritten_bytes"] += 65536
            for _ in range(16):
                f.seek(hot + rng.below(hot_len // 4096) * 4096)
                f.write(exe_like(rng, 4096))
                st["overwritten_bytes"] += 4096
            for offset in [0] + [rng.below(size // 4096) * 4096 for _ in range(3)]:
                f.seek(offset)
                f.write(exe_like(rng, 4096))
                st["overwritten_bytes"] += 4096

    # binaries: delete, rename, rewrite
    binaries = [(rel, size) for rel, size in files if rel.startswith(BINARY_DIRS)]
    picked = rng.sample(binaries, max(3, len(binaries) * 5 // 100))
    n = len(picked)
    for i, (rel, size) in enumerate(picked):
        path = root / rel
        if i < n * 2 // 5:
            path.unlink()
            st["deleted"] += 1
        elif i < n * 4 // 5:
            path.rename(path.with_name("renamed-" + path.name))
            st["renamed"] += 1
        else:
            data = exe_like(rng, size) if ".so" in rel else rng.bytes(size)
            path.write_bytes(data)
            st["rewritten"] += 1
            st["new_bytes"] += size
        gone.add(rel)

    # one source directory deleted, another renamed
    src_dirs = sorted({str(Path(rel).parents[len(Path(rel).parts) - 4])
                       for rel, _ in files if rel.startswith("srv/") and len(Path(rel).parts) >= 4})
    if len(src_dirs) >= 2:
        doomed, moved = rng.sample(src_dirs, 2)
        if not moved.startswith(doomed + "/") and not doomed.startswith(moved + "/"):
            st["deleted"] += sum(1 for _ in (root / doomed).rglob("*"))
            shutil.rmtree(root / doomed)
            os.rename(root / moved, root / (moved + "_v2"))
            st["renamed"] += 1
            gone.update(rel for rel, _ in files if rel.startswith((doomed + "/", moved + "/")))

    # new files
    names = make_identifiers(rng.child("names"), 400)
    alive_src = [rel for rel, _ in files if rel.startswith("srv/") and rel not in gone
                 and Path(rel).suffix in (".py", ".c", ".js")]
    for i in range(max(2, len(alive_src) // 100)):
        anchor = Path(rng.choice(alive_src)) if alive_src else Path("srv/new/x.py")
        data = pools[TEXT_LANG[anchor.suffix]].text(rng, rng.size(TEXT_SIZES))
        path = root / anchor.parent / f"day2_{names[i % len(names)]}_{i}{anchor.suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        st["new_files"] += 1
        st["new_bytes"] += len(data)
    budget, i = max(1, total // 150), 0
    while budget > 0:
        size = min(budget, rng.size(MEDIA_SIZES))
        path = root / "var/www/media/day2" / f"{names[i % len(names)]}_{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(size))
        budget -= size
        i += 1
        st["new_files"] += 1
        st["new_bytes"] += size
    with open(root / MARKER, "a") as f:
        f.write(f"day-2 mutation applied with seed {seed}\n")
    return st
