"""pykka's own behaviour suite, run against the pooled runtime.

The pykka 4.5.0 source distribution is downloaded at test time (its code is
not part of this repository), its ``Runtime`` fixture gets a ``pooled``
entry (``PooledActor`` + ``PooledFuture``), and its whole test folder runs
in a subprocess. The pooled parametrization must pass in full.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

PYKKA_VERSION = "4.5.0"
CACHE = Path(__file__).resolve().parents[2] / ".cache"
ANCHOR = '@pytest.fixture(scope="session", params=RUNTIMES.values())'
POOLED_ENTRY = '''
from actors import PooledActor, PooledFuture  # added by huddle's conformance run

RUNTIMES["pooled"] = pytest.param(
    Runtime(
        name="pooled",
        actor_class=PooledActor,
        event_class=threading.Event,
        future_class=PooledFuture,
        sleep_func=time.sleep,
    ),
    id="pooled",
)


'''


def _pykka_source() -> Path:
    """Download and unpack the pykka sdist once per checkout."""
    root = CACHE / f"pykka-{PYKKA_VERSION}"
    if (root / "tests" / "conftest.py").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
         "--dest", str(CACHE), f"pykka=={PYKKA_VERSION}"],
        check=True,
    )
    with tarfile.open(CACHE / f"pykka-{PYKKA_VERSION}.tar.gz") as tar:
        tar.extractall(CACHE, filter="data")
    return root


def _add_pooled_runtime(root: Path) -> None:
    conftest = root / "tests" / "conftest.py"
    text = conftest.read_text()
    if 'RUNTIMES["pooled"]' in text:
        return
    assert ANCHOR in text, "pykka's conftest changed shape: the Runtime fixture anchor is missing"
    conftest.write_text(text.replace(ANCHOR, POOLED_ENTRY + ANCHOR, 1))


@pytest.mark.timeout(600)
def test_pykka_suite_passes_on_pooled_runtime() -> None:
    root = _pykka_source()
    _add_pooled_runtime(root)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", "-x",
         "--timeout=60", "-rfE"],
        cwd=root, capture_output=True, text=True, timeout=580,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # The pooled runtime must actually have been exercised.
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-q", "--collect-only", "-p", "no:cacheprovider"],
        cwd=root, capture_output=True, text=True, timeout=120,
    ).stdout
    pooled = len(re.findall(r"\[.*pooled.*\]", collected))
    assert pooled >= 100, f"only {pooled} pooled tests collected"
