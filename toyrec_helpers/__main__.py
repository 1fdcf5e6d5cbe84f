"""``python -m toyrec_helpers``: see :mod:`toyrec_helpers.cli`."""

import sys

from toyrec_helpers.cli import main

sys.exit(main())
