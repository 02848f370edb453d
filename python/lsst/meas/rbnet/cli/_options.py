# This file is part of meas_rbnet.
"""Option types shared by the ``rbnet`` commands."""

__all__ = ["FINITE_FLOAT", "FiniteFloat", "NAME", "check_name"]

import math
import re

import click


class FiniteFloat(click.ParamType):
    """A float option that refuses NaN and infinities (``float("nan")`` parses, but trains nothing)."""

    name = "float"

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(f):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return f


#: The shared instance.
FINITE_FLOAT = FiniteFloat()

#: Characters allowed in a RUN collection or model name (one path component of the repository's
#: datastore: no "/", "..", "," or spaces).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid collection or model name, else a `click.BadParameter` naming ``what``."""
    if not isinstance(value, str) or not NAME.fullmatch(value) or ".." in value:
        raise click.BadParameter(
            f"{value!r} is not a valid name: use 1 to 100 letters, digits and the characters _ . + - "
            "(not starting with . + or -, no '..', no '/', ',' or spaces).",
            param_hint=what,
        )
    return value
