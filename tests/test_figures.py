"""The diagrams in book/figures: each SVG parses, is self-contained and labelled, and is used
by a page of the book."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = sorted((ROOT / "book" / "figures").glob("*.svg"))
SVG = "{http://www.w3.org/2000/svg}"


def test_the_four_diagrams_exist():
    assert {p.stem for p in FIGURES} >= {"episode", "maml_loops", "protocol", "system"}


@pytest.mark.parametrize("figure", FIGURES, ids=lambda p: p.name)
def test_svg_parses_and_is_self_contained(figure):
    root = ET.parse(figure).getroot()
    assert root.tag == f"{SVG}svg"
    assert root.get("viewBox") and root.get("width") and root.get("height")
    assert (root.findtext(f"{SVG}title") or "").strip(), "a <title> for screen readers"
    assert (root.findtext(f"{SVG}desc") or "").strip(), "a <desc> for screen readers"
    labels = [t for t in root.iter(f"{SVG}text") if "".join(t.itertext()).strip()]
    assert len(labels) >= 5, "text labels"
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    text = figure.read_text(encoding="utf-8")
    for ref in re.findall(r"url\(#([^)]+)\)", text):
        assert ref in ids, f"url(#{ref}) names no element"
    assert not re.search(r"(xlink:)?href=\"(https?:|//|file:)", text), "no external resources"


@pytest.mark.parametrize("figure", FIGURES, ids=lambda p: p.name)
def test_every_figure_is_used_by_a_page(figure):
    pages = [*ROOT.glob("book/*.md"), *ROOT.glob("book/*.ipynb")]
    users = [p.name for p in pages if f"figures/{figure.name}" in p.read_text(encoding="utf-8")]
    assert users, f"{figure.name} is not referenced by any page in book/"
