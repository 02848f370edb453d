# A quick, small sequence-model training run (under a minute on 2 CPU cores), as used by
# `rbnet demo --sequence`: a narrower VAE and classifier than the RB_ZTF defaults, few epochs,
# frames of all three channels (artifacts show in the difference), and no held-out test split
# (the demo measures the model on a separate scoring series).
config.channels = ["difference", "science", "template"]  # noqa: F821
config.latentDim = 16  # noqa: F821
config.vaeHiddenChannels = [16, 32, 64]  # noqa: F821
config.vaeEpochs = 6  # noqa: F821
config.vaeBatchSize = 128  # noqa: F821
config.classifierWidth = 32  # noqa: F821
config.headHidden = 32  # noqa: F821
config.learningRate = 3e-3  # noqa: F821
config.maxEpochs = 40  # noqa: F821
config.minEpochs = 8  # noqa: F821
config.patience = 8  # noqa: F821
config.testFraction = 0.0  # noqa: F821
# A safety net only: a budget that is reached makes the result depend on the machine's speed.
config.maxSeconds = 180.0  # noqa: F821
# One thread: on a shared machine, two threads per process can be several times slower.
config.numThreads = 1  # noqa: F821
config.version = "demoseq"  # noqa: F821
