"""The PL/pgSQL functions' current text lives in jobs/sql/; migrations install frozen
copies. A change to a file without a migration that installs it fails here."""

from __future__ import annotations

import importlib
import pkgutil

import jobs.migrations
from jobs import postgres


def latest_migration_copies() -> dict[str, tuple[str, str]]:
    """Function name -> (migration, SQL) of the latest migration with a `FUNCTIONS` copy."""
    latest: dict[str, tuple[str, str]] = {}
    names = sorted(module.name for module in pkgutil.iter_modules(jobs.migrations.__path__))
    for name in names:
        module = importlib.import_module(f"jobs.migrations.{name}")
        for function, sql in getattr(module, "FUNCTIONS", {}).items():
            latest[function] = (name, sql)
    return latest


def test_every_function_file_is_installed_by_a_migration() -> None:
    assert set(latest_migration_copies()) == set(postgres.FUNCTION_NAMES)


def test_the_latest_migration_copies_equal_the_sql_files() -> None:
    for function, (migration, sql) in latest_migration_copies().items():
        assert sql == postgres.function_sql(function), (
            f"jobs/sql for {function} differs from its copy in migration {migration}: "
            "add a migration that installs the new text"
        )
