"""The house's shape, checked: layered core, no import cycles, plugins apart from the core and each
other, function-local imports only for optional heavy dependencies (with a reason)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.architecture.importgraph import ROOT, cycles, imports, kit_modules

PLUGINS = {"medical", "remote_sensing", "pathology", "synthetic", "arrays"}


def _plugin(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PLUGINS else None


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter.cli", reason="import-linter is a dev dependency")
    # in a subprocess: import-linter reconfigures logging, which would silence the kit's loggers here
    code = (
        "from importlinter.cli import lint_imports; "
        f"raise SystemExit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:]


def test_no_import_cycles_in_the_core_or_any_plugin():
    found = cycles([(i.source, i.target) for i in imports()])
    assert found == [], f"import cycles: {found}"


def test_the_core_never_imports_a_domain_and_domains_do_not_import_each_other():
    wrong = [i for i in imports() if _plugin(i.target) and _plugin(i.source) != _plugin(i.target)]
    assert wrong == [], wrong


def test_every_shipped_plugin_is_found_by_its_entry_point():
    from domainfm.registry import list_domains

    assert PLUGINS <= set(list_domains())
    assert {_plugin(m) for m in kit_modules()} - {None} == PLUGINS


def test_function_local_imports_are_optional_heavy_dependencies_with_a_reason():
    offenders = []
    for _module, path in kit_modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                own = node.level > 0 if isinstance(node, ast.ImportFrom) else False
                own = own or any(n.split(".")[0] == "domainfm" for n in names)
                reason = (
                    "#" in lines[node.lineno - 1]
                    or lines[node.lineno - 2].strip().startswith("#")
                    or "#" in lines[node.lineno - 2]
                )
                if own or not reason:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert offenders == [], "\n".join(offenders)
