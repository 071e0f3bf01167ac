"""pykka's own behaviour suite, run against huddle's runtime.

The pykka 4.5.0 source distribution is downloaded at test time (its code is
not part of this repository), its ``Runtime`` fixture gets two entries,
``pooled`` (``PooledActor`` + ``PooledFuture`` on the thread-pool
dispatcher) and ``loop`` (the same actors on a :class:`LoopDispatcher`,
the node loop's dispatcher: slices run as callbacks on one asyncio loop),
and its whole test folder runs in a subprocess. Both parametrizations must
pass in full.
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
RUNTIME_ENTRIES = '''
from actors import PooledActor, PooledFuture  # added by huddle's conformance run
from actors.runtime.io import IoLoop as _HuddleIoLoop
from actors.runtime.pooled import LoopDispatcher as _HuddleLoopDispatcher

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


class _LoopActor(PooledActor):
    dispatcher = _HuddleLoopDispatcher(_HuddleIoLoop("pykka-suite-loop"))


RUNTIMES["loop"] = pytest.param(
    Runtime(
        name="loop",
        actor_class=_LoopActor,
        event_class=threading.Event,
        future_class=PooledFuture,
        sleep_func=time.sleep,
    ),
    id="loop",
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


def _add_runtimes(root: Path) -> None:
    """pykka's conftest as shipped, with huddle's two runtimes added."""
    with tarfile.open(CACHE / f"pykka-{PYKKA_VERSION}.tar.gz") as tar:
        member = tar.extractfile(f"pykka-{PYKKA_VERSION}/tests/conftest.py")
        assert member is not None
        text = member.read().decode()
    assert ANCHOR in text, "pykka's conftest changed shape: the Runtime fixture anchor is missing"
    (root / "tests" / "conftest.py").write_text(text.replace(ANCHOR, RUNTIME_ENTRIES + ANCHOR, 1))


@pytest.mark.timeout(600)
def test_pykka_suite_passes_on_the_pool_and_on_the_loop_dispatcher() -> None:
    root = _pykka_source()
    _add_runtimes(root)
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
    for runtime in ("pooled", "loop"):
        count = len(re.findall(rf"\[(?:.*-)?{runtime}(?:-.*)?\]", collected))
        assert count >= 100, f"only {count} {runtime} tests collected"
