"""Golden outputs: the paper's network and torchvision's variant, seed 0, a fixed input, recorded values.

Any change to the layers, their order, the initialisation, the LRN constants or the towers moves these
numbers. They were recorded with torch 2.14.1 on the CPU and agree between the C++ and the pure-PyTorch
LRN to about 1e-6; a deliberate change of the network must re-record them and say why.
"""

import pytest
import torch

from alexnet.models import create_model

GOLDEN = {
    # name: (logits[0, :4], logits[1, -3:], sum |logits|, sum of fc7 features)
    "alexnet": ([-0.083281, -0.306003, -0.565262, -0.867323], [-0.181363, -1.071431, -0.284381],
                1353.1168, 8792.1210),
    "alexnet_owt": ([-0.077099, 0.018821, 0.017154, -0.050598], [-0.16433, -0.033408, -0.033271],
                    160.03664, 814.18803),
}


def _input() -> torch.Tensor:
    """Two 224x224 images, deterministic without any random generator, about the paper's raw pixel scale."""
    ramp = torch.arange(2 * 3 * 224 * 224, dtype=torch.float64) * 0.001
    return (torch.sin(ramp) * 60).reshape(2, 3, 224, 224).float()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_seed_0_outputs_match_the_recorded_values(name):
    first, last, abs_sum, feature_sum = GOLDEN[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).eval()
    x = _input()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert logits.shape == (2, 1000) and features.shape == (2, 4096)
    torch.testing.assert_close(logits[0, :4], torch.tensor(first), rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(logits[1, -3:], torch.tensor(last), rtol=1e-4, atol=2e-5)
    assert float(logits.double().abs().sum()) == pytest.approx(abs_sum, rel=1e-5)
    assert float(features.double().sum()) == pytest.approx(feature_sum, rel=1e-5)
