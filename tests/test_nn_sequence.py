# This file is part of meas_rbnet.
"""Tests of the VAE (nn/vae.py) and the sequence classifiers (nn/sequence.py)."""

import numpy as np
import pytest
import torch

from lsst.meas.rbnet.nn import registry
from lsst.meas.rbnet.nn.sequence import length_mask, masked_pool
from lsst.meas.rbnet.nn.vae import FrameVAE, log_cosh

torch.set_num_threads(1)

SEQ_ARCHS = ["seq_bigru", "seq_gru", "seq_lstm", "seq_conv1d"]
SMALL = {
    "seq_bigru": {"hidden_size": 12, "head_hidden": 8},
    "seq_gru": {"hidden_size": 12, "head_hidden": 0, "pooling": "last", "downsample": 1, "features": "x"},
    "seq_lstm": {"hidden_size": 12, "pooling": "mean+max+last+attention", "downsample": 1},
    "seq_conv1d": {"channels": 12, "num_layers": 3, "kernel_size": 5, "pooling": "mean+max+attention"},
}


@pytest.mark.parametrize("frame_size", [28, 32, 29])
@pytest.mark.parametrize("channels", [1, 3])
def test_vae_shapes(frame_size, channels):
    vae = registry.build(
        "vae", in_channels=channels, frame_size=frame_size, latent_dim=36, hidden_channels=[8, 8, 16, 16, 32]
    )
    assert isinstance(vae, FrameVAE)
    x = torch.randn(4, channels, frame_size, frame_size)
    recon, mu, logvar = vae(x)
    assert recon.shape == x.shape
    assert mu.shape == (4, 36) and logvar.shape == (4, 36)
    total, rec, kl = vae.loss(x, recon, mu, logvar)
    assert torch.isfinite(total) and rec > 0 and kl >= 0
    total.backward()
    assert all(p.grad is not None for p in vae.parameters() if p.requires_grad)
    vae.eval()
    m2, _ = vae.encode(x)
    # In eval mode the reconstruction uses the mean, so forward is deterministic.
    assert torch.allclose(vae(x)[0], vae.decode(m2))


def test_vae_default_is_the_paper_architecture():
    vae = registry.build("vae")
    convs = [m for m in vae.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 512]
    assert all(c.stride == (2, 2) for c in convs)
    assert vae.frame_size == 28 and vae.padded_size == 32 and vae.latent_dim == 36
    assert vae.kl_weight == pytest.approx(8e-5)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in vae.decoder) == 5


def test_vae_rejects_wrong_input():
    vae = registry.build("vae", hidden_channels=[4, 4, 4, 4, 4])
    with pytest.raises(ValueError, match="FrameVAE expects frames"):
        vae.encode(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="kernel_size"):
        registry.build("vae", kernel_size=4)


def test_log_cosh_stable():
    d = torch.tensor([-1000.0, -1.0, 0.0, 0.5, 1000.0])
    out = log_cosh(d)
    assert torch.all(torch.isfinite(out))
    assert torch.allclose(out[1:4], torch.log(torch.cosh(d[1:4])), atol=1e-6)
    assert out[0] == pytest.approx(1000 - np.log(2), rel=1e-6)


def _random_sequences(lengths, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, d, generator=g) for n in lengths]
    dts = [torch.rand(n, generator=g) * 10 for n in lengths]
    for dt in dts:
        dt[0] = 0.0
    return xs, dts


def _pad(xs, dts, t_max, fill):
    b, d = len(xs), xs[0].shape[1]
    x = torch.full((b, t_max, d), fill)
    dt = torch.full((b, t_max), fill)
    for i, (a, t) in enumerate(zip(xs, dts)):
        x[i, : len(a)] = a
        dt[i, : len(t)] = t
    return x, torch.tensor([len(a) for a in xs]), dt


@pytest.mark.parametrize("arch", SEQ_ARCHS)
def test_classifier_independent_of_batch_and_padding(arch):
    d = 6
    torch.manual_seed(1)
    model = registry.build(arch, input_dim=d, **SMALL[arch]).eval()
    model.set_standardization(torch.linspace(-0.5, 0.5, d), torch.linspace(0.5, 2.0, d))
    lengths = [1, 2, 3, 17, 64, 250, 500]
    xs, dts = _random_sequences(lengths, d)
    with torch.no_grad():
        alone = torch.cat([model(x[None], torch.tensor([len(x)]), t[None]) for x, t in zip(xs, dts)])
        # All together, padded past the longest with garbage that must not matter.
        x, ln, dt = _pad(xs, dts, 507, fill=123.0)
        together = model(x, ln, dt)
        # Another batch composition and order.
        sel = [5, 0, 3]
        x2, ln2, dt2 = _pad([xs[i] for i in sel], [dts[i] for i in sel], 300, fill=-7.0)
        part = model(x2, ln2, dt2)
    assert alone.shape == (len(lengths),)
    assert torch.all(torch.isfinite(alone))
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(part, alone[sel], atol=2e-5, rtol=1e-4)
    # The outputs are not all the same (the model reads its input).
    assert alone.std() > 1e-4


@pytest.mark.parametrize("arch", ["seq_bigru", "seq_gru"])
def test_downsample_independent_of_padding(arch):
    d = 5
    torch.manual_seed(2)
    model = registry.build(arch, input_dim=d, hidden_size=8, downsample=4).eval()
    lengths = [1, 3, 4, 5, 97]
    xs, dts = _random_sequences(lengths, d, seed=3)
    with torch.no_grad():
        alone = torch.cat([model(x[None], torch.tensor([len(x)]), t[None]) for x, t in zip(xs, dts)])
        x, ln, dt = _pad(xs, dts, 103, fill=50.0)
        together = model(x, ln, dt)
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", SEQ_ARCHS)
def test_classifier_trains(arch):
    d = 4
    torch.manual_seed(0)
    model = registry.build(arch, input_dim=d, **SMALL[arch])
    xs, dts = _random_sequences([5, 9, 30, 2], d)
    x, ln, dt = _pad(xs, dts, 30, 0.0)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, ln, dt), y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


def test_time_feature_is_used_and_optional():
    d = 3
    torch.manual_seed(0)
    model = registry.build("seq_conv1d", input_dim=d, channels=8).eval()
    x = torch.randn(2, 10, d)
    ln = torch.tensor([10, 7])
    with torch.no_grad():
        no_time = model(x, ln, None)
        zero_time = model(x, ln, torch.zeros(2, 10))
        some_time = model(x, ln, torch.rand(2, 10) * 100)
    torch.testing.assert_close(no_time, zero_time)
    assert not torch.allclose(no_time, some_time)
    blind = registry.build("seq_conv1d", input_dim=d, channels=8, use_time=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(blind(x, ln, None), blind(x, ln, torch.rand(2, 10)))


def test_input_validation():
    model = registry.build("seq_bigru", input_dim=4, hidden_size=4)
    with pytest.raises(ValueError, match="latents of shape"):
        model(torch.zeros(2, 5, 3), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="lengths must be in"):
        model(torch.zeros(2, 5, 4), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="lengths must be in"):
        model(torch.zeros(2, 5, 4), torch.tensor([6, 5]))
    with pytest.raises(ValueError, match="dt of shape"):
        model(torch.zeros(2, 5, 4), torch.tensor([5, 5]), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="pooling"):
        registry.build("seq_conv1d", pooling="last")
    with pytest.raises(ValueError, match="Standardisation"):
        model.set_standardization(np.zeros(4), np.zeros(4))


def test_standardization_is_applied():
    d = 3
    model = registry.build("seq_gru", input_dim=d, hidden_size=4).eval()
    x = torch.randn(1, 6, d)
    with torch.no_grad():
        base = model(x, torch.tensor([6]))
        model.set_standardization(np.full(d, 5.0), np.full(d, 2.0))
        shifted = model(x * 2.0 + 5.0, torch.tensor([6]))
    torch.testing.assert_close(base, shifted, atol=1e-5, rtol=1e-5)
    assert "feature_mean" in model.state_dict() and "feature_scale" in model.state_dict()


def test_masked_pool():
    h = torch.tensor([[[1.0], [3.0], [100.0]], [[-2.0], [-4.0], [-6.0]]])
    mask = length_mask(torch.tensor([2, 3]), 3)
    assert masked_pool(h, mask, "mean").flatten().tolist() == [2.0, -4.0]
    assert masked_pool(h, mask, "max").flatten().tolist() == [3.0, -2.0]
