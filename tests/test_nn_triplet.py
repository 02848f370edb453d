# This file is part of meas_rbnet.
"""Tests of the triplet networks (lsst.meas.rbnet.nn.triplet)."""

import pytest
import torch
from lsst.meas.rbnet.constants import ALL_CLASSES
from lsst.meas.rbnet.nn import architecture_defaults, architectures, build
from lsst.meas.rbnet.nn.triplet import BraaiLike, TripletCNN, dihedral_transforms

torch.set_num_threads(1)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_registered():
    names = architectures()
    assert "triplet_cnn" in names and "braai_like" in names
    assert isinstance(build("triplet_cnn"), TripletCNN)
    assert isinstance(build("braai_like"), BraaiLike)
    defaults = architecture_defaults("triplet_cnn")
    assert defaults["stamp_size"] == 31 and defaults["in_channels"] == 3 and defaults["n_classes"] == 0


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [21, 31, 63])
def test_triplet_cnn_shapes(channels, size):
    model = build("triplet_cnn", in_channels=channels, stamp_size=size).eval()
    x = torch.randn(5, channels, size, size)
    with torch.no_grad():
        logits = model(x)
        logits2, classes = model.forward_with_classes(x)
    assert logits.shape == (5,) and logits.dtype == torch.float32
    assert classes is None
    torch.testing.assert_close(logits, logits2)


def test_weights_independent_of_stamp_size():
    # Global pooling: the same weights serve any stamp size.
    a = build("triplet_cnn", stamp_size=31)
    b = build("triplet_cnn", stamp_size=63)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert 20_000 <= n_params(a) <= 150_000


def test_class_head():
    model = build("triplet_cnn", n_classes=len(ALL_CLASSES)).eval()
    with torch.no_grad():
        logits, classes = model.forward_with_classes(torch.randn(4, 3, 31, 31))
    assert logits.shape == (4,) and classes.shape == (4, len(ALL_CLASSES))
    braai = build("braai_like", n_classes=len(ALL_CLASSES)).eval()
    with torch.no_grad():
        logits, classes = braai.forward_with_classes(torch.randn(2, 3, 63, 63))
    assert logits.shape == (2,) and classes.shape == (2, len(ALL_CLASSES))


def test_braai_like_size():
    # conv 16,16 pool2 conv 32,32 pool4 dense 256 dense 1, "valid" convs, on 63x63x3:
    # 448 + 2320 + 4640 + 9248 + (6*6*32*256 + 256) + 257 parameters.
    model = build("braai_like")
    assert n_params(model) == 448 + 2320 + 4640 + 9248 + (6 * 6 * 32 * 256 + 256) + 257 == 312_081
    with torch.no_grad():
        assert model.eval()(torch.randn(3, 3, 63, 63)).shape == (3,)
    small = build("braai_like", in_channels=1, stamp_size=31).eval()
    with torch.no_grad():
        assert small(torch.randn(2, 1, 31, 31)).shape == (2,)


def test_wrong_input_shape_is_refused():
    model = build("triplet_cnn", in_channels=3, stamp_size=31).eval()
    with pytest.raises(ValueError, match=r"\(N, 3, 31, 31\)"):
        model(torch.randn(2, 1, 31, 31))
    with pytest.raises(ValueError, match="31"):
        model(torch.randn(2, 3, 33, 33))
    with pytest.raises(ValueError, match="63"):
        build("braai_like")(torch.randn(2, 3, 31, 31))


@pytest.mark.parametrize(
    "name, hp, match",
    [
        ("triplet_cnn", {"widths": []}, "widths"),
        ("triplet_cnn", {"widths": [16, -1]}, "widths"),
        ("triplet_cnn", {"dropout": 1.5}, "dropout"),
        ("triplet_cnn", {"n_classes": 3}, "n_classes"),
        ("triplet_cnn", {"pooling": "median"}, "pooling"),
        ("triplet_cnn", {"in_channels": 0}, "in_channels"),
        ("triplet_cnn", {"stamp_size": 5, "widths": [8, 8, 8, 8]}, "too small"),
        ("triplet_cnn", {"no_such_option": 1}, "does not take"),
        ("braai_like", {"widths": [16, 32, 64]}, "two integers"),
        ("braai_like", {"stamp_size": 15}, "too small"),
        ("no_such_net", {}, "Unknown architecture"),
    ],
)
def test_build_errors(name, hp, match):
    with pytest.raises(ValueError, match=match):
        build(name, **hp)


def test_dihedral_transforms_are_the_group():
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    images = dihedral_transforms(x)
    assert len({tuple(t.flatten().tolist()) for t in images}) == 8
    # Transforming the input permutes the set.
    rotated = dihedral_transforms(torch.rot90(x, 1, dims=(-2, -1)))
    assert {tuple(t.flatten().tolist()) for t in images} == {tuple(t.flatten().tolist()) for t in rotated}


def test_symmetric_pooling_is_invariant():
    torch.manual_seed(1)
    model = build("triplet_cnn", symmetric_pooling=True, widths=[8, 16, 16]).eval()
    x = torch.randn(4, 3, 31, 31)
    with torch.no_grad():
        ref = model(x)
        for t in dihedral_transforms(x)[1:]:
            torch.testing.assert_close(model(t.contiguous()), ref, rtol=0, atol=1e-6)
        # A plain model is not invariant (otherwise the test above would prove nothing).
        plain = build("triplet_cnn", widths=[8, 16, 16]).eval()
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(plain(torch.rot90(x, 1, dims=(-2, -1))), plain(x), atol=1e-6)


def test_train_mode_gradients():
    model = build("triplet_cnn", n_classes=len(ALL_CLASSES)).train()
    logits, classes = model.forward_with_classes(torch.randn(6, 3, 31, 31))
    (logits.sum() + classes.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
