"""The package is one-way: no import cycle between bertjax's modules, nor between its packages
(config, nn, models, data, objectives, interop, train, tasks, and each top-level module) --
imports inside functions included, so a cycle can't hide in a function body."""

import ast
from pathlib import Path

import bertjax

ROOT = Path(bertjax.__file__).parent


def module_name(path: Path) -> str:
  parts = ("bertjax",) + path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def exists(name: str) -> bool:
  rel = Path(*name.split(".")[1:])
  return (ROOT / rel).with_suffix(".py").exists() or (ROOT / rel / "__init__.py").exists()


def imported_modules(path: Path) -> set[str]:
  """Every bertjax module ``path`` imports, anywhere in the file."""
  me = module_name(path)
  package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("bertjax"))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      if not base.startswith("bertjax"):
        continue
      for alias in node.names:  # ``from pkg import submodule`` imports the submodule
        sub = f"{base}.{alias.name}"
        out.add(sub if exists(sub) else base)
  return {m for m in out if m != me}


def import_graph() -> dict[str, set[str]]:
  return {module_name(p): imported_modules(p) for p in ROOT.rglob("*.py")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one node (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def package_of(module: str) -> str:
  """bertjax.train.engine -> bertjax.train; bertjax.sharding -> bertjax.sharding."""
  parts = module.split(".")
  return ".".join(parts[:2])


def test_every_import_is_seen():
  graph = import_graph()
  assert len(graph) > 50
  assert "bertjax.config.loader" in graph["bertjax.config"]  # from-imports of names
  assert "bertjax.interop.hf" in graph["bertjax.tasks.start"]
  assert "bertjax.sharding" in graph["bertjax.nn.encoder"]  # ``from bertjax import sharding``
  for targets in graph.values():
    assert all(exists(t) for t in targets)


def test_no_import_cycle_between_modules():
  assert cycles(import_graph()) == []


def test_no_import_cycle_between_packages():
  packages: dict[str, set[str]] = {}
  for module, targets in import_graph().items():
    packages.setdefault(package_of(module), set()).update(
        package_of(t) for t in targets if package_of(t) != package_of(module))
  assert cycles(packages) == []


def test_a_cycle_is_found():
  """The checker itself: a hidden function-level import closing a loop is a cycle."""
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert cycles(graph) == [["a", "b", "c"]]
