import pytest
import torch

from analytic import LinearBinary

torch.set_num_threads(2)


@pytest.fixture
def linear_model():
    g = torch.Generator().manual_seed(1)
    return LinearBinary(torch.randn(784, generator=g), b=0.3)
