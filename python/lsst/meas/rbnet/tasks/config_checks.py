# This file is part of meas_rbnet.
"""Checks of config fields that several task configs share (raised as pex_config errors)."""

__all__ = ["check_channels", "check_version"]

import lsst.pex.config as pexConfig

from ..constants import CHANNEL_ORDER, VERSION_MAX_LENGTH


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
    if not channels or any(c not in CHANNEL_ORDER for c in channels) or len(set(channels)) != len(channels):
        raise pexConfig.FieldValidationError(
            getattr(type(config), field),
            config,
            f"must be distinct names from {CHANNEL_ORDER}, got {channels}",
        )
    return channels


def check_version(config: pexConfig.Config, field: str = "version") -> None:
    """Check that ``config.<field>`` is a model version of 1 to `VERSION_MAX_LENGTH` characters.

    Raises
    ------
    lsst.pex.config.FieldValidationError
        Naming the field and the allowed length.
    """
    if not 1 <= len(getattr(config, field)) <= VERSION_MAX_LENGTH:
        raise pexConfig.FieldValidationError(
            getattr(type(config), field), config, f"must have 1 to {VERSION_MAX_LENGTH} characters"
        )
