"""The PostgreSQL hot path: the zypher_* PL/pgSQL functions and how they are called.

The current text of each function is a file in `jobs/sql/`; migrations install frozen
copies (their module constant `FUNCTIONS`), and `tests/queue/test_sql_files.py` fails
when the latest migration and the files disagree, so a change to a file needs a new
migration. Calls name every parameter (`p_job_id => …`), so adding one cannot shift the
others. SQLite runs the ORM translation of the same steps in `jobs.queue`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from django.db import connection

SQL_DIR = Path(__file__).resolve().parent / "sql"
FUNCTION_NAMES = ("zypher_submit", "zypher_claim", "zypher_finish", "zypher_finish_and_claim")


@cache
def function_sql(name: str) -> str:
    """The current `CREATE OR REPLACE FUNCTION` text of `name` (`jobs/sql/<name>.sql`)."""
    return (SQL_DIR / f"{name.removeprefix('zypher_')}.sql").read_text()


@cache
def _call_sql(
    function: str, names: tuple[str, ...], casts: tuple[tuple[str, str], ...], one: bool
) -> str:
    cast = dict(casts)

    def argument(name: str) -> str:
        if name not in cast:
            return f"p_{name} => %({name})s"
        if one and cast[name].endswith("[]"):
            return f"p_{name} => ARRAY[%({name})s::{cast[name][:-2]}]"
        return f"p_{name} => %({name})s::{cast[name]}"

    return f"SELECT * FROM {function}({', '.join(argument(name) for name in names)})"


def statement(
    function: str,
    params: Mapping[str, Any],
    casts: Mapping[str, str] | None = None,
    one: bool = False,
) -> str:
    """The `SELECT * FROM function(p_x => %(x)s, …)` text that `call` runs.

    `one`: each array parameter (a cast ending in `[]`) is passed as its one element and
    made an array in the statement, `ARRAY[%(x)s::type]`: psycopg adapts a scalar in a
    sixth of the time it takes to adapt a one-element list (~8 against ~47 us for a submit).
    """
    return _call_sql(function, tuple(params), tuple(sorted((casts or {}).items())), one)


def call(
    function: str, params: Mapping[str, Any], casts: Mapping[str, str] | None = None
) -> list[tuple[Any, ...]]:
    """Call a zypher_* function with named parameters (`params` keys without `p_`)."""
    return rows(statement(function, params, casts), params)


def rows(sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of a `statement` run on Django's connection."""
    with connection.cursor() as cursor:
        cursor.execute(sql, dict(params))
        return cursor.fetchall()
