# A quick, small sequence-model training run (well under a minute on 2 CPU cores), as used by
# `rbnet demo --sequence`: a narrower VAE and classifier than the RB_ZTF defaults, few epochs.
config.latentDim = 16  # noqa: F821
config.vaeHiddenChannels = [16, 32, 64]  # noqa: F821
config.vaeEpochs = 6  # noqa: F821
config.vaeBatchSize = 128  # noqa: F821
config.classifierWidth = 32  # noqa: F821
config.headHidden = 32  # noqa: F821
config.maxEpochs = 40  # noqa: F821
config.minEpochs = 8  # noqa: F821
config.patience = 8  # noqa: F821
config.maxSeconds = 60.0  # noqa: F821
config.numThreads = 1  # noqa: F821
config.version = "demoseq"  # noqa: F821
