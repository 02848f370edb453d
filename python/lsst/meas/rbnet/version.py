# This file is part of meas_rbnet.
"""The package version, from the git history.

``_version.py`` next to this module is written from git by the build: by
setuptools-scm when pip installs the package, by ``scons`` (sconsUtils) inside the
Rubin stack. Without it (a source tree that was never built) the installed
distribution's metadata is used, and ``0.0.0`` when there is none.
"""

__all__ = ["__version__"]

try:
    from ._version import __version__
except ImportError:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _distribution_version

    try:
        __version__ = _distribution_version("lsst-meas-rbnet")
    except PackageNotFoundError:
        __version__ = "0.0.0"
