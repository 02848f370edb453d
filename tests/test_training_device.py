# This file is part of meas_rbnet.
"""The GPU-minded paths of training, exercised on the CPU.

On a GPU the training loop reads its loss back every `LOSS_SYNC_STEPS` steps instead of
every step, and batches cross to the device as stored and are rotated/flipped there.
These tests force those paths on the CPU and check that they give exactly what the CPU
paths give, so the GPU run computes the same thing.
"""

import numpy as np
import pytest
import torch

from lsst.meas.rbnet.contract import InputContract
from lsst.meas.rbnet.training import loop
from lsst.meas.rbnet.training.data import PreparedStamps, _to_device, iterate_batches
from lsst.meas.rbnet.training.loop import TrainConfig, train_triplet_model

SIZE = 21
CONTRACT = InputContract(stamp_size=SIZE)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _data(n=70, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 3, SIZE, SIZE)).astype(dtype)
    labels = (np.arange(n) % 2).astype(np.int8)
    return PreparedStamps(x=x, labels=labels, contract=CONTRACT)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("noise,flux", [(0.0, 0.0), (0.1, 0.2)])
def test_augment_on_device_path_matches_cpu_path(dtype, noise, flux):
    data = _data(dtype=dtype)
    targets = np.arange(len(data)) % 3
    kw = dict(shuffle=True, augment=True, noise_std=noise, flux_jitter=flux, class_index_targets=targets)
    host = list(iterate_batches(data, 32, generator=torch.Generator().manual_seed(5), **kw))
    dev = list(
        iterate_batches(data, 32, generator=torch.Generator().manual_seed(5), augment_on_device=True, **kw)
    )
    assert len(host) == len(dev) == 3
    for (xa, ya, ca), (xb, yb, cb) in zip(host, dev):
        assert xb.dtype == torch.float32
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ca, cb)
    # The augmentation did something: the first batch is not the plain gather of its stamps.
    plain = list(iterate_batches(data, 32, shuffle=True, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(plain[0][0], host[0][0])


def test_to_device_on_cpu_is_a_plain_tensor():
    t = torch.arange(6.0)
    out = _to_device(t, torch.device("cpu"))
    assert torch.equal(out, t) and not out.is_pinned()


def _easy(n, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(np.int64)
    stamps = rng.normal(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)
    stamps[labels == 1, :2, SIZE // 2, SIZE // 2] += 20.0
    return stamps, labels


def test_loss_read_every_n_steps_gives_the_same_training(monkeypatch):
    stamps, labels = _easy(300, 1)
    config = TrainConfig(
        contract=CONTRACT,
        hyperparameters={"widths": [8, 16], "hidden": 16, "dropout": 0.0},
        epochs=2,
        batch_size=32,
        num_threads=1,
        version="t",
        class_loss_weight=0.0,
        symmetric_temperature=False,
    )
    every_step: list = []
    a = train_triplet_model(stamps, labels, config=config, progress=every_step.append)
    # As on a GPU: losses read back every 4 steps (9 steps per epoch: 4 + 4 + 1).
    monkeypatch.setattr(loop, "_loss_sync_steps", lambda device: 4)
    batched: list = []
    b = train_triplet_model(stamps, labels, config=config, progress=batched.append)
    steps_a = [(e["epoch"], e["step"], e["loss"]) for e in every_step if e["event"] == "step"]
    steps_b = [(e["epoch"], e["step"], e["loss"]) for e in batched if e["event"] == "step"]
    assert steps_a == steps_b and len(steps_a) == 2 * 9
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_nan_loss_is_reported_with_its_step():
    events: list = []
    pending = [(1, torch.tensor(0.5), 10), (2, torch.tensor(float("nan")), 10)]
    with pytest.raises(FloatingPointError, match="epoch 3, step 2"):
        loop._drain_losses(pending, 0.0, 0, 3, 9, events.append)
    assert [e["step"] for e in events] == [1]
