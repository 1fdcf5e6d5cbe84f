"""A notebook opened alone, as in Colab: no repository checkout, no network.

Chapter 1 is copied into an empty folder and executed with only an installed copy of the
package on the path (no ``data/`` directory beside it), so the ToyShop must be regenerated
from its seed into a cache folder and verified against the recorded checksums.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(site: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site)  # found before the editable install of the checkout
    env["TOYREC_CACHE"] = str(cache)
    env["MPLBACKEND"] = "Agg"
    return env


def test_chapter_one_runs_alone_with_only_the_installed_package(tmp_path):
    site, work, cache = tmp_path / "site", tmp_path / "work", tmp_path / "cache"
    shutil.copytree(
        ROOT / "toyrec_helpers",
        site / "toyrec_helpers",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    work.mkdir()
    notebook = work / "01_cold_start_problem.ipynb"
    shutil.copy(ROOT / "book" / notebook.name, notebook)
    env = _env(site, cache)

    where = subprocess.run(
        [sys.executable, "-c", "import toyrec_helpers; print(toyrec_helpers.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where.stdout

    jupyter = Path(sys.executable).with_name("jupyter")
    run = subprocess.run(
        [str(jupyter), "execute", "--inplace", notebook.name],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in (cache / "toyshop-v1").iterdir()) == [
        "README.md", "items.csv", "random_exposure.csv", "ratings.csv", "schema.json",
        "users.csv",
    ]  # fmt: skip
    cells = json.loads(notebook.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    # the setup cell found the installed package and did not try to install anything
    assert "toyrec_helpers 0.1.0" in "".join(
        "".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream"
    )
