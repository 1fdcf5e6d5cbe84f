"""Fixtures shared by several test modules.

``single_thread`` (used by every test): the models of these tests are tiny, so one
intra-op thread is faster and avoids oversubscription when the suite runs in parallel
(pytest-xdist) on two cores.

``toyshop``: the committed ToyShop, loaded once per test module.
"""

from __future__ import annotations

import pytest
import torch
from datadirs import TOYSHOP_DIR

from toyrec_helpers.data import load_dataset


@pytest.fixture(autouse=True)
def single_thread():
    """Run the test with ``torch.set_num_threads(1)``; restore the thread count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toyshop():
    """The committed ToyShop data set (``data/toyshop``), loaded once per module."""
    return load_dataset(TOYSHOP_DIR)
