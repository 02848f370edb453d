# This file is part of meas_rbnet.
"""Option types shared by the ``rbnet`` commands."""

__all__ = [
    "FINITE_FLOAT",
    "FiniteFloat",
    "FiniteFloatRange",
    "choice_option",
    "input_file_option",
    "output_file_option",
]

import math

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


class FiniteFloatRange(click.FloatRange):
    """`click.FloatRange` that also refuses NaN (which passes every range comparison) and infinities."""

    def convert(self, value, param, ctx):
        f = super().convert(value, param, ctx)
        if not math.isfinite(f):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return f


def choice_option(*param_decls: str, choices, default: str, help: str | None = None):
    """An option taking one of ``choices``, ``default`` when not given (shown in ``--help``)."""
    return click.option(
        *param_decls, type=click.Choice(list(choices)), default=default, show_default=True, help=help
    )


def input_file_option(*param_decls: str, help: str, required: bool = False):
    """An option naming an existing file (`None` when not given and not required)."""
    kwargs = {"required": True} if required else {"default": None}
    return click.option(*param_decls, type=click.Path(exists=True, dir_okay=False), help=help, **kwargs)


def output_file_option(*param_decls: str, help: str):
    """A required option naming a file to write."""
    return click.option(*param_decls, required=True, type=click.Path(dir_okay=False), help=help)
