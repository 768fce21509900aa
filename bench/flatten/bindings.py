"""The bindings of the flattener's modules: what a top-level name of a module is bound to.

A Module parses one file into Units (its top-level statements) and records, for every top-level name, what binds
it: a Unit of its own, an import of the repository (RepoModule, RepoName) or of anything else (External). A Def names
a definition the output may keep. Import statements are read through the Flattener (`import_bindings`), which alone
knows which modules are the repository's; everything else here is plain reading of one file's syntax tree.
"""

import ast
import builtins
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from speedrun.cli import UserError

if TYPE_CHECKING:
    from bench.flatten.reach import Flattener

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
DUNDERS = {"__name__", "__file__", "__doc__", "__spec__", "__loader__", "__package__", "__builtins__",
           "__annotations__", "__dict__", "__module__", "__qualname__", "__class__"}
BUILTINS = set(dir(builtins))


class FlattenError(UserError):
    """Code the flattener cannot inline; the message names the file and line."""


def repository_top_names(root: Path = REPO) -> set[str]:
    """The top-level import names of the checkout: its packages (folders with __init__.py) and top-level modules."""
    names = {p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    return names | {p.stem for p in root.glob("*.py")}


@dataclass(frozen=True)
class External:
    """A binding made by an import of a module outside the repository. `attr` None: `import module [as name]`
    (plain: `import a.b` binding `a`)."""

    module: str
    attr: str | None
    plain: bool = False
    alias: str = field(default="", compare=False)  # the local name it was bound to where first seen

    @property
    def default_name(self) -> str:
        if self.alias:
            return self.alias
        if self.attr is not None:
            return self.attr
        return self.module.split(".")[0] if self.plain else self.module.rsplit(".", 1)[-1]

    def statement(self, name: str) -> str:
        if self.attr is not None:
            return f"from {self.module} import {self.attr}" + (f" as {name}" if name != self.attr else "")
        if self.plain:
            return f"import {self.module}"
        return f"import {self.module}" + (f" as {name}" if name != self.module else "")


@dataclass(frozen=True)
class RepoModule:
    """A binding to a module of the repository (`from kernels import reference`, `import optim.roles as roles`)."""

    module: str


@dataclass(frozen=True)
class RepoName:
    """A binding to a name defined in a module of the repository (`from optim.roles import role_table`)."""

    module: str
    name: str


@dataclass(frozen=True)
class Def:
    """A definition: module `module`'s top-level name `name`, bound by one or more of its statements."""

    module: str
    name: str


BUILTIN = object()


@dataclass(eq=False)
class Unit:
    """One top-level statement of a module."""

    module: "Module"
    node: ast.stmt
    defines: set[str]
    is_import: bool = False
    deps: set["Unit"] = field(default_factory=set)
    externals: set[External] = field(default_factory=set)
    analysed: bool = False
    uses: list = field(default_factory=list)
    stripped: list = field(default_factory=list)  # decorators removed
    local_imports: list = field(default_factory=list)  # imports inside its functions
    global_statements: list = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.module.display}:{self.node.lineno}"


@dataclass(eq=False)
class Use:
    """A reference to a global (or to a function-local import of the repository) in a unit: the Name node and the
    attribute nodes that follow it (innermost first)."""

    unit: Unit
    name: ast.Name
    attrs: list
    binding: object = None  # for a function-local repository import: its binding
    scope: object = None  # the Scope it occurs in
    target: object = None  # Def, External or BUILTIN, after resolution
    consumed: int = 0  # attributes of `attrs` the target absorbed (module paths)


class Module:
    def __init__(self, name: str, path: Path, source: str, flattener: "Flattener", display: str):
        self.name, self.path, self.source, self.display = name, path, source, display
        try:
            self.tree = ast.parse(source, filename=str(path))
        except SyntaxError as e:
            raise FlattenError(f"{display}:{e.lineno}: {e.msg}") from None
        self.lines = source.splitlines(keepends=True)
        self.line_starts = [0]
        for line in self.lines:
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.flattener = flattener
        self.docstring = ast.get_docstring(self.tree, clean=True)
        self.units: list[Unit] = []
        self.bindings: dict[str, list] = {}  # top-level name -> [Unit | External | RepoModule | RepoName]
        self.imports_in_order: list[str] = []  # repository modules imported at the top level, in source order
        body = self.tree.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                isinstance(body[0].value.value, str):
            body = body[1:]
        for node in body:
            self._add_unit(node)

    # positions ---------------------------------------------------------------------------------------------

    def offset(self, lineno: int, col: int) -> int:
        """Character offset of (1-based line, UTF-8 byte column)."""
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        return self.line_starts[lineno - 1] + len(line.encode()[:col].decode(errors="ignore"))

    def span(self, node) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def error(self, node, message: str) -> FlattenError:
        return FlattenError(f"{self.display}:{getattr(node, 'lineno', '?')}: {message}")

    # units and bindings -------------------------------------------------------------------------------------

    def _add_unit(self, node: ast.stmt):
        unit = Unit(self, node, set())
        self.units.append(unit)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            unit.is_import = True
            for name, binding in self.flattener.import_bindings(self, node):
                self.bindings.setdefault(name, []).append(binding)
                if isinstance(binding, (RepoModule, RepoName)):
                    mod = binding.module
                    if mod not in self.imports_in_order:
                        self.imports_in_order.append(mod)
            return
        for name, imported in top_level_bindings(node):
            if imported is not None:  # an import inside a top-level if/try
                binding = dict(self.flattener.import_bindings(self, imported))[name]
                if isinstance(binding, External):  # kept verbatim as part of the statement's text
                    binding = unit
                elif binding.module not in self.imports_in_order:
                    self.imports_in_order.append(binding.module)
            else:
                binding = unit
            if binding is unit:
                unit.defines.add(name)
            self.bindings.setdefault(name, []).append(binding)


def top_level_bindings(node: ast.stmt):
    """(name, import node or None) for every module-level name a top-level statement binds."""
    out = []

    class Binder(ast.NodeVisitor):
        def visit_FunctionDef(self, n):
            out.append((n.name, None))  # its body is another scope

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_ClassDef(self, n):
            out.append((n.name, None))

        def visit_Lambda(self, n):
            pass

        def visit_Import(self, n):
            for alias in n.names:
                out.append((alias.asname or alias.name.split(".")[0], n))

        def visit_ImportFrom(self, n):
            for alias in n.names:
                out.append((alias.asname or alias.name, n))

        def visit_Name(self, n):
            if isinstance(n.ctx, (ast.Store, ast.Del)):
                out.append((n.id, None))

        def visit_ExceptHandler(self, n):
            if n.name:
                out.append((n.name, None))
            self.generic_visit(n)

        def visit_ListComp(self, n):  # comprehension variables are the comprehension's own
            for sub in ast.walk(n):
                if isinstance(sub, ast.NamedExpr):
                    out.append((sub.target.id, None))

        visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_ListComp

    Binder().visit(node)
    return out
