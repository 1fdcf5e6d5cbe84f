"""Sphinx extension: serve MathJax and the ipywidgets bundle from the book itself.

``make book`` runs ``npm ci`` for ``book/_assets_src/package.json`` and copies the files the
pages need into ``book/_vendor/`` (git-ignored), finishing with the marker file
``book/_vendor/.complete``. When the marker is there, this extension points Sphinx and MyST-NB
at the copies, so that a page of the built book loads nothing from outside the site.

When npm or the registry was unavailable, the marker is missing and the configuration is left
as it is: pages then load the same libraries from the CDNs that Sphinx and MyST-NB use by
default. Either way the build gives no warning, so ``jupyter-book build -W`` stays green.
"""

from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util import logging

logger = logging.getLogger(__name__)

VENDOR = "book/_vendor"  # relative to the book root, which is Sphinx's confdir
MARKER = ".complete"
# Paths below VENDOR; the folder's content is copied to _static/ of the built site.
MATHJAX = "mathjax/tex-chtml.js"
REQUIRE_CONFIG = "require-config.js"  # sets RequireJS's baseUrl to _static/
REQUIREJS = "require.js"
WIDGETS = "@jupyter-widgets/html-manager/dist/embed-amd.js"


def use_vendored_assets(app: Sphinx, config: Config) -> None:
    """Switch to the vendored copies when ``make book`` installed them all."""
    vendor = Path(app.confdir) / VENDOR
    files = [MARKER, MATHJAX, REQUIRE_CONFIG, REQUIREJS, WIDGETS]
    missing = [name for name in files if not (vendor / name).is_file()]
    if missing:
        logger.info(
            "[offline_assets] %s lacks %s: pages load MathJax and ipywidgets from CDNs",
            VENDOR,
            ", ".join(missing),
        )
        return
    config.html_static_path = [*config.html_static_path, VENDOR]
    config.mathjax_path = MATHJAX
    # In this order: RequireJS's configuration, RequireJS, then the widget bundle (AMD
    # modules). Paths are relative to _static/.
    config.nb_ipywidgets_js = {REQUIRE_CONFIG: {}, REQUIREJS: {}, WIDGETS: {}}
    logger.info("[offline_assets] serving MathJax and ipywidgets from %s", VENDOR)


# The ipywidgets bundle typesets widget labels with MathJax 2's API (MathJax.Hub.Queue),
# while Sphinx serves MathJax 3. Give every MathJax object a small Hub whose Queue
# typesets with MathJax 3, so that widget pages raise no JavaScript error. MathJax 3
# replaces window.MathJax when it starts, hence the property setter.
MATHJAX2_SHIM = """(function () {
  var current = window.MathJax;
  function withHub(mj) {
    if (mj && typeof mj === "object" && !mj.Hub) {
      mj.Hub = { Queue: function () {
        var m = window.MathJax;
        if (m && typeof m.typesetPromise === "function") { m.typesetPromise(); }
      } };
    }
    return mj;
  }
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); }
  });
  current = withHub(current);
})();"""


def add_mathjax2_shim(app: Sphinx) -> None:
    """Inline the shim first in every page's head, before MathJax and the widgets load."""
    app.add_js_file(None, body=MATHJAX2_SHIM, priority=1)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", use_vendored_assets)
    app.connect("builder-inited", add_mathjax2_shim)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
