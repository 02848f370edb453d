# This file is part of meas_rbnet.
"""The multi-visit (sequence) model: frames -> VAE latents -> sequence classifier -> one score per object.

Modules: `latents` (ragged latent sets, reading a latent directory and label CSV),
`data` (length-bucketed batches), `train` (VAE and classifier training), `cv`
(stratified k-fold evaluation and ROC plots), `encode` (frames to latents),
`aggregate` (per-object aggregation of single-visit scores, the baseline),
`scoring` (scoring objects with a sequence model package), `synthetic`
(development stand-ins).
"""

__all__: list[str] = []
