"""The student edition (`make book-student`) shows no solution content.

Two parts:
- the extension book/_ext/student_edition.py, on a tiny book built here with Sphinx: with
  ``hide_solutions`` a ``{solution}`` and a gated ``{solution-start}``/``{solution-end}``
  solution with a code cell disappear, the exercises stay; without it nothing changes;
- the built student edition in _build/student/_build/html, when it exists (CI builds it
  and sets TOYREC_REQUIRE_STUDENT_BUILD=1, so that a missing build fails): no solution
  block, and no run of words from any solution of any page (prose or code) appears in that
  page, while the same runs do appear in the full edition (_build/html) when it exists.
"""

import html
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDENT_HTML = ROOT / "_build" / "student" / "_build" / "html"
FULL_HTML = ROOT / "_build" / "html"
RUN = 8  # words in a row that count as solution content


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z0-9_]{2,}", text)


def _cells(page: Path) -> list[tuple[str, str]]:
    if page.suffix == ".ipynb":
        nb = json.loads(page.read_text(encoding="utf-8"))
        return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    return [("markdown", page.read_text(encoding="utf-8"))]


def solution_and_other_text(page: Path) -> tuple[list[str], str]:
    """The text of each solution of ``page`` (prose and code), and all its other text."""
    solutions, other, gated = [], [], None
    for kind, source in _cells(page):
        if kind == "code":
            (gated if gated is not None else other).append(source)
            continue
        lines = iter(source.splitlines())
        for line in lines:
            if gated is not None:
                if re.match(r"\s*[`:]{3,}\{solution-end\}", line):
                    solutions.append("\n".join(gated))
                    gated = None
                elif not re.match(r"\s*(:class:|:label:|[`:]{3,}\s*$)", line):
                    gated.append(line)
                continue
            if re.match(r"\s*[`:]{3,}\{solution-start\}", line):
                gated = []
            elif m := re.match(r"\s*([`:]{3,})\{solution\}", line):
                block = []
                for inner in lines:
                    if inner.strip() == m.group(1):
                        break
                    if not re.match(r"\s*:(class|label):", inner):
                        block.append(inner)
                solutions.append("\n".join(block))
            else:
                other.append(line)
    assert gated is None, f"{page.name}: a {{solution-start}} without {{solution-end}}"
    return solutions, "\n".join(other)


def solution_runs(page: Path) -> list[set[tuple[str, ...]]]:
    """Per solution, its runs of RUN words that the rest of the page does not contain."""
    solutions, other = solution_and_other_text(page)
    other_words = _words(other)
    shared = {tuple(other_words[i : i + RUN]) for i in range(len(other_words) - RUN + 1)}
    out = []
    for text in solutions:
        words = _words(text)
        runs = {tuple(words[i : i + RUN]) for i in range(len(words) - RUN + 1)} - shared
        if runs:
            out.append(runs)
    return out


def html_words(file: Path) -> tuple[str, ...]:
    text = file.read_text(encoding="utf-8")
    text = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", text)
    return tuple(_words(html.unescape(re.sub(r"<[^>]+>", " ", text))))


def leaked(runs: set[tuple[str, ...]], words: tuple[str, ...]) -> set[tuple[str, ...]]:
    present = {words[i : i + RUN] for i in range(len(words) - RUN + 1)}
    return runs & present


def book_pages() -> list[Path]:
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    pages = []
    for name in re.findall(r"(?:root|file):\s*(\S+)", toc):
        for suffix in (".ipynb", ".md"):
            if (ROOT / f"{name}{suffix}").exists():
                pages.append(ROOT / f"{name}{suffix}")
    return pages


def test_solution_extraction_finds_both_kinds_of_solution():
    pages = {p.name: p for p in book_pages()}
    chapter = pages["06_cold_start_evaluation.ipynb"]
    solutions, other = solution_and_other_text(chapter)
    assert any("catalogue_exclude" in s for s in solutions)        # gated, with a code cell
    assert any("BPR" in s for s in solutions)                      # a plain {solution}
    assert "BPR" not in other and ":label: ch6-ex-choice" in other  # exercises are not solutions
    assert all(solution_runs(p) for p in pages.values() if "{solution" in p.read_text())


# A tiny book: one notebook with an exercise, a gated solution holding a code cell, and a
# plain solution.
NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": [
            "# Tiny\n\n```{exercise}\n:label: ex-one\nEXERCISETEXT compute it.\n```\n\n",
            "```{solution-start} ex-one\n:class: dropdown\n```\nGATEDPROSE before the code.\n"]},
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
         "source": ["GATEDCODE = 1\n"]},
        {"cell_type": "markdown", "metadata": {}, "source": [
            "GATEDAFTER the code.\n\n```{solution-end}\n```\n\n",
            "```{exercise}\n:label: ex-two\nSECONDEXERCISE.\n```\n\n",
            "```{solution} ex-two\n:class: dropdown\nPLAINSOLUTION here.\n```\n\nAFTERALL.\n"]},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def build_tiny_book(folder: Path, hide: bool) -> str:
    folder.mkdir()
    (folder / "index.ipynb").write_text(json.dumps(NOTEBOOK), encoding="utf-8")
    (folder / "conf.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "book" / "_ext")!r})
        extensions = ["myst_nb", "sphinx_exercise", "student_edition"]
        nb_execution_mode = "off"
        hide_solutions = {hide}
        """), encoding="utf-8")
    out = folder / "_html"
    result = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "-q",
                             str(folder), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return (out / "index.html").read_text(encoding="utf-8")


def test_the_extension_hides_gated_and_plain_solutions(tmp_path):
    page = build_tiny_book(tmp_path / "student", hide=True)
    for shown in ("EXERCISETEXT", "SECONDEXERCISE", "AFTERALL"):
        assert shown in page
    for hidden in ("GATEDPROSE", "GATEDCODE", "GATEDAFTER", "PLAINSOLUTION"):
        assert hidden not in page
    full = build_tiny_book(tmp_path / "full", hide=False)
    for shown in ("EXERCISETEXT", "GATEDPROSE", "GATEDCODE", "GATEDAFTER", "PLAINSOLUTION"):
        assert shown in full


def _built(folder: Path) -> bool:
    if (folder / "index.html").exists():
        return True
    if folder == STUDENT_HTML and os.environ.get("TOYREC_REQUIRE_STUDENT_BUILD") == "1":
        pytest.fail(f"{folder} is missing: run `make book-student` first")
    return False


def test_the_built_student_edition_has_no_solution_content():
    if not _built(STUDENT_HTML):
        pytest.skip("no student edition built (make book-student)")
    checked = 0
    for page in book_pages():
        built = STUDENT_HTML / page.relative_to(ROOT).with_suffix(".html")
        assert built.exists(), f"{built} is missing from the student edition"
        text = built.read_text(encoding="utf-8")
        assert not re.search(r'class="[^"]*\bsolution\b', text), f"a solution block in {built}"
        words = html_words(built)
        for runs in solution_runs(page):
            found = leaked(runs, words)
            assert not found, f"{built.name} shows solution text: {' '.join(sorted(found)[0])}"
            checked += 1
    assert checked >= 20, "too few solutions were checked"


def test_the_full_edition_does_show_the_solutions_the_check_looks_for():
    """The check above could pass by looking for text that is never rendered; in the full
    edition almost every solution's text is found."""
    if not _built(FULL_HTML):
        pytest.skip("no full edition built (make book)")
    found = total = 0
    for page in book_pages():
        built = FULL_HTML / page.relative_to(ROOT).with_suffix(".html")
        words = html_words(built)
        for runs in solution_runs(page):
            total += 1
            found += bool(leaked(runs, words))
    assert total and found / total > 0.9, f"only {found} of {total} solutions found"
