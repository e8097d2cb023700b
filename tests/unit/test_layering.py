"""The package's layers, read from its source (every import, lazy ones included).

    errors, files, hosts, processes, probe    the bottom: no other part of the package
    models                             the one model definition
    training                           fine-tuning a model folder into a new version
    serving | onnx | worker            the three ways a model runs; none imports another
    stack                              the local launcher, over the three
    cli                                the command line, over everything

A module may import from a lower layer or from its own part, never from a layer above or a
sibling. `marcelle-torch --help` must stay light: registering the commands imports none of the
heavy dependencies (the commands import them when they run).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "marcelle_torch"
LAYERS = {
    "": 0,  # the package's __init__ (its version)
    "errors": 0,
    "files": 0,
    "hosts": 0,
    "processes": 0,
    "probe": 0,
    "models": 1,
    "training": 2,
    "serving": 3,
    "onnx": 3,
    "worker": 3,
    "stack": 4,
    "cli": 5,
}
HEAVY = ("torch", "numpy", "httpx", "yaml", "ray")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def internal_imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the package's own modules in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "marcelle_torch"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "marcelle_torch":
                continue
            # `from . import x` may name a submodule: judge the submodule, not the package.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py"
                ).is_file()
                found.append((node.lineno, candidate if is_module else target))
    return found


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_part_has_a_layer():
    parts = {part(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(LAYERS), f"give these a layer in this test: {sorted(parts - set(LAYERS))}"


def test_no_module_imports_from_a_layer_above_or_a_sibling():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part(module_name(path))
        for line, target in internal_imports(path):
            dest = part(target)
            if dest == source:
                continue
            if LAYERS[dest] < LAYERS[source] or (LAYERS[dest] == LAYERS[source] == 0):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            wrong.append(
                f"{where} ({source or 'marcelle_torch'}, layer {LAYERS[source]}) imports {target} "
                f"(layer {LAYERS[dest]})"
            )
    assert not wrong, "\n".join(wrong)


def commands() -> list[str]:
    from marcelle_torch.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)


PROBE = """
import json, sys
from marcelle_torch.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {heavy!r})))
"""


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in commands()]], ids=" ".join)
def test_help_imports_no_heavy_dependency(argv):
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    *help_text, loaded = result.stdout.strip().splitlines()
    assert "usage: marcelle-torch" in "\n".join(help_text)
    assert json.loads(loaded) == [], f"`marcelle-torch {' '.join(argv)}` imported {json.loads(loaded)}"


def test_the_serve_application_module_does_not_import_torch():
    # The router replica imports it (Ray loads a deployment's class by its module) and never runs
    # a model: torch would cost it seconds at start and a few hundred MiB.
    code = "import sys, marcelle_torch.serving.app; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
