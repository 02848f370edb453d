# A quick, small training run (about a minute on 2 CPU cores), as used by `rbnet demo --train`.
config.epochs = 4  # noqa: F821
config.widths = [8, 16, 32]  # noqa: F821
config.hidden = 32  # noqa: F821
config.maxSeconds = 60.0  # noqa: F821
config.patience = 2  # noqa: F821
config.version = "demo"  # noqa: F821
