"""benchmarks/tools.py: how the runner prepares the snap it measures."""

from __future__ import annotations

import importlib.util
import os
import sys

from benchmarks import tools


def test_the_interpreter_of_a_console_script_is_read_from_its_shebang(tmp_path):
    script = tmp_path / "snap"
    script.write_bytes(b"#!/opt/py/bin/python3.11 -I\nimport sys\n")
    assert tools._shebang(str(script)) == "/opt/py/bin/python3.11"
    script.write_bytes(b"ELF binary, no shebang\n")
    assert tools._shebang(str(script)) is None
    assert tools._shebang(str(tmp_path / "missing")) is None


def test_every_module_snap_imports_gets_its_byte_code_despite_dontwritebytecode(monkeypatch):
    """The runner's own environment may say PYTHONDONTWRITEBYTECODE (this machine's does);
    the modules snap imports still get their .pyc, as an installation would give them."""
    module = tools.REPO_ROOT / "dedupe" / "exclusions.py"
    cached = importlib.util.cache_from_source(str(module))
    if os.path.exists(cached):
        os.unlink(cached)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    tools._compile_imports([sys.executable, "-m", "cli"], {"PYTHONPATH": str(tools.REPO_ROOT)})
    assert os.path.exists(cached)
