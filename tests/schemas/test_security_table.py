"""The security tables of README.md and docs/security.md cite only tests that exist.

A reference has the form ``tests/<path>.py::test_name``. The test checks
that the file defines that function, so a renamed or deleted test breaks
this one instead of leaving the documents to claim what nothing shows.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
from decoder_targets import TARGETS

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"(tests/[\w/.-]+\.py)::(\w+)(?:\[([\w-]+)\])?")
#: The one parametrized test whose cases the documents cite, one per decoder.
DECODER_TEST = "test_hostile_input_rejected_cleanly"


def security_text(document: str) -> str:
    """Return docs/security.md whole, or the Security section of README.md."""
    text = (REPO_ROOT / document).read_text()
    if document != "README.md":
        return text
    start = text.index("\n## Security\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


@cache
def defined_tests(path: str) -> frozenset[str]:
    tree = ast.parse((REPO_ROOT / path).read_text(), filename=path)
    return frozenset(
        node.name for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
    )


@pytest.mark.parametrize("document", ["README.md", "docs/security.md"])
def test_cited_tests_exist(document):
    references = REFERENCE.findall(security_text(document))
    assert len(references) >= 20, f"{document} cites {len(references)} tests; is its table still there?"

    missing_files = sorted({path for path, _, _ in references if not (REPO_ROOT / path).is_file()})
    assert missing_files == []
    missing_tests = [f"{path}::{name}" for path, name, _ in references if name not in defined_tests(path)]
    assert missing_tests == []


@pytest.mark.parametrize("document", ["README.md", "docs/security.md"])
def test_only_decoder_cases_cited(document):
    # Other parametrized ids cannot be checked without collecting the tests.
    cases = [f"{name}[{case}]" for _, name, case in REFERENCE.findall(security_text(document))
             if case and name != DECODER_TEST]
    assert cases == []


def test_every_decoder_cited():
    cited = {case for _, name, case in REFERENCE.findall(security_text("docs/security.md")) if name == DECODER_TEST}
    assert cited == {target.name for target in TARGETS}
