"""The layer rules of docs/ARCHITECTURE.md hold: imports only point downwards, and only the
composition layer imports Hydra. Read from the source with ast, so a violation anywhere fails."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pssim"
# Lower number = lower layer. A module may import modules of its own layer or below.
LAYERS = {
    "pssim.config": 0, "pssim.registry": 0, "pssim.seeding": 0,
    "pssim.network": 1,
    "pssim.workload": 2, "pssim.cluster": 2,
    "pssim.comm": 3,
    "pssim.metrics": 4,
    "pssim.context": 5,
    "pssim.policies": 6,
    "pssim.simulation": 7, "pssim.faults": 7,
    "pssim.presets": 8, "pssim.api": 8, "pssim.testing": 8, "pssim.validation": 8, "pssim": 10,
    "pssim.__main__": 9, "pssim.cli": 9,
}
HYDRA_ALLOWED = {"pssim.presets", "pssim.cli"}


def layer(module: str) -> int:
    """The layer of a module: its longest prefix in LAYERS."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return LAYERS[".".join(parts[:i])]
    raise KeyError(module)


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path


def imports(path: Path) -> list[str]:
    """Modules imported at run time (imports under `if TYPE_CHECKING:` are annotations only)."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda v: str(v).rsplit("/", 1)[-1])
def test_imports_point_downwards(name, path):
    own = layer(name)
    for target in imports(path):
        if target == "pssim" or target.startswith("pssim."):
            if target == "pssim" and name != "pssim":
                pytest.fail(f"{name} imports the top-level package")
            assert layer(target) <= own, f"{name} (layer {own}) imports {target} (layer {layer(target)})"
        if target.split(".")[0] == "hydra":
            assert name in HYDRA_ALLOWED, f"{name} imports hydra"


def test_every_module_has_a_layer():
    for name, _ in modules():
        layer(name)
