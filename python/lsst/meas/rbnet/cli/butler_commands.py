# This file is part of meas_rbnet.
"""``rbnet register-model``, ``rbnet ingest-labels`` and ``rbnet configure-repo``.

The same commands are ``butler`` subcommands through daf_butler's command-line plugins:
``DAF_BUTLER_PLUGINS`` lists `plugin_resources_path` (the EUPS table sets it).
"""

__all__ = ["register_model", "ingest_labels", "configure_repo", "plugin_resources_path"]

import os

import click


def plugin_resources_path() -> str:
    """The YAML file that lists these commands for ``DAF_BUTLER_PLUGINS``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources.yaml")


@click.command("register-model")
@click.argument("repo")
@click.argument("package", required=False)
@click.option(
    "--name",
    default="default",
    show_default=True,
    help="Model name: the run is pretrained_models/NAME. Letters, digits and _ . + - only.",
)
@click.option(
    "--dataset-type",
    default=None,
    help="Dataset type name [default: pretrainedModelPackage for a triplet package (the reliability "
    "task's connections.pretrainedModel), pretrainedSequenceModelPackage for a sequence package].",
)
def register_model(repo, package, name, dataset_type):
    """Put model PACKAGE (the shipped default model if omitted) into REPO.

    The package goes into the RUN collection pretrained_models/NAME, which is put first
    in the CHAINED collection pretrained_models; pipelines then find it with
    '-i pretrained_models' (the newest model) or '-i pretrained_models/NAME'. A package
    of the wrong kind for the dataset type is refused; a failure leaves the repository
    as it was.
    """
    # Here and below: the Butler layer imports daf_butler and package imports torch, which
    # `rbnet --help` and the commands' --help do not need.
    from ..butler.repo import register_model as _register
    from ..package import ModelPackageError

    try:
        ref = _register(repo, package, name=name, dataset_type=dataset_type)
    except (ModelPackageError, RuntimeError, FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Registered {ref.datasetType.name} in run {ref.run} (chained in 'pretrained_models').")


@click.command("ingest-labels")
@click.argument("repo")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--run",
    required=True,
    help="New RUN collection for the labels, e.g. labels/2024-06 (parts of letters, digits, _ . + -).",
)
@click.option("--instrument", default=None, help="Instrument of the labels (default: the repo's only one).")
@click.option("--dataset-type", default="rbnet_labels", show_default=True, help="Dataset type name.")
def ingest_labels(repo, file, run, instrument, dataset_type):
    """Register the labels in FILE (.csv or .parquet) in REPO.

    Columns: label (0/1 or bogus/real) and either id (source id) or ra, dec (deg) and mjd;
    optional source_class (e.g. cosmic_ray, dipole, real_new).
    """
    from ..butler.repo import ingest_labels as _ingest

    try:
        ref = _ingest(repo, file, run=run, instrument=instrument, dataset_type=dataset_type)
    except (ValueError, OSError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Ingested {file} as {ref.datasetType.name} {ref.dataId.required} in run {ref.run}.")


@click.command("configure-repo")
@click.argument("repo", required=False)
@click.option(
    "--print-config-path",
    is_flag=True,
    help="Only print the directory to put on DAF_BUTLER_CONFIG_PATH (for repos you cannot write to).",
)
@click.option(
    "--print-plugins-path",
    is_flag=True,
    help="Only print the file to put on DAF_BUTLER_PLUGINS, which makes these commands 'butler' "
    "subcommands too (butler register-model, ...).",
)
def configure_repo(repo, print_config_path, print_plugins_path):
    """Add this package's storage classes and formatters to REPO's butler.yaml (once).

    Repositories made by 'rbnet demo' need nothing. For others, either run this once, or
    export DAF_BUTLER_CONFIG_PATH=$(rbnet configure-repo --print-config-path) in every
    process that opens the repository.
    """
    from ..butler.config import config_search_path
    from ..butler.config import configure_repo as _configure

    if print_config_path:
        click.echo(config_search_path())
        return
    if print_plugins_path:
        click.echo(plugin_resources_path())
        return
    if repo is None:
        raise click.UsageError("Give REPO (or --print-config-path).")
    try:
        changed = _configure(repo)
    except (FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{'Configured' if changed else 'Already configured:'} {repo}")
