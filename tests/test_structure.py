"""The package's shape, read from its source: no import circles (deferred imports inside functions count too),
no reaching into another stage's private modules, and a pinned public surface.

``python -m pytest tests/test_structure.py`` is the command that shows it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import layersens

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"layersens": ROOT / "layersens", "layersens_cli": ROOT / "cli"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package] + parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its source (module level or inside functions)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    tree = ast.parse(path.read_text())
    type_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }  # imports for annotations never run
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets.add(stem)
            targets |= {f"{stem}.{alias.name}" for alias in node.names}
    return {t for t in targets if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _stage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "layersens" and len(parts) > 1 else parts[0]


def test_no_import_circles_between_modules():
    """A package's ``__init__`` importing its own modules is not a circle; any other cycle is."""
    graph = _graph()
    edges = {
        m: {t for t in targets if not (m.startswith(t + ".") and t in set(PACKAGES) | _packages(graph))}
        for m, targets in graph.items()
    }
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == [], "import circles: " + "; ".join(" → ".join(c) for c in cycles)


def _packages(graph) -> set[str]:
    return {m for m in graph if (PACKAGES[m.split(".")[0]] / Path(*m.split(".")[1:]) / "__init__.py").exists()}


def test_no_stage_imports_another_stages_private_module():
    offenders = []
    for module, targets in _graph().items():
        for target in targets:
            private = any(part.startswith("_") for part in target.split(".")[1:])
            top_level_shared = target.count(".") == 1 and target.startswith("layersens._")
            if private and not top_level_shared and _stage(target) != _stage(module):
                offenders.append(f"{module} imports {target}")
    assert offenders == []


def test_the_public_surface_is_pinned():
    assert layersens.__all__ == sorted(layersens.__all__) and len(set(layersens.__all__)) == len(layersens.__all__)
    assert layersens.__all__ == [
        "Auto",
        "BudgetError",
        "ChannelStructure",
        "CheckpointError",
        "CompressedJacobian",
        "CompressedSink",
        "DenseSink",
        "DeviceError",
        "Differentiated",
        "Estimate",
        "Forward",
        "INPUT",
        "InputShapeError",
        "InputValueError",
        "InputWarning",
        "JacobianProducts",
        "JacobianSummary",
        "JacobianTooLargeError",
        "LayerInfo",
        "LayerJacobian",
        "LayerNTK",
        "LayerSplit",
        "LayerSummary",
        "LayersensError",
        "LeafSummary",
        "LinearizedLayer",
        "MODE_ALIASES",
        "MODE_NAMES",
        "MemoryBudgetError",
        "ModeError",
        "Model",
        "ModelSpec",
        "OutputError",
        "PerLeaf",
        "Plan",
        "PlannedBlock",
        "PrecisionWarning",
        "PreparedJacobian",
        "ProfileRow",
        "ReadoutDerivative",
        "Reverse",
        "STRATEGIES",
        "SelectionError",
        "Sensitivity",
        "SensitivityProfile",
        "SensitivitySink",
        "SingularDirection",
        "Sink",
        "SpecError",
        "Spectrum",
        "StoredJacobian",
        "Strategy",
        "Structured",
        "TrainModeError",
        "UnknownLayerError",
        "UntrustedModuleError",
        "Verification",
        "Wrt",
        "WrtKind",
        "available_memory",
        "capture",
        "channel_structure",
        "compressed_jacobian",
        "estimate_frobenius",
        "estimate_parameter_diagonal",
        "estimate_unit_diagonal",
        "extract",
        "extract_products",
        "extract_readout",
        "format_bytes",
        "from_function",
        "from_linen",
        "from_nnx",
        "hessian",
        "hvp",
        "jacobian",
        "join_processes",
        "layer_ntk",
        "linearize",
        "list_layers",
        "load_jacobian",
        "load_model",
        "parse_bytes",
        "plan",
        "prepare",
        "products",
        "profile",
        "read_inputs",
        "read_model_spec",
        "readout_gradient",
        "save_model",
        "sensitivity",
        "spectrum",
        "split",
        "stream_jacobian",
        "summarize",
        "summarize_layer",
        "unbox",
        "use_compile_cache",
        "verify",
    ]
    for name in layersens.__all__:
        assert getattr(layersens, name) is not None, name
