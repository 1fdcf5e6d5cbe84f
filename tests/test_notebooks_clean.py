"""How the chapters are stored: notebooks without outputs, on the python3 kernel, checking
their own claims with ``assert``, reading their training seed from ``TOYREC_SEED``, and every
page of the book listed in ``_toc.yml``."""

import json
import re
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
ASSERT_LINE = re.compile(r"^\s*assert\b", re.MULTILINE)
# The setup cell's `SEED = int(os.environ.get("TOYREC_SEED", "0"))`; CI runs every notebook
# with TOYREC_SEED=0 (make test) and TOYREC_SEED=1 (make test-notebooks TOYREC_SEED=1).
SEED_FROM_ENV = re.compile(
    r"""^SEED\s*=\s*int\(\s*os\.environ\.get\(\s*["']TOYREC_SEED["']\s*,\s*["']0["']\s*\)\s*\)""",
    re.MULTILINE)
SEED_ASSIGNED = re.compile(r"^SEED\s*=", re.MULTILINE)


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


def seed_problems(path: Path) -> list[str]:
    """Whether a notebook takes its training seed from TOYREC_SEED; empty when it does."""
    nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    reads = [source for source in code if SEED_FROM_ENV.search(source)]
    assignments = sum(len(SEED_ASSIGNED.findall(source)) for source in code)
    if not reads:
        return [f"{path.name}: no code cell sets "
                'SEED = int(os.environ.get("TOYREC_SEED", "0"))']
    if assignments > 1:
        return [f"{path.name}: SEED is assigned {assignments} times; only from TOYREC_SEED"]
    return []


def test_book_has_notebooks() -> None:
    assert NOTEBOOKS, f"no chapter notebooks found in {BOOK}"


def test_notebooks_are_stored_clean() -> None:
    problems = [problem for path in NOTEBOOKS for problem in notebook_problems(path)]
    assert not problems, "\n".join(problems)


def test_notebooks_read_their_seed_from_the_environment() -> None:
    """CI runs the book twice (TOYREC_SEED=0 and 1): every chapter's training seed follows it."""
    problems = [problem for path in NOTEBOOKS for problem in seed_problems(path)]
    assert not problems, "\n".join(problems)


def test_seed_problems_are_detected(tmp_path: Path) -> None:
    """A fixed seed, or a seed from the environment overwritten later, is rejected."""
    path = tmp_path / "seeded.ipynb"
    reads = 'import os\nSEED = int(os.environ.get("TOYREC_SEED", "0"))\nassert SEED >= 0'
    for sources, expected in (
        (["SEED = 0\nassert SEED == 0"], 1),
        ([reads, "SEED = 3"], 1),
        ([reads, "torch.manual_seed(SEED)"], 0),
    ):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
        path.write_text(json.dumps(nb), encoding="utf-8")
        assert len(seed_problems(path)) == expected, (sources, seed_problems(path))


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
