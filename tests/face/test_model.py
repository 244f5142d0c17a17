from __future__ import annotations

import pytest
import torch

from fedface_common.face.model import MobileFaceNet, count_parameters, final_map_size


def test_default_model_is_about_one_million_parameters() -> None:
    n = count_parameters(MobileFaceNet())
    assert 0.9e6 < n < 1.1e6


@pytest.mark.parametrize(("size", "dim"), [(112, 128), (64, 256), (56, 512), (32, 128)])
def test_forward_shape_and_unit_norm(size: int, dim: int) -> None:
    torch.manual_seed(0)
    model = MobileFaceNet(width=0.25, input_size=size, embedding_dim=dim).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_gdc_kernel_follows_final_map() -> None:
    assert [final_map_size(s) for s in (112, 64, 56, 32)] == [7, 4, 4, 2]
    assert MobileFaceNet(input_size=64).gdc.conv.kernel_size == (4, 4)


def test_width_scales_parameters() -> None:
    assert count_parameters(MobileFaceNet(width=0.5)) < 0.4 * count_parameters(MobileFaceNet(width=1.0))


def test_wrong_input_size_is_refused() -> None:
    with pytest.raises(ValueError, match="64x64"):
        MobileFaceNet(width=0.25, input_size=64)(torch.randn(1, 3, 112, 112))
