# braai-style 63x63 stamps (ZTF): the reliability task checks that the model takes
# 63x63 stamps and writes 63x63 cutouts; the training tasks cut and train at 63.
# Apply to the task of your pipeline with -C <label>:config/ztf63.py.
from lsst.meas.rbnet.tasks.labelled_cutouts import LabelledCutoutsConfig
from lsst.meas.rbnet.tasks.reliability import ReliabilityConfig
from lsst.meas.rbnet.tasks.train import TrainTripletConfig

if isinstance(config, ReliabilityConfig):  # noqa: F821
    config.stampSize = 63  # noqa: F821
    config.cutoutSize = 63  # noqa: F821
elif isinstance(config, LabelledCutoutsConfig):  # noqa: F821
    config.stampSize = 63  # noqa: F821
elif isinstance(config, TrainTripletConfig):  # noqa: F821
    config.stampSize = 63  # noqa: F821
    config.architecture = "braai_like"  # noqa: F821
    config.normalization = "unit"  # noqa: F821
