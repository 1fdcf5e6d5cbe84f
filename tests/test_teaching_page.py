"""book/teaching.md stays true to the book: it is in the table of contents, the exercises it
names exist, the checks it lists are the checks there are, and every core chapter has a run
time."""

import re
from pathlib import Path

from toyrec_helpers.exercises import exercises

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "book" / "teaching.md"


def chapter_text() -> str:
    return "".join(p.read_text(encoding="utf-8") for p in (ROOT / "book").glob("*.ipynb"))


def test_the_page_is_in_the_toc():
    assert re.search(r"^\s*- file: book/teaching\s*$", (ROOT / "_toc.yml").read_text(), re.M)


def test_every_exercise_the_page_names_exists():
    text = PAGE.read_text(encoding="utf-8")
    named = set(re.findall(r"`(ch\d+-ex-[a-z0-9]+)`", text))
    assert len(named) >= 20
    chapters = chapter_text()
    missing = sorted(label for label in named if f":label: {label}" not in chapters)
    assert not missing, f"teaching.md names exercises that no chapter has: {missing}"


def test_the_page_lists_exactly_the_checks_there_are():
    text = PAGE.read_text(encoding="utf-8")
    paragraph = text[text.index("Today the checks cover"):].split("\n\n")[0]
    assert set(re.findall(r"`(ch\d+-ex-[a-z0-9]+)`", paragraph)) == set(exercises())


def test_every_chapter_has_a_measured_run_time():
    text = PAGE.read_text(encoding="utf-8")
    assert "TIME" not in text, "a run time was not filled in"
    table = text[text.index("{list-table}"):].split("```")[0]
    # a row per notebook page: "3" for book/03_*.ipynb, "3b" for its second part 03b_*.ipynb
    rows = set(re.findall(r"^\* - (\d+[a-z]?)$", table, re.M))
    pages = {p.name.split("_")[0].lstrip("0") for p in (ROOT / "book").glob("[0-9][0-9]*_*.ipynb")}
    assert rows == pages, f"run times without a page: {rows - pages}; pages without: {pages - rows}"
