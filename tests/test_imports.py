"""The library is usable without Prefect: orchestration stays in tasks/ and flows/."""

from __future__ import annotations

import subprocess
import sys

LIBRARY_MODULES = [
    "udl",
    "udl.config",
    "udl.corpus",
    "udl.features",
    "udl.embed",
    "udl.encoders.autoencoder",
    "udl.cluster.assign",
    "udl.cluster.dbscan",
    "udl.evaluate",
    "udl.describe",
    "udl.report",
    "udl.manifest",
]


def test_udl_imports_without_prefect() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {LIBRARY_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
