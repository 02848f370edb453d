"""Tests of lsst.meas.rbnet.butler.postgres (Butler repositories with a PostgreSQL registry).

The configuration and validation tests need no server. The ones marked ``postgres`` talk to
the throw-away server that .ci/services.sh starts (``./dev test`` does it) and skip, with the
reason, when there is none.
"""

import os
import socket

import pytest

from lsst.daf.butler import Butler, DatasetType
from lsst.meas.rbnet.butler.postgres import (
    POSTGRES_URL_ENV,
    check_postgres,
    create_postgres_repo,
    drop_namespace,
    postgres_seed_config,
    postgres_url_from_env,
    unique_namespace,
)


def _driver_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("psycopg2", "psycopg"))


@pytest.fixture
def pg_url():
    url = postgres_url_from_env()
    if url is None:
        reason = os.environ.get("RBNET_TEST_POSTGRES_SKIP") or (
            f"no PostgreSQL server: {POSTGRES_URL_ENV} is unset "
            "(run './dev test', or 'source .ci/services.sh; start_services' first)"
        )
        pytest.skip(reason)
    if not _driver_available():
        pytest.skip("no PostgreSQL driver installed (pip install 'lsst-meas-rbnet[postgres]')")
    return url


def test_seed_config_sets_registry_and_names_a_driver():
    config = postgres_seed_config("postgresql://me@db.example.org:5432/butler", "repo_a")
    db = config["registry", "db"]
    # The driver is named so that SQLAlchemy does not fall back to one that is not installed.
    assert db.startswith("postgresql+psycopg")
    assert db.endswith("://me@db.example.org:5432/butler")
    assert config["registry", "namespace"] == "repo_a"
    # The legacy scheme is accepted and a URL that already names a driver is kept as it is.
    assert postgres_seed_config("postgres://me@h/db")["registry", "db"].endswith("://me@h/db")
    assert (
        postgres_seed_config("postgresql+psycopg2://h/db")["registry", "db"] == "postgresql+psycopg2://h/db"
    )
    # Without a namespace the connection's default schema is used.
    assert ("registry", "namespace") not in postgres_seed_config("postgresql://h/db")


def test_seed_config_merges_extra_sections():
    extra = {"storageClasses": {"Thing": {"pytype": "dict"}}, "registry": {"db": "sqlite:///x"}}
    config = postgres_seed_config("postgresql://h/db", extra=extra)
    assert config["storageClasses", "Thing", "pytype"] == "dict"
    # The URL given wins over a registry.db in the extra sections.
    assert config["registry", "db"].endswith("://h/db")


@pytest.mark.parametrize("url", ["sqlite:///repo/gen3.sqlite3", "mysql://h/db", "", None])
def test_bad_url_is_refused_by_name(url):
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        postgres_seed_config(url)


@pytest.mark.parametrize("namespace", ["Repo", "1repo", "_repo", "repo-a", "a;drop table x", "x" * 64])
def test_bad_namespace_is_refused(namespace):
    with pytest.raises(ValueError, match="not a plain PostgreSQL schema name"):
        postgres_seed_config("postgresql://h/db", namespace)
    with pytest.raises(ValueError, match="not a plain PostgreSQL schema name"):
        drop_namespace("postgresql://h/db", namespace)


def test_unique_namespace():
    names = {unique_namespace("t") for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith("t_") and len(n) == 14 for n in names)
    with pytest.raises(ValueError):
        unique_namespace("Bad-Prefix")


def test_unreachable_server_gives_a_clear_error():
    if not _driver_available():
        pytest.skip("no PostgreSQL driver installed")
    # A port that was free a moment ago: nothing listens there.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match=f"cannot connect to the PostgreSQL registry at .*:{port}/"):
        check_postgres(f"postgresql://nobody@127.0.0.1:{port}/nothing")


@pytest.mark.postgres
def test_check_postgres_reports_server_version(pg_url):
    major, minor = check_postgres(pg_url)
    # daf_butler needs a server new enough for its range types; any supported release is >= 13.
    assert major >= 13 and minor >= 0


@pytest.mark.postgres
def test_repo_roundtrip_in_its_own_namespace(pg_url, tmp_path):
    namespace = unique_namespace("test_pg")
    try:
        config = create_postgres_repo(tmp_path / "repo", pg_url, namespace)
        assert config["registry", "namespace"] == namespace
        butler = Butler.from_config(str(tmp_path / "repo"), writeable=True, run="test/run")
        butler.registry.insertDimensionData("instrument", {"name": "Cam", "detector_max": 4})
        butler.registry.registerDatasetType(
            DatasetType("numbers", ("instrument",), "StructuredDataDict", universe=butler.dimensions)
        )
        butler.put({"a": 1}, "numbers", instrument="Cam")

        # A second client sees the same registry (a second worker would).
        other = Butler.from_config(str(tmp_path / "repo"), collections="test/run")
        assert other.get("numbers", instrument="Cam") == {"a": 1}

        # The tables live in the namespace, not in the default schema.
        import sqlalchemy

        engine = sqlalchemy.create_engine(config["registry", "db"], poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            tables = conn.execute(
                sqlalchemy.text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
                {"s": namespace},
            ).scalar()
        engine.dispose()
        assert tables > 10
    finally:
        drop_namespace(pg_url, namespace)
    # Dropped: the repository's registry tables are gone from the server.
    import sqlalchemy

    with pytest.raises(sqlalchemy.exc.ProgrammingError, match=rf'"{namespace}\.\w+" does not exist'):
        Butler.from_config(str(tmp_path / "repo")).registry.queryCollections()


@pytest.mark.postgres
def test_missing_btree_gist_is_named_and_can_be_enabled(pg_url):
    import sqlalchemy

    from lsst.meas.rbnet.butler.postgres import driver_url, ensure_btree_gist

    # A fresh database from template0 has no extensions at all.
    name = unique_namespace("test_db")
    admin = sqlalchemy.create_engine(
        driver_url(pg_url), poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {name} TEMPLATE template0"))
    except sqlalchemy.exc.SQLAlchemyError as err:
        admin.dispose()
        pytest.skip(f"cannot create a database on this server: {err}")
    url = pg_url.rsplit("/", 1)[0] + "/" + name
    try:
        with pytest.raises(RuntimeError, match="lacks the btree_gist extension"):
            check_postgres(url)
        ensure_btree_gist(url)
        ensure_btree_gist(url)  # idempotent
        assert check_postgres(url)[0] >= 13
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
