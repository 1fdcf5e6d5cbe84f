"""Helpers for the book *Meta-Learning for Cold-Start Toy Recommendation*.

Each module keeps what one or more chapters teach; every public helper's docstring names
the chapter that introduces it. Import the submodules explicitly, e.g.
``from toyrec_helpers import data, episodes``.
"""

__version__ = "0.1.0"
