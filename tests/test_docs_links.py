"""The repository documents itself: every ``docs/<file>.md#<anchor>`` reference in the sources points at
a heading that exists, and nothing points at a document outside the repository."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCE_DIRS = ("python", "cpp", "cuda", "tests", "benchmarks")
SOURCE_SUFFIXES = {".py", ".h", ".hpp", ".cpp", ".cu", ".cuh", ".txt", ".toml", ".sh", ".md"}
TOP_FILES = ("README.md", "CMakeLists.txt", "pyproject.toml")

DOC_REF_RE = re.compile(r"(?<![\w/.])docs/([\w\-]+\.md)(?:#([\w\-]+))?")
MD_LINK_RE = re.compile(r"\]\((?!https?:)([\w\-./]*\.md)?(?:#([^)\s]+))?\)")
# Names of the out-of-repository notes the sources once cited, spelled so this file does not match itself.
OUTSIDE_RE = re.compile("\u00a7|" + "|".join(a + "_" + b for a, b in (
    ("OPS_AND", "SAMPLERS"), ("MODELS_AND", "TRAINING"), ("HOUSE", "STYLE"), ("ANCHORS", "SURVEY"))))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: markup dropped, lower case, punctuation removed
    (letters, digits, ``_`` and ``-`` kept), spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = text.replace("`", "").replace("**", "").lower()
    kept = (ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return "".join(kept).replace(" ", "-")


def doc_anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m and not in_code:
            anchor = github_anchor(m.group(1))
            n = seen.get(anchor, 0)
            seen[anchor] = n + 1
            anchors.add(anchor if n == 0 else f"{anchor}-{n}")
    return anchors


ANCHORS = {p.name: doc_anchors(p) for p in sorted(DOCS.glob("*.md"))}


def source_files() -> list[Path]:
    files = [ROOT / name for name in TOP_FILES if (ROOT / name).is_file()]
    for d in SOURCE_DIRS:
        files += [p for p in sorted((ROOT / d).rglob("*"))
                  if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts]
    return files


def lines_of(files):
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            yield path.relative_to(ROOT), lineno, line


def test_anchor_rule():
    assert github_anchor("gm_kr_inverse") == "gm_kr_inverse"
    assert github_anchor("Knothe-Rosenblatt transport") == "knothe-rosenblatt-transport"
    assert github_anchor("GM-ODE sub-steps") == "gm-ode-sub-steps"
    assert github_anchor("Log densities, KL and entropy") == "log-densities-kl-and-entropy"
    assert github_anchor("`GMDiTPipeline` (diffusers style)") == "gmditpipeline-diffusers-style"


@pytest.mark.parametrize("name", ["ops.md", "sampling.md", "models.md", "training.md", "design.md", "testing.md"])
def test_doc_exists_with_headings(name):
    assert name in ANCHORS, f"docs/{name} is missing"
    assert len(ANCHORS[name]) >= 5, f"docs/{name} has too few headings to be referenced"


def test_doc_references_in_sources_resolve():
    broken, found = [], 0
    for rel, lineno, line in lines_of(source_files()):
        for m in DOC_REF_RE.finditer(line):
            found += 1
            doc, anchor = m.group(1), m.group(2)
            if doc not in ANCHORS:
                broken.append(f"{rel}:{lineno}: docs/{doc} does not exist")
            elif anchor and anchor not in ANCHORS[doc]:
                broken.append(f"{rel}:{lineno}: docs/{doc} has no heading for #{anchor}")
    assert not broken, "\n".join(broken)
    assert found > 0, "no docs/ reference found in the sources"


def test_links_between_docs_resolve():
    broken = []
    for rel, lineno, line in lines_of(sorted(DOCS.glob("*.md"))):
        for m in MD_LINK_RE.finditer(line):
            target = Path(m.group(1)).name if m.group(1) else rel.name
            if target not in ANCHORS:
                broken.append(f"{rel}:{lineno}: link to missing {m.group(1)}")
            elif m.group(2) and m.group(2) not in ANCHORS[target]:
                broken.append(f"{rel}:{lineno}: {target} has no heading for #{m.group(2)}")
    assert not broken, "\n".join(broken)


def test_no_reference_to_documents_outside_the_repository():
    outside = [f"{rel}:{lineno}: {line.strip()[:100]}"
               for rel, lineno, line in lines_of(source_files() + sorted(DOCS.glob("*.md")))
               if OUTSIDE_RE.search(line)]
    assert not outside, f"{len(outside)} line(s) cite documents that are not in the repository:\n" + "\n".join(
        outside[:40])
