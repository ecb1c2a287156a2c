"""APT's network parts: axial attention vs a direct computation, the 3D U-Net, NPCC, stitching."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptynb.learn.attention import AxialAttention3d, AxialAttentionBlock, full_attention_reference
from ptynb.learn.losses import npcc
from ptynb.learn.stitch import blend_weight, extract_patches, patch_starts, predict_stitched
from ptynb.learn.unet3d import UNet3D, architecture, build_unet3d


@pytest.mark.parametrize("axis", ["z", "y", "x"])
def test_axial_attention_equals_direct_full_softmax(axis):
    torch.manual_seed(0)
    layer = AxialAttention3d(8, heads=2, axis=axis, max_length=8).double()
    with torch.no_grad():
        layer.rel_bias.normal_()  # a non-trivial relative-position bias
    x = torch.randn(2, 8, 3, 4, 5, dtype=torch.float64)
    got = layer(x)
    want = full_attention_reference(layer, x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_attention_uses_query_key_similarity():
    """The output depends on the queries (the released TF code dropped the q.k term)."""
    torch.manual_seed(1)
    layer = AxialAttention3d(4, heads=1, axis="x", max_length=8).double()
    x = torch.randn(1, 4, 1, 1, 6, dtype=torch.float64)
    a = layer(x)
    with torch.no_grad():
        layer.qkv.weight[:4] *= 3.0  # scale the queries only
    b = layer(x)
    assert not torch.allclose(a, b)


def test_attention_block_and_bias_table():
    blk = AxialAttentionBlock(8, heads=4, max_length=4)
    x = torch.randn(2, 8, 3, 6, 6)
    assert blk(x).shape == x.shape  # lines longer than max_length share the edge bias
    b = blk.attn[0].bias(3)
    assert b.shape == (4, 3, 3)
    torch.testing.assert_close(b[:, 0, 1], b[:, 1, 2])  # bias depends on i - j only


def test_unet3d_shapes_batchnorm_and_architecture():
    m = UNet3D(width=0.0625, blocks=(1, 1, 1), heads=2)
    x = torch.randn(2, 1, 4, 16, 12)
    y = m(x)
    assert y.shape == x.shape
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm3d)]
    assert bns and all(b.num_features > 1 for b in bns)  # over channels
    with pytest.raises(ValueError, match="divisible by 4"):
        m(torch.randn(1, 1, 4, 10, 12))
    arch = architecture(0.0625, (1, 1, 1), 2, patch=[4, 16, 16])
    m2 = build_unet3d(arch)
    assert [k for k in m2.state_dict()] == [k for k in m.state_dict()]
    full = UNet3D(width=1.0)  # the paper's channel counts
    assert full.enc1[0].c3.out_channels == 128 and full.enc2[0].c3.out_channels == 256
    assert full.enc3[0].c3.out_channels == 512
    assert (len(full.enc1), len(full.enc2), len(full.enc3)) == (3, 4, 6)


def test_npcc_affine_is_minus_one_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 4, 8, 8, generator=g)
    torch.testing.assert_close(npcc(2.5 * x + 7.0, x), torch.tensor(-1.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(npcc(-x, x), torch.tensor(1.0), atol=1e-6, rtol=0)
    v = npcc(torch.randn(3, 1, 4, 8, 8, generator=g), x, reduction="none")
    assert v.shape == (3,) and bool((v.abs() < 0.5).all())
    with pytest.raises(ValueError):
        npcc(x, x[:1])


def test_stitching_constant_and_identity_no_seams():
    assert patch_starts(64, 32) == [0, 16, 32]
    assert patch_starts(70, 32) == [0, 16, 32, 38]
    assert patch_starts(20, 32) == [0]
    c = np.full((20, 70, 45), 3.7, np.float32)
    out = predict_stitched(lambda p: p, c, (16, 32, 32))
    assert out.shape == c.shape
    assert np.max(np.abs(out - np.float32(3.7))) <= 1e-6
    r = np.random.default_rng(0).random((24, 64, 48)).astype(np.float32)
    out = predict_stitched(lambda p: p, r, (16, 32, 32))
    np.testing.assert_allclose(out, r, atol=1e-6)
    patches, corners = extract_patches(r, (16, 32, 32))
    assert patches.shape[1:] == (16, 32, 32) and len(corners) == len(patches)
    assert blend_weight((4, 4, 4)).min() > 0
    # a network that adds a per-patch offset: blended, so neighbouring voxels never jump
    k = iter(range(10_000))
    out = predict_stitched(lambda p: p * 0 + next(k), np.zeros((16, 64, 64)), (16, 32, 32), batch=1)
    assert np.max(np.abs(np.diff(out, axis=2))) < 1.0
