"""How the chapters are stored: notebooks without outputs, on the python3 kernel, checking
their own claims with ``assert``, and every page of the book listed in ``_toc.yml``."""

import json
import re
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
ASSERT_LINE = re.compile(r"^\s*assert\b", re.MULTILINE)


def toc_entries() -> list[str]:
    """Every ``file:`` of ``_toc.yml`` (and its root), relative to the repository root."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    entries = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(toc.get("parts", []))
    walk(toc.get("chapters", []))
    return entries


def notebook_problems(path: Path) -> list[str]:
    """What is wrong with how one notebook is stored; empty when nothing is."""
    name = path.name
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
    problems = []
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        problems.append(f"{name}: not a valid notebook: {exc.message}")
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != "python3":
        problems.append(f"{name}: kernelspec name is {kernel!r}, expected 'python3'")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code, start=1):
        if cell.get("outputs"):
            problems.append(f"{name}: code cell {number} has stored outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"{name}: code cell {number} has an execution count")
    if not any(ASSERT_LINE.search(cell.source) for cell in code):
        problems.append(f"{name}: no code cell contains an assert statement")
    return problems


def test_book_has_notebooks() -> None:
    assert NOTEBOOKS, f"no chapter notebooks found in {BOOK}"


def test_notebooks_are_stored_clean() -> None:
    problems = [problem for path in NOTEBOOKS for problem in notebook_problems(path)]
    assert not problems, "\n".join(problems)


def test_every_toc_entry_exists() -> None:
    missing = [
        entry
        for entry in toc_entries()
        if not any((ROOT / f"{entry}{suffix}").is_file() for suffix in (".md", ".ipynb"))
    ]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"


def test_every_notebook_is_in_the_toc() -> None:
    listed = set(toc_entries())
    absent = [
        path.name
        for path in NOTEBOOKS
        if path.relative_to(ROOT).with_suffix("").as_posix() not in listed
    ]
    assert not absent, f"notebooks missing from _toc.yml (the book would skip them): {absent}"


def test_problems_are_detected(tmp_path: Path) -> None:
    """The checker itself rejects a dirty notebook and accepts a clean one."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "conda-env", "display_name": "x", "language": "python"}
    cell = nbformat.v4.new_code_cell("print(1)", execution_count=3)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells.append(cell)
    path = tmp_path / "bad.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    problems = notebook_problems(path)
    assert len(problems) == 4, problems  # kernel, outputs, execution count, no assert

    nb.metadata["kernelspec"]["name"] = "python3"
    nb.cells = [nbformat.v4.new_code_cell("x = 1\nassert x == 1")]
    path.write_text(json.dumps(nb), encoding="utf-8")
    assert notebook_problems(path) == []
