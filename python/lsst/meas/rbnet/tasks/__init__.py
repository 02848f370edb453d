# This file is part of meas_rbnet.
"""PipelineTasks: thin layers that turn Butler objects into arrays and call the science code.

- `~lsst.meas.rbnet.tasks.reliability.ReliabilityTask` (label ``computeReliability``): scores
  diaSources, the AP drop-in.
- `~lsst.meas.rbnet.tasks.labelled_cutouts.LabelledCutoutsTask`: raw stamps of labelled sources.
- `~lsst.meas.rbnet.tasks.train.TrainTripletTask`: trains a model package from labelled cutouts.
- `~lsst.meas.rbnet.tasks.train_sequence.TrainSequenceTask` and
  `~lsst.meas.rbnet.tasks.sequence_reliability.SequenceReliabilityTask`: the multi-visit sequence
  model (`~lsst.meas.rbnet.tasks.sequence` re-exports both, with the decisions they share).
- `~lsst.meas.rbnet.tasks.adapter`: image objects (lsst.images, afw) to numpy arrays.
- `~lsst.meas.rbnet.tasks.errors`: data problems of the inputs as pipe_base error types
  (`~lsst.pipe.base.AlgorithmError` subclasses with metadata, `~lsst.pipe.base.UnprocessableDataError`).

Names are imported on first use so that ``import lsst.meas.rbnet.tasks`` stays cheap.
"""

__all__ = [
    "ReliabilityTask",
    "ReliabilityConfig",
    "ReliabilityConnections",
    "LabelledCutoutsTask",
    "LabelledCutoutsConfig",
    "TrainTripletTask",
    "TrainTripletConfig",
    "TrainSequenceTask",
    "TrainSequenceConfig",
    "SequenceReliabilityTask",
    "SequenceReliabilityConfig",
]

# The tasks declare connections with this package's storage classes; a process that
# reads a quantum graph (pipetask run-qbb in BPS jobs) needs them before it reads any
# repository config, and importing the tasks is what such a process does first.
# (From the package's foundation, not the Butler layer, which the tasks must not import.)
from ..storage_classes import register_storage_classes as _register_storage_classes  # noqa: E402

_register_storage_classes()

_WHERE = {
    "ReliabilityTask": "reliability",
    "ReliabilityConfig": "reliability",
    "ReliabilityConnections": "reliability",
    "LabelledCutoutsTask": "labelled_cutouts",
    "LabelledCutoutsConfig": "labelled_cutouts",
    "TrainTripletTask": "train",
    "TrainTripletConfig": "train",
    "TrainSequenceTask": "train_sequence",
    "TrainSequenceConfig": "train_sequence",
    "SequenceReliabilityTask": "sequence_reliability",
    "SequenceReliabilityConfig": "sequence_reliability",
}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
