"""Issue #17 item 6: `pip install vecq` is the client alone. The test builds that environment — a new venv,
`pip install` of this checkout (its own dependencies only, from PyPI or pip's cache) — and checks that the
client imports, that none of the server's packages (faiss, celery, redis, pyarrow) is installed or imported,
that `vecq` answers, and that `vecq up` says what to install instead of a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vecq.stack import ROOT

SERVER_PACKAGES = ("faiss", "celery", "redis", "pyarrow", "fastapi", "pydantic_settings", "kombu")
SOURCES = ("pyproject.toml", "README.md", "api", "common", "worker", "vecq")


def run(*argv: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd="/")  # not the checkout: its packages must come from the venv, not from the cwd


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with `pip install <this checkout>` and nothing else; its bin directory."""
    base = tmp_path_factory.mktemp("client-only")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:  # the working tree as it is, without build leftovers in the checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    started = time.monotonic()
    made = run(sys.executable, "-m", "venv", base / "venv")
    assert made.returncode == 0, made.stderr
    bin_dir = base / "venv" / "bin"
    installed = run(bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-compile", src)  # no .pyc of numpy & co: seconds the test does not need
    assert installed.returncode == 0, installed.stdout + installed.stderr
    print(f"client-only venv built in {time.monotonic() - started:.1f}s")
    return bin_dir


def test_only_the_client_is_installed(client_venv: Path) -> None:
    check = ("import importlib.util, sys; "
             f"print(','.join(p for p in {SERVER_PACKAGES!r} if importlib.util.find_spec(p) is not None))")
    out = run(client_venv / "python", "-c", check)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"server packages in the client-only venv: {out.stdout}"
    for package in ("httpx", "numpy", "pydantic", "click"):
        assert run(client_venv / "python", "-m", "pip", "show", "--quiet", package).returncode == 0, package
    assert run(client_venv / "python", "-m", "pip", "show", "--quiet", "faiss-cpu").returncode != 0


def test_import_vecq_client_pulls_in_nothing_of_the_server(client_venv: Path) -> None:
    code = ("import sys, vecq.client, common.errors; "
            "from vecq.client import Client, AsyncClient; "
            "bad = {'faiss', 'celery', 'redis', 'pyarrow', 'kombu', 'pydantic_settings'} "
            "& {m.split('.')[0] for m in sys.modules}; "
            "assert not bad, bad; print(vecq.client.__file__)")
    out = run(client_venv / "python", "-c", code)
    assert out.returncode == 0, out.stderr
    assert str(client_venv.parent) in out.stdout  # the installed copy, not the checkout
    typed = run(client_venv / "python", "-c", "import pathlib, vecq, common; "
                "print(all((pathlib.Path(p.__path__[0]) / 'py.typed').exists() for p in (vecq, common)))")
    assert typed.stdout.strip() == "True", typed.stdout + typed.stderr


def test_the_cli_runs_and_up_says_what_to_install(client_venv: Path) -> None:
    helped = run(client_venv / "vecq", "--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("collections", "jobs", "search", "status", "ingest", "up"):
        assert command in helped.stdout
    unreachable = run(client_venv / "vecq", "--url", "http://127.0.0.1:9", "collections", "list")
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("vecq: cannot reach http://127.0.0.1:9")
    up = run(client_venv / "vecq", "up")
    assert up.returncode == 2 and "pip install 'vecq[server]'" in up.stderr and "Traceback" not in up.stderr
    parquet = client_venv.parent / "rows.parquet"
    parquet.write_bytes(b"PAR1")
    ingest = run(client_venv / "vecq", "--url", "http://127.0.0.1:9", "ingest", parquet, "-c", "docs")
    assert ingest.returncode == 2 and "needs pyarrow" in ingest.stderr and "Traceback" not in ingest.stderr
