# This file is part of meas_rbnet.
"""Butler configuration for the package's storage classes.

daf_butler must know the ``RBNetModelPackage`` and ``RBNetMaskedImage`` storage
classes (and the model package's formatter) before a repository can hold a model
package or a pipeline can read one. Three ways, all reading the two YAML files in
``configs/`` next to this module:

- repositories made by `lsst.meas.rbnet.butler.create_repo` (and so by ``rbnet demo``)
  get the configuration written into their ``butler.yaml`` at creation
  (`butler_seed_config`);
- an existing repository is configured once with ``rbnet configure-repo REPO``
  (`configure_repo`), which merges the same sections into its ``butler.yaml``;
- or, without touching the repository (e.g. one you cannot write to), every process
  that opens it puts `config_search_path` on ``DAF_BUTLER_CONFIG_PATH``.
"""

from __future__ import annotations

__all__ = [
    "MODEL_STORAGE_CLASS",
    "MASKED_IMAGE_STORAGE_CLASS",
    "config_search_path",
    "butler_seed_config",
    "configure_repo",
    "repo_is_configured",
    "register_storage_classes",
]

import os

from lsst.daf.butler import Config
from lsst.resources import ResourcePath, ResourcePathExpression

# The names and the in-process registration live below both the tasks and this layer
# (the tasks must not import the Butler layer); re-exported here.
from ..storage_classes import (
    BUTLER_CONFIG_DIR,
    MASKED_IMAGE_STORAGE_CLASS,
    MODEL_STORAGE_CLASS,
    register_storage_classes,
)

_CONFIG_DIR = BUTLER_CONFIG_DIR


def config_search_path() -> str:
    """Directory to put on ``DAF_BUTLER_CONFIG_PATH`` so that any repository knows our storage classes.

    Returns
    -------
    path : `str`
        Absolute path of the directory holding ``storageClasses.yaml`` and
        ``datastores/fileDatastore.yaml``.
    """
    return _CONFIG_DIR


def butler_seed_config() -> Config:
    """The ``storageClasses`` and ``datastore.formatters`` sections for a repository's config.

    Returns
    -------
    config : `lsst.daf.butler.Config`
        A seed configuration for `lsst.daf.butler.Butler.makeRepo` (merge it into any other
        seed, e.g. a PostgreSQL registry's).
    """
    config = Config(os.path.join(_CONFIG_DIR, "storageClasses.yaml"))
    config.update(Config(os.path.join(_CONFIG_DIR, "datastores", "fileDatastore.yaml")))
    return config


def _butler_yaml(repo: ResourcePathExpression) -> ResourcePath:
    path = ResourcePath(repo, forceDirectory=True)
    if path.getExtension() in (".yaml", ".json"):
        return ResourcePath(repo)
    return path.join("butler.yaml")


def repo_is_configured(repo: ResourcePathExpression) -> bool:
    """Whether a repository's own ``butler.yaml`` defines our storage classes and formatter.

    Parameters
    ----------
    repo : `lsst.resources.ResourcePathExpression`
        Repository root or its ``butler.yaml``.
    """
    config = Config(_butler_yaml(repo))
    seed = butler_seed_config()
    for name in seed["storageClasses"]:
        if ("storageClasses", name) not in config:
            return False
    for name in seed["datastore", "formatters"]:
        if ("datastore", "formatters", name) not in config:
            return False
    return True


def configure_repo(repo: ResourcePathExpression, *, backup: bool = True) -> bool:
    """Add the package's storage classes and formatters to an existing repository's ``butler.yaml``.

    Safe to run more than once. The registry is not touched: storage classes and
    formatters are client-side configuration, and the repository keeps working for
    clients without this package (they just cannot read our datasets).

    Parameters
    ----------
    repo : `lsst.resources.ResourcePathExpression`
        Repository root (or its ``butler.yaml``); must be writeable.
    backup : `bool`, optional
        Keep the previous file as ``butler.yaml.bak`` before the first change.

    Returns
    -------
    changed : `bool`
        `False` if the repository was already configured.

    Raises
    ------
    FileNotFoundError
        If there is no ``butler.yaml`` at ``repo``.
    """
    uri = _butler_yaml(repo)
    if not uri.exists():
        raise FileNotFoundError(f"No Butler repository config at {uri}; is {repo} a Butler repository?")
    if repo_is_configured(uri):
        return False
    # Only this file's own content is rewritten (not the merged defaults), so the
    # repository keeps following daf_butler's defaults for everything else.
    config = Config(uri)
    if backup:
        bak = ResourcePath(str(uri) + ".bak")
        if not bak.exists():
            bak.write(uri.read())
    config.update(butler_seed_config())
    config.dumpToUri(uri, overwrite=True)
    return True
