"""The real ``snap`` command in subprocesses: init, key, password sources, exit codes, bad input.

Every bad-input case must print exactly one line on stderr, never a traceback, and leave the
repository byte for byte as it was. These tests pay the default Argon2 cost (64 MiB, 3 passes)
on every open, so they share one repository made once per module and copied per test.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import termios
from pathlib import Path

import msgpack
import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
PW = "cli test password"
PW2 = "another password"


def run(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``snap ARGS`` with a clean environment (no SNAP_* from the caller) plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SNAP_")}
    base["PYTHONPATH"] = ROOT  # this checkout's snap, installed or not
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          env=base, stdin=subprocess.DEVNULL, timeout=120, cwd=cwd)


def snapshot_of(path: Path) -> dict[str, str]:
    """Every file under ``path`` with the hash of its bytes (and every directory)."""
    if not path.exists():
        return {}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("snap: ") and len(lines[0]) > 12
    return lines[0]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A repository made by ``snap init`` holding one small backup."""
    top = tmp_path_factory.mktemp("cli")
    (top / "pw").write_text(PW + "\n")
    src = top / "src"
    (src / "dir").mkdir(parents=True)
    (src / "dir" / "hello.txt").write_text("hello from the cli test\n" * 100)
    (src / "dir" / "big.bin").write_bytes(os.urandom(300_000))  # makes the data pack the largest
    env = {"SNAP_CACHE_DIR": str(top / "cache"), "SNAP_PASSWORD_FILE": str(top / "pw")}
    proc = run("-r", str(top / "repo"), "init", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = run("-r", str(top / "repo"), "backup", "-q", str(src), env=env)
    assert proc.returncode == 0, proc.stderr
    return top


@pytest.fixture
def t(made, tmp_path):
    """This test's copy: t.repo, t.env (password file, own cache), t.pw_file, t.src."""
    shutil.copytree(made / "repo", tmp_path / "repo")
    (tmp_path / "pw").write_text(PW + "\n")
    (tmp_path / "pw2").write_text(PW2)

    class T:
        repo = tmp_path / "repo"
        pw_file = tmp_path / "pw"
        pw2_file = tmp_path / "pw2"
        cache = tmp_path / "cache"
        src = made / "src"
        env = {"SNAP_CACHE_DIR": str(tmp_path / "cache"), "SNAP_PASSWORD_FILE": str(tmp_path / "pw")}

        @classmethod
        def snap(cls, *args, env=None):
            return run("-r", str(cls.repo), *args, env={**cls.env, **(env or {})})

    return T


# ----------------------------------------------------------------------------- good paths


def test_init_creates_a_repository(tmp_path):
    (tmp_path / "pw").write_text(PW)
    env = {"SNAP_CACHE_DIR": str(tmp_path / "cache")}
    proc = run("-r", str(tmp_path / "r"), "--password-file", str(tmp_path / "pw"), "init",
               "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["message_type"] == "initialized" and len(out["id"]) == 64
    names = sorted(snapshot_of(tmp_path / "r"))
    assert "config" in names and sum(n.startswith("keys/") for n in names) == 1
    # the default Argon2 parameters are the floor the design sets
    key = next((tmp_path / "r" / "keys").iterdir())
    d = msgpack.unpackb(key.read_bytes())
    assert d["ops"] >= 3 and d["mem"] >= 64 * 1024 * 1024
    assert proc.stderr == ""


def test_init_with_options(tmp_path):
    (tmp_path / "pw").write_text(PW)
    proc = run("-r", str(tmp_path / "r"), "init", "--pack-size", "4M", "--compression", "0",
               env={"SNAP_PASSWORD_FILE": str(tmp_path / "pw"),
                    "SNAP_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    proc = run("-r", str(tmp_path / "r"), "cat", "config", "--json",
               env={"SNAP_PASSWORD": PW, "SNAP_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["pack_size"] == 4 * 1024 * 1024 and cfg["compression_level"] == 0


def test_key_list(t):
    proc = t.snap("key", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    keys = json.loads(proc.stdout)
    assert len(keys) == 1 and keys[0]["current"] and len(keys[0]["id"]) == 64
    human = t.snap("key", "list")
    assert human.returncode == 0 and keys[0]["id"][:8] in human.stdout


def test_key_add_remove_and_passwd(t):
    proc = t.snap("key", "add", "--new-password-file", str(t.pw2_file), "--json")
    assert proc.returncode == 0, proc.stderr
    new_id = json.loads(proc.stdout)["id"]
    keys = json.loads(t.snap("key", "list", "--json").stdout)
    assert len(keys) == 2
    old_id = next(k["id"] for k in keys if k["current"])
    # the new password opens it, and from there the old key can be removed
    with_pw2 = {"SNAP_PASSWORD_FILE": str(t.pw2_file)}
    listed = json.loads(t.snap("key", "list", "--json", env=with_pw2).stdout)
    assert next(k["id"] for k in listed if k["current"]) == new_id
    proc = t.snap("key", "remove", old_id[:10], env=with_pw2)
    assert proc.returncode == 0, proc.stderr
    one_line_error(t.snap("key", "list"), 12)  # the old password is gone
    # passwd: swap the password of the key in use
    (t.pw_file.parent / "pw3").write_text("third password\n")
    proc = t.snap("key", "passwd", "--new-password-file", str(t.pw_file.parent / "pw3"),
                  env=with_pw2)
    assert proc.returncode == 0, proc.stderr
    one_line_error(t.snap("key", "list", env=with_pw2), 12)
    proc = t.snap("key", "list", "--json", env={"SNAP_PASSWORD_FILE": "", "SNAP_PASSWORD": "third password"})
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 1


@pytest.mark.parametrize("source", ["--password-file", "SNAP_PASSWORD_FILE", "SNAP_PASSWORD",
                                    "SNAP_PASSWORD_COMMAND", "--password-command"])
def test_password_sources(t, source):
    env = {"SNAP_PASSWORD_FILE": ""}
    args = ["key", "list", "--json"]
    if source == "--password-file":
        args = ["--password-file", str(t.pw_file)] + args
    elif source == "SNAP_PASSWORD_FILE":
        env["SNAP_PASSWORD_FILE"] = str(t.pw_file)
    elif source == "SNAP_PASSWORD":
        env["SNAP_PASSWORD"] = PW
    elif source == "SNAP_PASSWORD_COMMAND":
        env["SNAP_PASSWORD_COMMAND"] = f"cat {t.pw_file}"
    else:
        args = ["--password-command", f"printf '%s' '{PW}'"] + args
    proc = t.snap(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["current"]


def test_global_flags_after_the_command(t):
    proc = run("key", "list", "-r", str(t.repo), "--json", "--password-file", str(t.pw_file),
               env={"SNAP_CACHE_DIR": str(t.cache)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["current"]


def test_no_cache_flag(t):
    proc = t.snap("--no-cache", "backup", "-q", str(t.src))
    assert proc.returncode == 0, proc.stderr
    proc = t.snap("--no-cache", "ls", "latest")
    assert proc.returncode == 0, proc.stderr
    assert not t.cache.exists()
    proc = t.snap("ls", "latest")
    assert proc.returncode == 0 and t.cache.exists()


def test_no_plaintext_after_a_cli_backup(t, tmp_path):
    src = tmp_path / "private-src"
    (src / "Geheimprojekt-Ordner").mkdir(parents=True)
    secret = "Meine-Bankverbindung-DE02120300000000202051"
    (src / "Geheimprojekt-Ordner" / "tagebuch-von-alice.txt").write_text(
        (secret + " and more text\n") * 500)
    (src / "small-marker-file.md").write_text("tiny marker text 8472639")
    proc = t.snap("backup", "-q", str(src))
    assert proc.returncode == 0, proc.stderr
    assert t.snap("ls", "latest").returncode == 0  # fills the cache with trees
    needles = [b"Geheimprojekt", b"tagebuch-von-alice", secret.encode(), b"small-marker-file",
               b"tiny marker text 8472639", b"private-src", str(src).encode()]
    for top in (t.repo, t.cache):
        for p in top.rglob("*"):
            rel = str(p.relative_to(top)).encode()
            data = p.read_bytes() if p.is_file() else b""
            for n in needles:
                assert n not in data and n not in rel, (n, p)


# ----------------------------------------------------------------------------- bad input


def _damage(t, what: str) -> None:
    repo = t.repo
    if what == "flip-config":
        p = repo / "config"
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 1
        p.write_bytes(bytes(b))
    elif what == "truncate-config":
        p = repo / "config"
        p.write_bytes(p.read_bytes()[:30])
    elif what == "empty-config":
        (repo / "config").write_bytes(b"")
    elif what == "truncate-key":
        p = next((repo / "keys").iterdir())
        p.write_bytes(p.read_bytes()[:100])
    elif what == "flip-key":
        p = next((repo / "keys").iterdir())
        b = bytearray(p.read_bytes())
        b[-20] ^= 1
        p.write_bytes(bytes(b))
    elif what in ("flip-index", "flip-data-pack", "flip-snapshot"):
        ns = {"flip-index": "index", "flip-data-pack": "data", "flip-snapshot": "snapshots"}[what]
        files = sorted(p for p in (repo / ns).rglob("*") if p.is_file())
        if what == "flip-data-pack":  # the biggest pack holds the file content
            files = sorted(files, key=lambda p: p.stat().st_size)[-1:]
        for p in files:
            b = bytearray(p.read_bytes())
            for i in range(30, len(b), 1000):  # every blob in it
                b[i] ^= 1
            p.write_bytes(bytes(b))


BAD = {
    # name: (args after -r REPO, extra env, damage, expected exit code)
    "wrong password": (["key", "list"], {"SNAP_PASSWORD_FILE": "", "SNAP_PASSWORD": "nope"}, None, 12),
    "bad flag": (["key", "list", "--bogus"], {}, None, 1),
    "unknown command": (["frobnicate"], {}, None, 1),
    "missing argument": (["key", "remove"], {}, None, 1),
    "no password": (["key", "list"], {"SNAP_PASSWORD_FILE": ""}, None, 1),
    "missing password file": (["key", "list"], {"SNAP_PASSWORD_FILE": "/nonexistent/pw"}, None, 1),
    "failing password command": (["key", "list"], {"SNAP_PASSWORD_FILE": "",
                                                   "SNAP_PASSWORD_COMMAND": "exit 3"}, None, 1),
    "password file and command": (["--password-command", "echo x", "key", "list"], {}, None, 1),
    "empty password file": (["key", "list"], {"SNAP_PASSWORD_FILE": "/dev/null"}, None, 1),
    "init twice": (["init"], {}, None, 1),
    "remove unknown key": (["key", "remove", "ffffffff"], {}, None, 1),
    "remove current key": (["key", "remove", "CURRENT"], {}, None, 1),
    "add key without new password": (["key", "add"], {}, None, 1),
    "add key with empty password": (["key", "add", "--new-password-file", "/dev/null"], {}, None, 1),
    "corrupted config": (["key", "list"], {}, "flip-config", 1),
    "truncated config": (["key", "list"], {}, "truncate-config", 1),
    "empty config": (["key", "list"], {}, "empty-config", 1),
    "truncated key file": (["key", "list"], {}, "truncate-key", 1),
    "damaged key file": (["key", "list"], {}, "flip-key", 1),
    "tampered snapshot": (["snapshots"], {}, "flip-snapshot", 1),
    "tampered index": (["ls", "latest"], {}, "flip-index", 1),
    "tampered pack": (["dump", "latest", "FILE"], {}, "flip-data-pack", 1),
}

# The line must say what is wrong (a few cases checked for their key words).
MESSAGES = {
    "wrong password": "wrong password", "corrupted config": "config", "truncated config": "config",
    "empty config": "config", "truncated key file": "keys/", "damaged key file": "keys/",
    "tampered snapshot": "snapshots/", "tampered index": "index/",
    "tampered pack": "authentication failed", "init twice": "already exists",
    "remove current key": "in use", "no password": "password",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_changes_nothing(t, case):
    args, env, damage, code = BAD[case]
    if damage:
        _damage(t, damage)
    if "CURRENT" in args:
        current = json.loads(t.snap("key", "list", "--json").stdout)[0]["id"]
        args = [current if a == "CURRENT" else a for a in args]
    if "FILE" in args:
        args = [str(t.src / "dir" / "big.bin") if a == "FILE" else a for a in args]
    before = snapshot_of(t.repo)
    proc = t.snap(*args, env=env)
    line = one_line_error(proc, code)
    assert MESSAGES.get(case, "") in line
    assert snapshot_of(t.repo) == before, line
    assert "hello from the cli test" not in proc.stdout  # never wrong (or any) data


@pytest.mark.parametrize("url,code", [("ftp://host/x", 1), ("", 1)])
def test_bad_repository_url(tmp_path, url, code):
    proc = run("-r", url, "key", "list", env={"SNAP_PASSWORD": PW}, cwd=tmp_path)
    one_line_error(proc, code)
    assert list(tmp_path.iterdir()) == []


def test_no_repository_given(tmp_path):
    one_line_error(run("key", "list", env={"SNAP_PASSWORD": PW}, cwd=tmp_path), 1)


def test_no_repository_at_location(tmp_path):
    proc = run("-r", str(tmp_path / "none"), "key", "list", env={"SNAP_PASSWORD": PW})
    one_line_error(proc, 10)
    assert not (tmp_path / "none").exists()
    (tmp_path / "empty").mkdir()
    proc = run("-r", str(tmp_path / "empty"), "key", "list", env={"SNAP_PASSWORD": PW})
    one_line_error(proc, 10)
    assert list((tmp_path / "empty").iterdir()) == []


def test_repository_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("not a directory")
    proc = run("-r", str(tmp_path / "f"), "key", "list", env={"SNAP_PASSWORD": PW})
    assert proc.returncode in (1, 10)
    one_line_error(proc, proc.returncode)
    proc = run("-r", str(tmp_path / "f"), "init", env={"SNAP_PASSWORD": PW})
    one_line_error(proc, 1)
    assert (tmp_path / "f").read_text() == "not a directory"


@pytest.mark.parametrize("opts", [["--pack-size", "3M"], ["--pack-size", "200M"],
                                  ["--pack-size", "lots"], ["--compression", "40"],
                                  ["--chunk-min", "4M", "--chunk-avg", "1M"]])
def test_init_bad_options(tmp_path, opts):
    proc = run("-r", str(tmp_path / "r"), "init", *opts, env={"SNAP_PASSWORD": PW})
    one_line_error(proc, 1)
    assert not (tmp_path / "r").exists()


def test_unknown_repository_version(t):
    # Re-seal the config with a future version, using the real key (as a newer snap would).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dedupe.backends.local import LocalBackend
    from dedupe.crypto import AAD_CONFIG
    from dedupe.repository import Repository

    repo = Repository.open(LocalBackend(str(t.repo)), PW.encode(), no_cache=True)
    body = msgpack.unpackb(repo.key.open((t.repo / "config").read_bytes(), AAD_CONFIG))
    body["version"] = 99
    (t.repo / "config").write_bytes(repo.key.seal(msgpack.packb(body), AAD_CONFIG))
    before = snapshot_of(t.repo)
    line = one_line_error(t.snap("key", "list"), 1)
    assert "99" in line
    assert snapshot_of(t.repo) == before


def test_exit_codes_are_documented_in_the_readme():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for code in ("0", "1", "3", "10", "11", "12", "130"):
        assert f"| {code} " in readme or f"`{code}`" in readme, code


# The end of the process: cli.main._exit skips the interpreter's teardown, not sys.exit's work.
_ENDING = """
import atexit, sys, tempfile, threading, time
from cli.main import _exit
keep = tempfile.TemporaryDirectory()  # (removed by its weakref.finalize, at exit)
print(keep.name)
atexit.register(lambda: sys.stdout.write(" atexit"))
if sys.argv[1] == "thread":  # still running at the end: the interpreter's own way then
    threading.Thread(target=lambda: (time.sleep(0.3), sys.stdout.write(" thread"))).start()
sys.stdout.write("main")  # stdout is a pipe, block buffered: only a flush writes these out
_exit(7)
"""


@pytest.mark.parametrize("case, output", [("plain", "main atexit"),
                                          ("thread", "main thread atexit")])
def test_the_quick_exit_keeps_what_sys_exit_does(case, output):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", _ENDING, case], capture_output=True,
                          text=True, env={**env, "PYTHONPATH": ROOT}, timeout=60)
    assert proc.returncode == 7
    name, rest = proc.stdout.split("\n")
    assert rest == output  # (the thread waited for), atexit run, then the buffer flushed
    assert not os.path.exists(name)  # the temporary directory's clean-up ran
    assert proc.stderr == ""


# ----------------------------------------------------------------------------- on a terminal


class Terminal:
    """``snap`` on a real pseudo-terminal that is its controlling tty (as for a person)."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.master, slave = pty.openpty()

        def become_session_on_tty():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        base = {k: v for k, v in os.environ.items() if not k.startswith("SNAP_")}
        base["PYTHONPATH"] = ROOT
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", *args], stdin=slave,
                                     stdout=slave, stderr=slave, env={**base, **(env or {})},
                                     preexec_fn=become_session_on_tty)
        os.close(slave)
        self.out = b""

    def _read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.out += chunk
        return bool(chunk)

    def expect(self, text: bytes) -> None:
        for _ in range(240):  # a generous bound on a wait, not a timing assertion
            if text in self.out:
                return
            self._read(0.25)
        raise AssertionError(f"{text!r} never appeared; got {self.out!r}")

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def answer_twice(self, prompt: bytes, first: bytes, second: bytes) -> tuple[int, str]:
        """Answer a new-password prompt and its confirmation, then wait for the end."""
        self.expect(prompt)
        self.send(first + b"\n")
        self.expect(b"again")
        self.send(second + b"\n")
        return self.finish()

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(timeout=120)
        while self._read(0.1):
            pass
        os.close(self.master)
        return code, self.out.decode(errors="replace")


def test_init_on_a_terminal_asks_twice(tmp_path):
    term = Terminal("-r", str(tmp_path / "r"), "init", env={"SNAP_CACHE_DIR": str(tmp_path / "c")})
    code, out = term.answer_twice(b"password", b"typed password", b"typed password")
    assert code == 0, out
    assert "typed password" not in out  # not echoed
    proc = run("-r", str(tmp_path / "r"), "key", "list", "--json",
               env={"SNAP_PASSWORD": "typed password", "SNAP_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr


def test_init_on_a_terminal_with_mismatched_passwords(tmp_path):
    term = Terminal("-r", str(tmp_path / "r"), "init")
    code, out = term.answer_twice(b"password", b"one", b"two")
    assert code == 1 and "do not match" in out and "Traceback" not in out
    assert not (tmp_path / "r").exists()


def test_key_add_on_a_terminal_asks_twice(t):
    term = Terminal("-r", str(t.repo), "key", "add", env=t.env)
    code, out = term.answer_twice(b"new password", b"terminal pw", b"terminal pw")
    assert code == 0, out
    proc = t.snap("key", "list", "--json", env={"SNAP_PASSWORD_FILE": "",
                                                "SNAP_PASSWORD": "terminal pw"})
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 2


def test_ctrl_c_at_the_prompt_is_exit_130(t):
    before = snapshot_of(t.repo)
    term = Terminal("-r", str(t.repo), "key", "list", env={"SNAP_CACHE_DIR": str(t.cache)})
    term.expect(b"password")
    term.send(b"\x03")
    code, out = term.finish()
    assert code == 130, out
    assert "Traceback" not in out and "interrupted" in out
    assert snapshot_of(t.repo) == before
