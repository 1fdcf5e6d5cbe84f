"""Sphinx extension for the student edition of the book (``make book-student``).

sphinx-exercise's ``hide_solutions: true`` drops ``{solution}`` blocks, but for a gated
solution (``{solution-start}`` ... ``{solution-end}``, used when a solution holds code
cells) it drops only the opening directive: the prose and the code cells between the two
markers would still be shown. This extension, when ``hide_solutions`` is on, replaces the
opening directive by a marker and removes everything from the marker up to and including
the matching ``{solution-end}``. With ``hide_solutions`` off it changes nothing.

Loaded only by the student edition's configuration (``_config_student.yml``).
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.util import logging
from sphinx_exercise.directive import SolutionStartDirective
from sphinx_exercise.nodes import solution_end_node

logger = logging.getLogger(__name__)


class hidden_solution(nodes.Element):  # noqa: N801 (docutils names nodes in lower case)
    """Where a gated solution began; removed with its content before writing."""


class StudentSolutionStart(SolutionStartDirective):
    """``{solution-start}`` that leaves a marker when solutions are hidden."""

    def run(self) -> list[nodes.Node]:
        result = super().run()  # keeps sphinx-exercise's check of the gated structure
        if self.env.app.config.hide_solutions:
            marker = hidden_solution()
            marker["target"] = self.arguments[0]
            self.set_source_info(marker)
            return [marker]
        return result


class RemoveHiddenSolutions(SphinxTransform):
    """Remove each marked gated solution: the marker, its siblings up to the next
    ``{solution-end}``, and that end marker."""

    default_priority = 5  # after sphinx-exercise checks the structure (1), before it merges (10)

    def apply(self, **kwargs: Any) -> None:
        for marker in list(self.document.findall(hidden_solution)):
            parent = marker.parent
            start = parent.index(marker)
            end = next((i for i in range(start + 1, len(parent))
                        if isinstance(parent[i], solution_end_node)), None)
            if end is None:
                logger.warning("student edition: no {solution-end} after the solution to %s "
                               "in the same section; its content cannot be hidden",
                               marker["target"], location=marker)
                parent.remove(marker)
                continue
            for child in parent.children[start : end + 1]:
                parent.remove(child)


def _skip(self: Any, node: nodes.Element) -> None:
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx_exercise")
    app.add_node(hidden_solution, html=(_skip, None), latex=(_skip, None), text=(_skip, None))
    app.add_directive("solution-start", StudentSolutionStart, override=True)
    app.add_transform(RemoveHiddenSolutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
