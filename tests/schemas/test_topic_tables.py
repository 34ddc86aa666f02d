"""The topic and event tables of README.md and docs/design.md list every topic and every event kind.

The topic names come from ``schemas.topics.Topics`` and the event kinds from
``schemas.holders.EventKind``, so a topic or kind added there and not
documented breaks this test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas.holders import EventKind
from schemas.topics import Topics

REPO_ROOT = Path(__file__).resolve().parents[2]


def _section(document: str, heading: str) -> str:
    """Return the text of `document` from `heading` to the next heading of the same or a higher level."""
    text = (REPO_ROOT / document).read_text()
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ", 1)[0]
    following = re.compile(rf"\n#{{1,{len(level)}}} ")
    match = following.search(text, start + len(heading) + 2)
    return text[start:] if match is None else text[start:match.start()]


def _first_cells(table_text: str) -> set[str]:
    """Return the first cell of each table row, without its backquotes."""
    cells = set()
    for line in table_text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells.add(line.split("|")[1].strip().strip("`"))
    return cells


def _expected_topics(prefix: str, app: str, holder: str) -> set[str]:
    topics = Topics("p")
    names = {name.replace("p.", f"{prefix}.", 1) for name in topics.shared()}
    return names | {f"{prefix}.replies.{app}", f"{prefix}.holder.{holder}"}


@pytest.mark.parametrize(
    ("document", "heading", "prefix", "app", "holder"),
    [
        ("README.md", "### Topics and events", "p", "<app id>", "<holder id>"),
        ("docs/design.md", "## Topics", "{p}", "{app_id}", "{holder_id}"),
    ],
)
def test_topic_table_lists_every_topic(document, heading, prefix, app, holder):
    rows = _first_cells(_section(document, heading))

    missing = _expected_topics(prefix, app, holder) - rows
    assert missing == set(), f"{document} has no row for {sorted(missing)}"


#: Event kinds of the wire format that no part of shardbus sends yet, as README.md states.
UNSENT = (EventKind.HOLDER_READY, EventKind.HOLDERS_LOADED)


def test_readme_lists_every_event_kind():
    text = _section("README.md", "### Topics and events")
    rows = _first_cells(text)

    for kind in EventKind:
        if kind in UNSENT:
            assert f"`{kind.value}`" in text, f"README.md does not mention {kind.value}"
        else:
            assert kind.value in rows, f"README.md has no row for the event {kind.value}"


@pytest.mark.parametrize("kind", UNSENT, ids=lambda kind: kind.value)
def test_unsent_event_kinds_not_sent(kind):
    # README.md states that no part sends these kinds, so no service may name them.
    reference = f"EventKind.{kind.name}"
    for package in ("shardbus", "streams", "provisioner", "holders"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            assert reference not in path.read_text(), f"{path.relative_to(REPO_ROOT)} uses {reference}"
