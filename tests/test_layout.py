"""The package's shape: no import cycle between modules or packages, imports that point down the layers,
imports inside functions only where they keep a heavy dependency off a path, small modules and functions,
a purpose line per module."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kface"
MAX_MODULE_LINES = 460  # "about 450"
MAX_FUNCTION_LINES = 60
LONG_REASON = "long because"  # a comment inside a longer function says why it is one piece


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


#: The package layers, bottom first (see docs/architecture.md): an import never points to a higher layer,
#: whether written at the top of a module or inside a function. ``kface`` is the root ``__init__`` (the
#: version and the lazily exported public names).
LAYERS: list[tuple[str, set[str]]] = [
    ("bottom", {"kface", "errors", "util", "models"}),
    ("core", {"engines", "backbones", "faces", "embeddings", "distances", "metrics", "datasets", "pairs"}),
    ("uses", {"training", "attributes", "reporting"}),
    ("api", {"api"}),
    ("applications", {"galleries", "evaluation", "ageedit"}),
    ("top", {"build", "scale", "serve", "toolkit", "cli", "__main__"}),
]
#: Libraries worth keeping off a path that does not need them: an import inside a function must reach one
#: of these (itself, or a kface module that imports one when it loads). The rest belong at the top.
HEAVY = {"torch", "torchvision", "ray", "faiss", "fastapi", "fastapi_offline", "uvicorn", "starlette", "anyio",
         "onnx", "onnxruntime", "onnxscript", "matplotlib", "pyarrow", "playwright", "sklearn", "scipy", "dlib",
         "facenet_pytorch", "PIL", "multiprocessing", "python_multipart", "threadpoolctl", "tqdm",
         # the standard library's slow one: it loads email, zipfile and csv, which a cached verify never needs
         "importlib.metadata"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _import_names(module: str, path: Path, node: ast.AST) -> list[str]:
    """The absolute names an import statement of ``module`` reaches: a kface module where one is named, else
    the module (or outside library) it imports from."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if node.level:
        name = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    return [f"{name}.{alias.name}" if f"{name}.{alias.name}" in MODULES or not name.startswith("kface") else name
            for alias in node.names]


def _imports(module: str, path: Path) -> tuple[list[ast.AST], list[ast.AST]]:
    """(module-level, function-level) import statements of ``module``; an import guarded by ``except
    ImportError`` (an optional, platform-bound library) or by ``if TYPE_CHECKING`` counts as neither."""
    tree = _tree(path)
    optional = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Try)
                if any("ImportError" in ast.unparse(handler.type or ast.Name("")) for handler in node.handlers)
                for statement in node.body for inner in ast.walk(statement)}
    # ``if TYPE_CHECKING:`` imports serve annotations only and run never.
    optional |= {id(inner) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
                 for statement in node.body for inner in ast.walk(statement)}
    top: list[ast.AST] = []
    inner: list[ast.AST] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and id(child) not in optional:
                (inner if in_function else top).append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, inner


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _imported(module: str, path: Path) -> set[str]:
    """Every kface module ``module`` imports, at top level or inside functions."""
    top, inner = IMPORTS[module]
    targets = set()
    for node in top + inner:
        targets.update(name for name in _import_names(module, path, node) if name in MODULES)
    targets.discard(module)
    return targets


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_even_inside_functions():
    graph = {module: _imported(module, path) for module, path in MODULES.items()}
    assert _cycles(graph) == []


def _package(module: str) -> str:
    """``kface.faces.detect`` -> ``faces``; ``kface.api`` -> ``api``; the root ``kface`` -> ``kface``."""
    return module.split(".")[1] if "." in module else module


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        graph.setdefault(_package(module), set()).update(
            _package(target) for target in _imported(module, path) if _package(target) != _package(module))
    return graph


def test_no_package_cycles_even_inside_functions():
    assert _cycles(_package_graph()) == []


def test_every_package_has_a_layer_and_imports_point_down():
    layer = {package: rank for rank, (_, packages) in enumerate(LAYERS) for package in packages}
    graph = _package_graph()
    assert sorted(set(graph) - set(layer)) == [], "a new package: give it a layer in LAYERS (and docs/architecture.md)"
    climbing = sorted(f"{source} ({LAYERS[layer[source]][0]}) -> {target} ({LAYERS[layer[target]][0]})"
                      for source, targets in graph.items() for target in targets if layer[target] > layer[source])
    assert climbing == []


def _heavy_named(target: str) -> set[str]:
    """The HEAVY library an import of ``target`` (a module, or a name in one) is, if any."""
    parts = target.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts) + 1)} & HEAVY


def _heavy_on_load(module: str, seen: set[str]) -> set[str]:
    """The HEAVY libraries that importing kface module ``module`` loads (its parents' included)."""
    found: set[str] = set()
    parts = module.split(".")
    for name in (".".join(parts[:end]) for end in range(2, len(parts) + 1)):
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        for node in IMPORTS[name][0]:
            for target in _import_names(name, MODULES[name], node):
                found |= _heavy_named(target)
                if target.split(".")[0] == "kface":
                    found |= _heavy_on_load(target, seen)
    return found


def test_imports_inside_functions_keep_a_heavy_dependency_off_the_path():
    """An import inside a function is there to keep torch, onnxruntime, faiss... off paths that do not need
    them (``kface --help``, a cached ``verify``); anything else is imported at the top of the module."""
    light = []
    for module, (_, inner) in IMPORTS.items():
        for node in inner:
            reached = set()
            for target in _import_names(module, MODULES[module], node):
                reached |= _heavy_named(target) if not target.startswith("kface") else _heavy_on_load(target, set())
            if not reached:
                light.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{node.lineno} {ast.unparse(node)}")
    assert light == []


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small_and_says_what_it_is_for(module):
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path}: {len(text.splitlines())} lines"
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring and docstring.splitlines()[0].strip(), f"{path}: no one-line docstring at the top"


def test_functions_are_short_or_say_why():
    long = []
    for path in MODULES.values():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = lines[node.lineno - 1:node.end_lineno]
                if len(body) > MAX_FUNCTION_LINES and not any(LONG_REASON in line.lower() for line in body):
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({len(body)} lines)")
    assert long == []
