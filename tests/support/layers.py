"""Reads modules' imports and private attribute uses with ``ast`` (tests/project/test_layers.py).

Theory of operation. Nothing is imported: each file is parsed once and
walked whole, so imports inside functions and ``if TYPE_CHECKING:`` blocks
count like module-level ones (a type-only import still ties the layers).

Imports. ``import a.b`` may load ``a.b``; ``from a.b import c`` may load
``a.b`` and ``a.b.c`` (``c`` may be a submodule: ``from .._core import
lifecycle``); relative imports are resolved against the module's own package.

Private reads. ``<base>._attr`` (one leading underscore, not a dunder), read,
written or deleted, is a use of a private attribute that belongs to someone. It is the module's own
when ``<base>`` is

* ``self`` or ``cls``;
* a class defined in the module (``Index._step_done``) or a name bound to an
  instance of one: a parameter or variable annotated with such a class, a
  variable assigned ``Cls(...)``, ``self.x`` or ``other.x`` when the class
  declares ``x`` as such (``self.x: Cls``, ``self.x = param`` with ``param:
  Cls``, ``self.x = Cls(...)``), followed through plain assignments;
* a module imported from outside the project (``os._exit`` is documented
  API; other projects' privacy is not ours to police).

It is another module's when ``<base>`` is a project module or a name imported
from one, or its type resolves to a class the module imports. When the type
cannot be resolved cheaply, the read counts as the module's own only if the
module itself defines an attribute of that name (on ``self``, in a class
body or ``__slots__``, or at module level): a name the module never defines
can only be someone else's.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Import:
    """One imported name: ``from module import name``, or ``import module`` (name None)."""

    path: str  # relative to the repository root
    line: int
    module: str  # absolute dotted name
    name: str | None
    text: str  # the statement as written

    @property
    def targets(self) -> tuple[str, ...]:
        """The modules it may load: ``module``, and ``module.name`` (``name`` may be one)."""
        if self.name is None or self.name == "*":
            return (self.module,)
        return (self.module, f"{self.module}.{self.name}")

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


@dataclass(frozen=True)
class PrivateRead:
    """``<base>._attr`` read in ``path`` at ``line``, of another module's object."""

    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


def module_name(path: Path) -> str:
    """The dotted name ``path`` is imported under (tools/ installs as memable_log_tools)."""
    parts = list(path.resolve().relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "tools":
        parts[0] = "memable_log_tools"
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(*folders: str) -> list[Path]:
    """Every ``.py`` file under ``folders`` (relative to the repository root), sorted."""
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def relative(path: Path) -> str:
    return path.resolve().relative_to(ROOT).as_posix()


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports(path: Path) -> list[Import]:
    """Every import in ``path``, wherever it stands, with relative ones made absolute."""
    tree = ast.parse(path.read_text(), str(path))
    module, is_package = module_name(path), path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(relative(path), node.lineno, alias.name, None,
                                    f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node.level, node.module)
            written = "." * node.level + (node.module or "")
            for alias in node.names:
                found.append(Import(relative(path), node.lineno, source, alias.name,
                                    f"from {written} import {alias.name}"))
    return sorted(found, key=lambda imp: imp.line)


def within(name: str, package: str) -> bool:
    """Whether the dotted ``name`` is ``package`` or inside it."""
    return name == package or name.startswith(package + ".")


# -- private reads ----------------------------------------------------------------

_OWN = "own"  # a class of this module, or an instance of one
_FOREIGN = "foreign"  # a project module, or a class/instance from one


def _is_private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


def _annotation_class(node: ast.expr | None) -> str | None:
    """The class an annotation names: ``C``, ``C | None``, ``"C"``; None for others."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        for side in (node.left, node.right):
            if not (isinstance(side, ast.Constant) and side.value is None):
                return _annotation_class(side)
    if isinstance(node, ast.Name):
        return node.id
    return None


class _Module:
    """What one module defines and imports, for deciding whose a private read is."""

    def __init__(self, path: Path) -> None:
        self.path = relative(path)
        self.tree = ast.parse(path.read_text(), str(path))
        module, is_package = module_name(path), path.name == "__init__.py"
        self.classes = {n.name: n for n in ast.walk(self.tree) if isinstance(n, ast.ClassDef)}
        # names bound by imports: project ones are foreign, others external
        self.imported: dict[str, str] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.asname or alias.name.split(".")[0]
                    self.imported[name] = _kind(alias.name)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = _kind(source)
        self.defined = self._defined_attributes()
        self.attr_types = {name: self._attribute_types(cls) for name, cls in self.classes.items()}
        self.module_env = self._env(self.tree.body, {})

    def _defined_attributes(self) -> set[str]:
        """Attribute names the module defines: on self/cls, in class bodies, at module level."""
        names: set[str] = set()
        for node in ast.walk(self.tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
        for body in [self.tree.body, *(cls.body for cls in self.classes.values())]:
            for stmt in body:
                target, value, _ = _assignment(stmt)
                for name in ast.walk(target) if target is not None else ():
                    if isinstance(name, ast.Name):
                        names.add(name.id)
                if isinstance(target, ast.Name) and target.id == "__slots__" and value:
                    names.update(c.value for c in ast.walk(value)
                                 if isinstance(c, ast.Constant) and isinstance(c.value, str))
        return names

    def _attribute_types(self, cls: ast.ClassDef) -> dict[str, str]:
        """``attr -> class name`` for the attributes ``cls`` declares with a class."""
        types: dict[str, str] = {}
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                found = _annotation_class(stmt.annotation)
                if found:
                    types[stmt.target.id] = found
        for func in cls.body:
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            params = _parameter_types(func)
            for node in ast.walk(func):
                target, value, annotation = _assignment(node)
                if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                        and target.value.id == "self"):
                    continue
                found = _annotation_class(annotation)
                if found is None and isinstance(value, ast.Name):
                    found = params.get(value.id)
                if found is None and isinstance(value, ast.Call):
                    found = _annotation_class(value.func)
                if found:
                    types.setdefault(target.attr, found)
        return types

    def _env(self, body: list[ast.stmt], env: dict[str, str]) -> dict[str, str]:
        """Names bound in ``body`` (not nested scopes) to a class, by annotation or call."""
        env = dict(env)
        for stmt in body:
            for node in _walk_scope(stmt):
                target, value, annotation = _assignment(node)
                pairs: list[tuple[ast.expr, ast.expr | None]] = [(target, value)] if target else []
                if (isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                        and len(target.elts) == len(value.elts)):
                    pairs = list(zip(target.elts, value.elts, strict=True))
                for name, expr in pairs:
                    if not isinstance(name, ast.Name):
                        continue
                    found = _annotation_class(annotation) if annotation is not None else None
                    if found is None and expr is not None:
                        found = self._expr_class(expr, env)
                    if found:
                        env[name.id] = found
        return env

    def _expr_class(self, node: ast.expr, env: dict[str, str]) -> str | None:
        """The class of the object ``node`` evaluates to, when cheap to tell."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id if node.func.id in self.classes or node.func.id in self.imported \
                else None
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self._expr_class(node.value, env)
            if owner in self.classes:
                return self.attr_types[owner].get(node.attr)
        return None

    def _whose(self, base: ast.expr, env: dict[str, str]) -> str | None:
        """_OWN, _FOREIGN, or None when it cannot be told cheaply."""
        if isinstance(base, ast.Name):
            if base.id in ("self", "cls") or (base.id in self.classes and base.id not in env):
                return _OWN
            if base.id not in env and base.id in self.imported:
                return self.imported[base.id]
        found = self._expr_class(base, env)
        if found is None:
            return None
        if found in self.classes:
            return _OWN
        return _FOREIGN if self.imported.get(found) == _FOREIGN else None

    def private_reads(self) -> list[PrivateRead]:
        found: list[PrivateRead] = []
        self._scan(self.tree.body, self.module_env, None, found)
        return sorted(found, key=lambda r: (r.line, r.text))

    def _scan(self, body: list[ast.stmt], env: dict[str, str], cls: str | None,
              found: list[PrivateRead]) -> None:
        for stmt in body:
            for node in _walk_scope(stmt):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    inner = dict(env)
                    if cls is not None:
                        inner["self"] = inner["cls"] = cls
                    inner.update(_parameter_types(node))
                    inner_body: list[ast.stmt] = (
                        node.body if isinstance(node.body, list) else [ast.Expr(node.body)]
                    )
                    self._scan(inner_body, self._env(inner_body, inner), None, found)
                    for default in node.args.defaults + node.args.kw_defaults:
                        if default is not None:
                            self._scan([ast.Expr(default)], env, cls, found)
                    continue
                if isinstance(node, ast.ClassDef):
                    self._scan(node.body, env, node.name, found)
                    continue
                if isinstance(node, ast.Attribute) and _is_private(node.attr):
                    whose = self._whose(node.value, env)
                    if whose == _FOREIGN or (whose is None and node.attr not in self.defined):
                        found.append(PrivateRead(self.path, node.lineno, ast.unparse(node)))


def _kind(module: str) -> str:
    return _FOREIGN if within(module, "memable_log") or within(module, "memable_log_tools") \
        else "external"


def _parameter_types(func: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> dict[str, str]:
    args = func.args
    types = {}
    for arg in args.posonlyargs + args.args + args.kwonlyargs:
        found = _annotation_class(arg.annotation)
        if found:
            types[arg.arg] = found
    return types


def _assignment(node: ast.AST) -> tuple[ast.expr | None, ast.expr | None, ast.expr | None]:
    """``(target, value, annotation)`` of an assignment with one target, else Nones."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        return node.targets[0], node.value, None
    if isinstance(node, ast.AnnAssign):
        return node.target, node.value, node.annotation
    if isinstance(node, ast.NamedExpr):
        return node.target, node.value, None
    return None, None, None


def _walk_scope(node: ast.AST) -> list[ast.AST]:
    """``node`` and what it contains, stopping at (but yielding) nested scopes."""
    out = [node]
    stack = [node]
    while stack:
        current = stack.pop()
        if current is not node and isinstance(
            current, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
        ):
            continue
        for child in ast.iter_child_nodes(current):
            out.append(child)
            stack.append(child)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
        return [node]
    return out


def private_reads(path: Path) -> list[PrivateRead]:
    """The reads in ``path`` of private attributes that belong to other modules."""
    return _Module(path).private_reads()
