# This file is part of meas_rbnet.
"""The ``rbnet`` command line tool.

Each sub-command lives in its own module of this package and is listed in
`_COMMANDS`; modules are imported only when their command runs, so
``rbnet --help`` stays fast (no torch import).
"""

__all__ = ["main", "configure_logging", "LOG_LEVELS"]

import importlib

import click

#: Sub-command name -> (module in this package, click command attribute, one-line help).
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": ("simulate", "simulate", "Write simulated triplets or images with truth."),
    "gallery": ("simulate", "gallery", "Plot a gallery of simulated examples of each class."),
    "train": ("train", "train", "Train a triplet model package from arrays."),
    "demo": ("demo", "demo", "Simulate, score with a real pipetask run in a new Butler repo, and report."),
    "register-model": ("butler_commands", "register_model", "Put a model package into a repo's pretrained_models."),
    "ingest-labels": ("butler_commands", "ingest_labels", "Register a real/bogus labels table (CSV/Parquet) in a repo."),
    "sequence-cv": ("sequence", "sequence_cv", "k-fold evaluation of multi-visit sequence models on saved latents."),
    "train-sequence": ("sequence", "train_sequence", "Train the VAE + sequence model from frame sequences into one package."),
    "configure-repo": ("butler_commands", "configure_repo", "Teach an existing Butler repo this package's storage classes."),
    "score-alerts": ("alerts", "score_alerts", "Score ZTF/Rubin alert packets and broker Parquet exports; one row per alert."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(_COMMANDS)

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


#: Log levels accepted by ``--log-level`` (as ``butler`` and ``pipetask`` take them).
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "VERBOSE", "DEBUG", "TRACE")


def _parse_log_level(ctx, param, values):
    """``[COMPONENT=]LEVEL`` entries of ``--log-level`` as (logger name, level) pairs."""
    out = []
    for value in values:
        component, _, level = value.rpartition("=")
        level = level.upper()
        if level not in LOG_LEVELS:
            raise click.BadParameter(
                f"{value!r}: expected [COMPONENT=]LEVEL with LEVEL one of {', '.join(LOG_LEVELS)}."
            )
        out.append((component or None, level))
    return out


def configure_logging(levels) -> None:
    """Log to stderr as the LSST command-line tools do: WARNING overall, INFO for ``lsst``.

    ``levels`` holds (logger name or None for the default, level name) pairs; a bare
    level applies to ``lsst`` (our loggers and the stack's), as ``butler --log-level``.
    """
    import logging

    numeric = {"VERBOSE": 15, "TRACE": 5}
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
    logging.getLogger("lsst").setLevel(logging.INFO)
    for component, level in levels:
        value = numeric.get(level, getattr(logging, level, None))
        logging.getLogger(component or "lsst").setLevel(value)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    multiple=True,
    callback=_parse_log_level,
    metavar="[COMPONENT=]LEVEL",
    help=f"Log level ({', '.join(LOG_LEVELS)}) of the lsst loggers, or of one COMPONENT "
    "(e.g. lsst.meas.rbnet.scoring=DEBUG); repeatable. Default: INFO for lsst, WARNING otherwise.",
)
def main(log_level):
    """Real/bogus reliability for difference-image sources (lsst.meas.rbnet)."""
    configure_logging(log_level)
