# This file is part of meas_rbnet.
"""Config fields and checks that several task configs share (checks raise pex_config errors)."""

__all__ = ["TorchRuntimeConfig", "check_channels", "check_field", "check_version"]

import lsst.pex.config as pexConfig

from ..constants import CHANNEL_ORDER, VERSION_MAX_LENGTH


class TorchRuntimeConfig(pexConfig.Config):
    """Fields of the tasks that run a network: the torch device and CPU threads (a config mixin)."""

    device = pexConfig.Field[str](
        doc="Torch device: 'auto' (GPU if there is one, else CPU), 'cpu', 'cuda' or 'cuda:N'.",
        default="auto",
    )
    # A RangeField: a negative value is refused when it is set.
    numThreads = pexConfig.RangeField[int](
        doc="CPU threads torch may use in this process (0 leaves torch's default). Set it when running "
        "several quanta in parallel (pipetask -j).",
        default=0,
        min=0,
    )


def check_field(config: pexConfig.Config, field: str, ok: bool, message: str) -> None:
    """Raise the pex_config error of ``config.<field>`` with ``message`` unless ``ok``.

    Raises
    ------
    lsst.pex.config.FieldValidationError
        Naming the field and saying ``message``.
    """
    if not ok:
        raise pexConfig.FieldValidationError(getattr(type(config), field), config, message)


def check_channels(config: pexConfig.Config, field: str = "channels") -> tuple[str, ...]:
    """Check that ``config.<field>`` names distinct channels of `CHANNEL_ORDER`, at least one.

    Returns
    -------
    channels : `tuple` [`str`, ...]
        The channels.

    Raises
    ------
    lsst.pex.config.FieldValidationError
        Naming the field, the allowed names and the value.
    """
    channels = tuple(getattr(config, field))
    ok = channels and all(c in CHANNEL_ORDER for c in channels) and len(set(channels)) == len(channels)
    check_field(config, field, ok, f"must be distinct names from {CHANNEL_ORDER}, got {channels}")
    return channels


def check_version(config: pexConfig.Config, field: str = "version") -> None:
    """Check that ``config.<field>`` is a model version of 1 to `VERSION_MAX_LENGTH` characters.

    Raises
    ------
    lsst.pex.config.FieldValidationError
        Naming the field and the allowed length.
    """
    ok = 1 <= len(getattr(config, field)) <= VERSION_MAX_LENGTH
    check_field(config, field, ok, f"must have 1 to {VERSION_MAX_LENGTH} characters")
