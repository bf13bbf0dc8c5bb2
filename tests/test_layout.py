"""The arrows between the apps (README "Layout"): zypher -> apps, devices -> jobs,
splines -> jobs, and jobs imports neither, nor names them in a string.

Plain Python over the source with `ast`: nothing is imported, so a new module that
breaks the rule fails here even if no other test loads it. Docstrings may point a reader
to another app; code may not (an import, `apps.get_model("devices", ...)`, a dotted path
such as "splines.handlers:render_spline_job", a kind such as "qpu").
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.one_pass

ROOT = Path(__file__).resolve().parent.parent
OTHER_APPS = {"devices", "splines"}
# A string that names another app: its label, a dotted path into it, or a handler kind
# that another app registers.
NAMING = re.compile(r"^(devices|splines|qpu|spline)$|\b(devices|splines)[.:][A-Za-z_]")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings (of the module, a class, a function)."""
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, owners) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def references_to_other_apps(path: Path, apps: set[str]) -> list[str]:
    """Each import of `apps` and each string naming another app, as "line: what"."""
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = [
        f"{line}: imports {module}"
        for line, module in imported_modules(tree)
        if module.split(".")[0] in apps
    ]
    skip = docstrings(tree)
    # A key of a dict literal is a field of an answer (`/api/stats/` has "devices"), not a
    # reference; a dotted path is one wherever it stands.
    keys = {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and (match := NAMING.search(node.value))
            and not (id(node) in keys and match.group(1))
        ):
            problems.append(f"{node.lineno}: names {node.value!r}")
    return problems


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_the_check_finds_imports_and_names_of_another_app(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(
        '"""A docstring may mention `devices.qpu` to a reader."""\n'
        "import devices.models\n"
        "from splines import handlers\n"
        "from .local import thing\n"
        'HANDLERS = {"spline": "splines.handlers:render_spline_job"}\n'
        'MODEL = ("devices", "Device")\n'
        'WORDS = "idle devices of one pool"\n'
        'ANSWER = {"devices": [], "kind": "qpu"}\n'
    )
    assert references_to_other_apps(module, OTHER_APPS) == [
        "2: imports devices.models",
        "3: imports splines",
        "5: names 'splines.handlers:render_spline_job'",
        "6: names 'devices'",
        "8: names 'qpu'",
    ]


@pytest.mark.parametrize("path", modules_of("jobs"), ids=lambda p: str(p.relative_to(ROOT)))
def test_jobs_imports_and_names_neither_devices_nor_splines(path: Path) -> None:
    relative = str(path.relative_to(ROOT))
    problems = references_to_other_apps(path, OTHER_APPS)
    assert problems == [], f"{relative} reaches into another app: {problems}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("devices", {"splines"}), ("splines", {"devices"})],
)
def test_devices_and_splines_import_only_jobs(package: str, forbidden: set[str]) -> None:
    problems = {
        str(path.relative_to(ROOT)): found
        for path in modules_of(package)
        if (found := [p for p in references_to_other_apps(path, forbidden) if "imports" in p])
    }
    assert problems == {}
