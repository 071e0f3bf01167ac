"""Every document the code cites is in the repository, and says what is cited.

* a ``docs/<name>.md`` path cited in a ``*.py`` or ``*.md`` file exists, and
  every section it is cited with (``docs/protocol.md §1.4, §2``) is a
  numbered heading of that file; inside ``docs/`` a bare ``§N`` means the
  file itself, and outside it a ``§N`` must name its document;
* no ``*.md`` file name is cited that the repository does not have, and the
  protocol and scenarios are not cited by any other name
  (``PROTOCOL section 3``, ``SCENARIOS S39``);
* every scenario id cited by a test (``test_s16_...``, ``S16`` in its text)
  or by the code is defined in ``docs/scenarios.md``, and every test that
  file names (``path::test_name``, under ``tests/``) exists.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SCENARIOS = DOCS / "scenarios.md"
THIS = Path(__file__).resolve()

_SKIP_DIRS = {"node_modules", "build", "__pycache__"}

_DOC_PATH = re.compile(r"docs/[\w./-]+?\.md\b")
_SECTION = re.compile(r"§\s?(\d+(?:\.\d+)*)")
# Sections cited after a document: ``docs/protocol.md §1.5``, ``§1.8, §3``,
# ``§4.3` and §4.4``, ``(section 1)`` (plain ASCII, for text a command prints).
_CHAINED_SECTION = re.compile(r"(?:§\s?|section\s+)(\d+(?:\.\d+)*)")
_CHAIN = re.compile(r"(?:[\s,;`*(]*(?:(?:and|or)\s+)?(?:§\s?|section\s+)\d+(?:\.\d+)*)+")
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)[.\s]", re.MULTILINE)
_MD_NAME = re.compile(r"(?<![\w/.-])((?:\.\./|\./)*[\w][\w./-]*\.md)\b")
_URL = re.compile(r"\b\w+://\S+")
_OTHER_NAMES = re.compile(r"\b(?:PROTOCOL|SCENARIOS|DESIGN)(?:\.md)?\s+(?:section\s+)?§?\s?S?\d")
_SCENARIO_ID = re.compile(r"\bS(\d{1,2})\b")
_TEST_NAME_IDS = re.compile(r"^test_((?:s\d+_)+)")
_DEFINED = re.compile(r"^### S(\d+):", re.MULTILINE)
_CITED_TEST = re.compile(r"`([\w/.-]+\.py)::([\w]+)`")


def _files(*suffixes: str) -> Iterator[Path]:
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO).parts
        if any(p.startswith(".") or p in _SKIP_DIRS or p.endswith(".egg-info") for p in rel[:-1]):
            continue
        if path.suffix in suffixes and path.is_file() and path.resolve() != THIS:
            yield path


@cache
def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@cache
def _md_files() -> tuple[str, ...]:
    return tuple(p.relative_to(REPO).as_posix() for p in _files(".md"))


@cache
def _headings(path: Path) -> frozenset[str]:
    return frozenset(_HEADING.findall(_text(path)))


def _where(path: Path, text: str, at: int) -> str:
    return f"{path.relative_to(REPO)}:{text.count(chr(10), 0, at) + 1}"


def test_cited_documents_and_sections_exist() -> None:
    problems: list[str] = []
    for path in _files(".py", ".md"):
        text = _text(path)
        chained: set[int] = set()
        for m in _DOC_PATH.finditer(text):
            doc = REPO / m.group(0)
            if not doc.is_file():
                problems.append(f"{_where(path, text, m.start())}: {m.group(0)} does not exist")
                continue
            chain = _CHAIN.match(text, m.end())
            if chain is None:
                continue
            for s in _CHAINED_SECTION.finditer(chain.group(0)):
                chained.add(chain.start() + s.start())
                if s.group(1) not in _headings(doc):
                    problems.append(f"{_where(path, text, m.start())}: {m.group(0)} has no section {s.group(1)}")
        in_docs = path.parent == DOCS
        for s in _SECTION.finditer(text):
            if s.start() in chained:
                continue
            if not in_docs:
                problems.append(f"{_where(path, text, s.start())}: §{s.group(1)} cited without its document")
            elif s.group(1) not in _headings(path):
                problems.append(f"{_where(path, text, s.start())}: {path.name} has no section {s.group(1)}")
    assert not problems, "\n".join(problems)


def test_the_section_numbers_of_the_docs_are_unique() -> None:
    for doc in DOCS.glob("*.md"):
        numbers = _HEADING.findall(_text(doc))
        assert len(numbers) == len(set(numbers)), f"{doc.name}: {sorted(n for n in numbers if numbers.count(n) > 1)}"


def test_every_cited_md_file_exists() -> None:
    problems: list[str] = []
    known = _md_files()
    for path in _files(".py", ".md"):
        text = _URL.sub(" ", _text(path))
        for m in _MD_NAME.finditer(text):
            cited = m.group(1)
            bare = re.sub(r"^(?:\.\.?/)+", "", cited)
            found = ((REPO / cited).is_file() or (path.parent / cited).is_file()
                     or any(k == bare or k.endswith("/" + bare) for k in known))
            if not found:
                problems.append(f"{_where(path, text, m.start())}: {cited} is not in the repository")
        for m in _OTHER_NAMES.finditer(text):
            problems.append(f"{_where(path, text, m.start())}: {m.group(0)!r} (cite docs/protocol.md or docs/scenarios.md)")
    assert not problems, "\n".join(problems)


def _defined_scenarios() -> set[int]:
    return {int(n) for n in _DEFINED.findall(_text(SCENARIOS))}


def _cited_scenarios() -> Iterator[tuple[str, int]]:
    for path in _files(".py"):
        text = _text(path)
        for m in _SCENARIO_ID.finditer(text):
            yield _where(path, text, m.start()), int(m.group(1))
        if path.name.startswith("test_"):
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    ids = _TEST_NAME_IDS.match(node.name)
                    if ids:
                        for n in re.findall(r"s(\d+)_", ids.group(1)):
                            yield f"{path.relative_to(REPO)}:{node.lineno} {node.name}", int(n)


def test_every_cited_scenario_is_defined() -> None:
    defined = _defined_scenarios()
    assert defined, "docs/scenarios.md defines no scenario"
    cited = list(_cited_scenarios())
    assert cited, "no scenario id found in the tests: the search is broken"
    missing = [f"{where}: S{n}" for where, n in cited if n not in defined]
    assert not missing, "not defined in docs/scenarios.md:\n" + "\n".join(missing)


def _test_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(_text(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def test_every_test_named_in_the_scenarios_exists() -> None:
    text = _text(SCENARIOS)
    cited = _CITED_TEST.findall(text)
    assert cited, "docs/scenarios.md names no test"
    missing = []
    for rel, name in cited:
        path = REPO / "tests" / rel
        if not path.is_file() or name not in _test_names(path):
            missing.append(f"tests/{rel}::{name}")
    assert not missing, "named in docs/scenarios.md but not found:\n" + "\n".join(missing)


def test_every_defined_scenario_names_a_test() -> None:
    text = _text(SCENARIOS)
    blocks = re.split(r"^(?=### S\d+:)", text, flags=re.MULTILINE)[1:]
    assert len(blocks) == len(_defined_scenarios())
    bare = [b.splitlines()[0] for b in blocks if not _CITED_TEST.search(b)]
    assert not bare, f"scenarios without a test: {bare}"
