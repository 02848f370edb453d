# This file is part of meas_rbnet.
"""Training of triplet models from labelled stamps: data, losses, loops, metrics, calibration.

Modules:

- `~lsst.meas.rbnet.training.data`: prepared in-memory datasets, splits, augmentation;
- `~lsst.meas.rbnet.training.losses`: BCE, focal and Tversky losses by name;
- `~lsst.meas.rbnet.training.metrics`: ROC-AUC, purity/completeness, calibration error
  (numpy only);
- `~lsst.meas.rbnet.training.calibration`: temperature scaling;
- `~lsst.meas.rbnet.training.loop`: `train_triplet_model` (train, calibrate, package);
- `~lsst.meas.rbnet.training.config`, `~lsst.meas.rbnet.training.finetune`,
  `~lsst.meas.rbnet.training.evaluation`, `~lsst.meas.rbnet.training.steps`: the loop's config
  and result, fine-tuning from a package, logits and thresholds, device/loss/schedule helpers
  (re-exported by ``loop``);
- `~lsst.meas.rbnet.training.crossval`: stratified k-fold cross-validation (its fold split,
  `fold_splits` of `~lsst.meas.rbnet.training.data.deal_folds`, also serves the sequence model's
  `~lsst.meas.rbnet.sequence.cv`);
- `~lsst.meas.rbnet.training.baseline`: the logistic-regression baseline;
- `~lsst.meas.rbnet.training.report`, `~lsst.meas.rbnet.training.plots`: tables and PNGs
  (`~lsst.meas.rbnet.training.plots.draw_roc` draws the ROC curves of both models).
"""

from .loop import TrainConfig, TrainResult, train_triplet_model  # noqa: F401

__all__ = ["TrainConfig", "TrainResult", "train_triplet_model"]
