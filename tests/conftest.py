"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run the suite on one intra-op thread.

    The tensors in the tests are small: extra threads only add synchronisation, and on a busy
    2-core machine oversubscribed threads made some tests over ten times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
