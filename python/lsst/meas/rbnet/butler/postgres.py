# This file is part of meas_rbnet.
"""Butler repositories whose registry lives in PostgreSQL.

A repository shared by many workers (a batch farm, several ``pipetask`` processes, BPS
jobs) needs a registry database that takes concurrent writers: PostgreSQL. The datastore
stays a directory (or object store) every worker can reach; only the registry moves.

daf_butler needs, on the server side, a database with the ``btree_gist`` extension
enabled (``CREATE EXTENSION btree_gist;`` once, as a user allowed to create extensions),
and on the client side the ``psycopg2`` driver (``pip install "lsst-meas-rbnet[postgres]"``).
Each repository can live in its own schema (``registry.namespace``), so one database holds
many repositories side by side; this is how the tests keep their repositories apart.

This module has no dependency on the rest of the package: it only writes Butler
configuration and talks to the server through SQLAlchemy.
"""

from __future__ import annotations

__all__ = [
    "POSTGRES_URL_ENV",
    "check_postgres",
    "create_postgres_repo",
    "driver_url",
    "drop_namespace",
    "ensure_btree_gist",
    "postgres_seed_config",
    "postgres_url_from_env",
    "unique_namespace",
]

import os
import re
import uuid
from collections.abc import Mapping
from typing import Any

from lsst.daf.butler import Butler, Config
from lsst.resources import ResourcePathExpression

#: Environment variable holding the URL of the throw-away test server (set by .ci/services.sh).
POSTGRES_URL_ENV = "RBNET_TEST_POSTGRES_URL"

# PostgreSQL identifiers are at most 63 bytes; lower case letters, digits and underscores need
# no quoting and survive every client unchanged.
_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_URL_SCHEMES = ("postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://", "postgres://")


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(_URL_SCHEMES):
        raise ValueError(
            f"registry URL {url!r} is not a PostgreSQL URL; expected postgresql://USER@HOST:PORT/DATABASE"
        )
    # SQLAlchemy 2 dropped the "postgres://" alias; accept it and hand on the canonical form.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    return url


def driver_url(url: str) -> str:
    """Return a PostgreSQL URL that names an installed driver.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, while the project's
    ``postgres`` extra installs psycopg2; naming the driver makes the URL work with either.

    Parameters
    ----------
    url : `str`
        ``postgresql://...`` (or ``postgres://...``, or one that already names a driver).

    Returns
    -------
    url : `str`
        ``postgresql+psycopg2://...`` (or ``+psycopg`` when only psycopg 3 is installed);
        a URL that names a driver is returned unchanged.

    Raises
    ------
    ValueError
        Raised if ``url`` is not a PostgreSQL URL.
    RuntimeError
        Raised if neither driver is installed.
    """
    url = _check_url(url)
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, dialect in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{dialect}://" + url[len("postgresql://") :]
    raise RuntimeError(
        "no PostgreSQL driver is installed (psycopg2 or psycopg); install one with "
        "'pip install \"lsst-meas-rbnet[postgres]\"' (psycopg2-binary)"
    )


def _check_namespace(namespace: str) -> str:
    if not _NAMESPACE_RE.match(namespace):
        raise ValueError(
            f"namespace {namespace!r} is not a plain PostgreSQL schema name "
            "(lower-case letters, digits and underscores, starting with a letter, at most 63 characters)"
        )
    return namespace


def _engine(url: str):
    import sqlalchemy

    return sqlalchemy.create_engine(driver_url(url), poolclass=sqlalchemy.pool.NullPool)


def unique_namespace(prefix: str = "rbnet") -> str:
    """Return a fresh schema name for one repository.

    Parameters
    ----------
    prefix : `str`, optional
        Start of the name: lower-case letters, digits and underscores.

    Returns
    -------
    namespace : `str`
        ``<prefix>_<12 hex digits>``, a valid unquoted PostgreSQL identifier.
    """
    return _check_namespace(f"{prefix}_{uuid.uuid4().hex[:12]}")


def check_postgres(url: str) -> tuple[int, int]:
    """Check that a server can hold a Butler registry.

    Parameters
    ----------
    url : `str`
        SQLAlchemy URL of the database, ``postgresql://USER@HOST:PORT/DATABASE``.

    Returns
    -------
    version : `tuple` [`int`, `int`]
        Server major and minor version.

    Raises
    ------
    ValueError
        Raised if ``url`` is not a PostgreSQL URL.
    RuntimeError
        Raised, with the reason, if the driver is missing, the server cannot be reached, or the
        database lacks the ``btree_gist`` extension daf_butler requires.
    """
    import sqlalchemy

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            raw = conn.execute(sqlalchemy.text("SHOW server_version_num")).scalar()
            has_gist = conn.execute(
                sqlalchemy.text("SELECT COUNT(*) FROM pg_extension WHERE extname = 'btree_gist'")
            ).scalar()
    except sqlalchemy.exc.OperationalError as err:
        raise RuntimeError(f"cannot connect to the PostgreSQL registry at {url}: {err.orig}") from err
    finally:
        engine.dispose()
    if not has_gist:
        raise RuntimeError(
            f"the database at {url} lacks the btree_gist extension daf_butler needs; "
            "run 'CREATE EXTENSION btree_gist;' in it once as a user allowed to create extensions "
            "(or call ensure_btree_gist)"
        )
    number = int(raw)
    return number // 10000, number % 10000


def ensure_btree_gist(url: str) -> None:
    """Enable the ``btree_gist`` extension in a database (needs the privilege to do so).

    Parameters
    ----------
    url : `str`
        SQLAlchemy URL of the database.

    Raises
    ------
    RuntimeError
        Raised if the extension cannot be created (e.g. the user lacks the privilege).
    """
    import sqlalchemy

    engine = _engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE EXTENSION IF NOT EXISTS btree_gist"))
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise RuntimeError(
            f"cannot enable btree_gist in {url}: {getattr(err, 'orig', err)}; "
            "ask the database administrator to run 'CREATE EXTENSION btree_gist;' in it"
        ) from err
    finally:
        engine.dispose()


def postgres_seed_config(
    url: str, namespace: str | None = None, extra: Mapping[str, Any] | Config | None = None
) -> Config:
    """Return a Butler seed configuration whose registry is in PostgreSQL.

    The result is what ``butler create --seed-config`` takes (write it with
    ``config.dumpToUri("seed.yaml")``) or what `create_postgres_repo` passes to
    `lsst.daf.butler.Butler.makeRepo`.

    Parameters
    ----------
    url : `str`
        SQLAlchemy URL of the database, ``postgresql://USER@HOST:PORT/DATABASE``; when it names
        no driver, the installed one (psycopg2, else psycopg 3) is written in. Leave the
        password out: libpq reads it from ``~/.pgpass`` or ``PGPASSWORD``, and the URL is
        written into the repository's ``butler.yaml``.
    namespace : `str`, optional
        Schema holding this repository's tables; `None` uses the connection's default schema
        (usually ``public``). One database can hold several repositories in separate schemas.
    extra : `~collections.abc.Mapping` or `lsst.daf.butler.Config`, optional
        Further seed configuration merged on top (e.g. a ``storageClasses`` section or a
        ``datastore`` section).

    Returns
    -------
    config : `lsst.daf.butler.Config`
        Seed configuration with ``registry.db`` (and ``registry.namespace``) set.
    """
    config = Config()
    if extra is not None:
        config.update(Config(extra) if not isinstance(extra, Config) else extra)
    config["registry", "db"] = driver_url(url)
    if namespace is not None:
        config["registry", "namespace"] = _check_namespace(namespace)
    return config


def create_postgres_repo(
    root: ResourcePathExpression,
    url: str,
    namespace: str | None = None,
    *,
    seed: Mapping[str, Any] | Config | None = None,
    dimension_config: Config | str | None = None,
    overwrite: bool = False,
) -> Config:
    """Create an empty Butler repository with its registry in PostgreSQL.

    The datastore (file artifacts) and ``butler.yaml`` go to ``root``, which every worker must
    be able to reach; the registry tables go to ``namespace`` in the database at ``url``.

    Parameters
    ----------
    root : `lsst.resources.ResourcePathExpression`
        Repository root (directory or URI); created if it does not exist.
    url : `str`
        SQLAlchemy URL of the database, ``postgresql://USER@HOST:PORT/DATABASE``.
    namespace : `str`, optional
        Schema for this repository's tables; created if it does not exist. `None` uses the
        connection's default schema.
    seed : `~collections.abc.Mapping` or `lsst.daf.butler.Config`, optional
        Further seed configuration (see `postgres_seed_config`).
    dimension_config : `lsst.daf.butler.Config` or `str`, optional
        Dimension universe configuration; `None` uses daf_butler's default.
    overwrite : `bool`, optional
        Overwrite an existing ``butler.yaml`` at ``root``.

    Returns
    -------
    config : `lsst.daf.butler.Config`
        The configuration written to ``root``; ``Butler.from_config(root)`` opens the repository.

    Raises
    ------
    RuntimeError
        Raised, with the reason, if the server cannot hold a registry (see `check_postgres`).
    """
    check_postgres(url)
    config = postgres_seed_config(url, namespace, seed)
    return Butler.makeRepo(root, config=config, dimensionConfig=dimension_config, overwrite=overwrite)


def drop_namespace(url: str, namespace: str) -> None:
    """Drop a repository's schema and every table in it.

    Parameters
    ----------
    url : `str`
        SQLAlchemy URL of the database.
    namespace : `str`
        Schema to drop (as given to `create_postgres_repo`). A missing schema is not an error.
    """
    import sqlalchemy

    _check_namespace(namespace)
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            # The name was validated as a plain identifier above, so it is safe to interpolate.
            conn.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {namespace} CASCADE"))
    finally:
        engine.dispose()


def postgres_url_from_env() -> str | None:
    """Return the test server's URL from the environment, or `None` when there is none."""
    return os.environ.get(POSTGRES_URL_ENV) or None
