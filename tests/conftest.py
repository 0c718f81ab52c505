import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# analysis results cached by the tests go to a throw-away folder (the model cache stays shared)
os.environ["ENTROSCOPE_RUNS"] = tempfile.mkdtemp(prefix="entroscope-test-runs-")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2 (integration tests only; cached after the first load)."""
    from analysis.models.loading import load_model

    return load_model("smollm2", device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and small eigendecompositions run fastest on one intra-op thread (torch and BLAS), and
    avoid OpenMP spinning on a shared, busy CPU; restored afterwards."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)
