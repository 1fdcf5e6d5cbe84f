"""Write the student edition's configuration: _config.yml with _config_student.yml over it.

Usage (from the repository's top folder; `make book-student` runs it)::

    python book/_ext/student_config.py _config.yml _config_student.yml _build/student/_config.yml

Mappings are merged key by key, other values are replaced. Paths that Jupyter Book reads
relative to the configuration file (``sphinx.local_extensions``) or to the working folder
(``execute.cache``) become absolute, since the merged file lives elsewhere.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` merged in: mappings key by key, other values replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def student_config(base_file: Path, overlay_file: Path) -> dict[str, Any]:
    """The merged configuration, with its relative paths made absolute."""
    root = base_file.resolve().parent
    config = merge(yaml.safe_load(base_file.read_text(encoding="utf-8")),
                   yaml.safe_load(overlay_file.read_text(encoding="utf-8")))
    extensions = config.get("sphinx", {}).get("local_extensions") or {}
    for name, folder in extensions.items():
        extensions[name] = str((root / folder).resolve())
    execute = config.get("execute", {})
    if execute.get("cache"):
        execute["cache"] = str((root / execute["cache"]).resolve())
    return config


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    base, overlay, out = (Path(a) for a in argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Written by book/_ext/student_config.py; edit _config_student.yml.\n"
                   + yaml.safe_dump(student_config(base, overlay), sort_keys=False),
                   encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
