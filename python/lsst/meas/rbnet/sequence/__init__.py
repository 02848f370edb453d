# This file is part of meas_rbnet.
"""The multi-visit (sequence) model: frames -> VAE latents -> sequence classifier -> one score per object.

Modules: `latents` (ragged latent sets, reading a latent directory and label CSV),
`data` (length-bucketed batches), `train` (VAE and classifier training; its configs in
`train_config`, split/Platt/standardisation/logits in `train_eval`, the VAE in
`vae_training`), `cv`
(stratified k-fold evaluation and ROC plots), `encode` (frames to latents),
`aggregate` (per-object aggregation of single-visit scores, the baseline),
`scoring` (scoring objects with a sequence model package), `synthetic`
(development stand-ins).

Per-visit survey data to objects, as arrays and tables (no Butler; the tasks in
`lsst.meas.rbnet.tasks.sequence` call them): `frames` (cutouts and source tables to
frames), `association` (sources to objects: diaObjectId or friends-of-friends),
`partition` (the sky a quantum owns), `labels` (object labels for training),
`objects` (the per-object reliability table).
"""

__all__: list[str] = []
