"""Coarse segmenter registry: output shapes, weight files, errors."""
from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from sammed_fast.models import SEGMENTERS, build_segmenter


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
def test_output_is_one_logit_map_at_input_size(name):
    torch.manual_seed(0)
    model = build_segmenter(name).eval()
    with torch.no_grad():
        for size in ((64, 64), (50, 38)):
            out = model(torch.randn(2, 1, *size))
            assert out.shape == (2, 1, *size) and out.dtype == torch.float32


def test_default_is_the_light_one_and_trains():
    torch.manual_seed(0)
    model = build_segmenter()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    images = torch.randn(4, 1, 32, 32)
    target = (images > 0.5).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_own_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_segmenter("resnet18_lite")
    path = tmp_path / "lite.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    loaded = build_segmenter("resnet18_lite", weights=path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_imagenet_resnet18_state_dict_loads_into_the_encoder(tmp_path):
    torch.manual_seed(0)
    backbone = resnet18(weights=None)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(backbone.state_dict(), path)
    model = build_segmenter("resnet18_unet", weights=path)
    assert torch.equal(model.encoder.layer3[1].conv2.weight, backbone.layer3[1].conv2.weight)


def test_weight_and_input_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown segmenter 'unet'"):
        build_segmenter("unet")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_segmenter("resnet18_lite", weights=tmp_path / "nope.pth")
    lite = tmp_path / "lite.pth"
    torch.save(build_segmenter("resnet18_lite").state_dict(), lite)
    with pytest.raises(ValueError, match="lite.pth do not fit ResNet18UNet"):
        build_segmenter("resnet18_unet", weights=lite)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": build_segmenter("resnet18_lite").state_dict()}, wrapped)
    with pytest.raises(ValueError, match="not a plain state dict"):
        build_segmenter("resnet18_lite", weights=wrapped)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read segmenter weights .*garbage.pth"):
        build_segmenter("resnet18_lite", weights=garbage)
    with pytest.raises(ValueError, match=r"\(B,1,H,W\)"):
        build_segmenter("resnet18_lite")(torch.zeros(1, 3, 32, 32))
