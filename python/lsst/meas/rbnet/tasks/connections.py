# This file is part of meas_rbnet.
"""Connection builders shared by the task modules.

Every task reads or writes the same kinds of dataset: per (instrument, visit, detector)
images and tables, a dimensionless model package, dimensionless training products.
These functions build those connections from a dataset type name, a storage class and
a doc string, so each connection class states only what differs.
"""

__all__ = [
    "VISIT_DIMENSIONS",
    "ModelInputCheck",
    "global_output",
    "model_input",
    "visit_input",
    "visit_output",
]

from lsst.pipe.base import connectionTypes as cT

from .errors import NoModelError, NoSequenceModelError, no_model_message

#: Dimensions of the per-detector AP datasets (images, source tables, cutouts).
VISIT_DIMENSIONS = ("instrument", "visit", "detector")


def visit_input(name: str, storageClass: str, doc: str, **kwargs) -> cT.Input:
    """An input with the dimensions (instrument, visit, detector); ``kwargs`` as `cT.Input`'s."""
    return cT.Input(doc=doc, name=name, storageClass=storageClass, dimensions=VISIT_DIMENSIONS, **kwargs)


def visit_output(name: str, storageClass: str, doc: str) -> cT.Output:
    """An output with the dimensions (instrument, visit, detector)."""
    return cT.Output(doc=doc, name=name, storageClass=storageClass, dimensions=VISIT_DIMENSIONS)


def model_input(name: str, doc: str) -> cT.PrerequisiteInput:
    """A model package found by collection (dimensionless prerequisite input)."""
    return cT.PrerequisiteInput(doc=doc, name=name, storageClass="RBNetModelPackage", dimensions=())


class ModelInputCheck:
    """Connections mixin (before `~lsst.pipe.base.PipelineTaskConnections` in the bases): a
    quantum without its model package fails in ``adjustQuantum`` saying how to get one, not
    only that it is missing.

    A class sets ``modelConnection`` (the model connection's attribute name) and ``modelKind``
    (``"triplet"`` or ``"sequence"``, see `~lsst.meas.rbnet.tasks.errors.no_model_message`); the
    error is `~lsst.meas.rbnet.tasks.errors.NoModelError` (`NoSequenceModelError` for a
    sequence model).
    """

    modelConnection = "pretrainedModel"
    modelKind = "triplet"

    def adjustQuantum(self, inputs, outputs, label, data_id):
        if self.modelConnection in inputs:
            connection, refs = inputs[self.modelConnection]
            if len(refs) == 0:
                error = NoSequenceModelError if self.modelKind == "sequence" else NoModelError
                raise error(f"{label} ({data_id}): " + no_model_message(connection.name, self.modelKind))
        return super().adjustQuantum(inputs, outputs, label, data_id)


def global_output(name: str, storageClass: str, doc: str) -> cT.Output:
    """A dimensionless output (one per pipeline run, e.g. a trained model and its metrics)."""
    return cT.Output(doc=doc, name=name, storageClass=storageClass, dimensions=())
