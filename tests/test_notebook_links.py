"""Every chapter points at the repository named once, in _config.yml.

The Colab link under each title and the setup cell's install command both spell out the
repository URL (a notebook opened alone cannot read _config.yml); this test keeps them equal
to the one place where it is configured.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]*_*.ipynb"))  # 03_..., 03b_...
REPO = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"]["url"]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_colab_link_and_install_url_match_the_configured_repository(path):
    cells = _cells(path)
    title = "".join(cells[0]["source"])
    slug = REPO.removeprefix("https://github.com/")
    expected = f"https://colab.research.google.com/github/{slug}/blob/main/book/{path.name}"
    assert f"[Open this chapter in Colab]({expected})" in title
    setup = next("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    urls = re.findall(r"git\+(https://[^@\"]+)@([\w.]+)", setup)
    assert urls == [(REPO, "v0.1.0")], urls
    assert 'find_spec("toyrec_helpers") is None' in setup  # installs only when missing
    assert "torch" not in setup.split("subprocess.check_call")[1].split(")")[0]


def test_every_chapter_is_checked():
    assert len(CHAPTERS) >= 6
    assert set(CHAPTERS) == set((ROOT / "book").glob("*.ipynb"))  # every notebook is a page
