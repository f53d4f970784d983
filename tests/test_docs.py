"""The documentation: every relative link resolves, and README's test command is CI's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped except
    `-` and `_`, spaces to `-`, repeated headings numbered `-1`, `-2`, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[str]:
    """Relative link targets of a Markdown file (outside code blocks)."""
    text = FENCE.sub("", path.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc):
    assert doc.exists()
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(REPO)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_link_check_can_fail(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("# Top part\n\n[ok](#top-part) [bad](#nope) [file](b.md)\n```\n[x](y.md)\n```\n")
    assert anchors(doc) == {"top-part"}
    assert links(doc) == ["#top-part", "#nope", "b.md"]


def test_readme_test_command_is_the_ci_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index(next(ln for ln in ci if "README test command" in ln)) + 1]
    readme = (REPO / "README.md").read_text()
    assert f"\n{command}\n" in readme
    assert "pip install -e . && python scripts/quickstart.py" in readme


def test_readme_pictures_are_committed_and_small():
    for name in ("bench_semisup.png", "quickstart_grid.png"):
        picture = REPO / "docs" / name
        assert f"](docs/{name})" in (REPO / "README.md").read_text()
        assert picture.stat().st_size < 200_000, name
