"""Flatten code of this repository into one file of plain top-level Python: what bench.export_track3 writes.

    flat = Flattener(root_source, root_path="track3_script.py", extra_modules={"my_module": "path/my_opt.py"},
                     strip_decorators={("optim.registry", "optimizer"), ...})
    text = flat.render(header, banner)     # header: the file's docstring; banner(module): its comment block

The root is a module's source (the script's own code). Every name it uses is followed through the modules it
imports, by their imports, to the statement that defines it; that statement is kept, and so is every name it uses in
turn (its decorators, bases, defaults, annotations and body), to the fixpoint. Nothing else is: a module contributes
only the definitions the root reaches, so importing a module for one function does not bring the rest of it (nor
the imports only the rest needs). Which modules are followed is decided by where they live: a module of this
repository (a top-level package or module of the checkout) or one of `extra_modules` (a researcher's own file) is
inlined; any other module stays an import at the top of the output.

The output is one namespace, so the names are rewritten:
  - `from optim.roles import role_table` disappears and `role_table` is the inlined function; `reference.newton_schulz`
    (`from kernels import reference`) becomes `newton_schulz`; function-local imports of the repository disappear too.
  - Two modules defining the same name (each optimizer file's `build`) keep it apart by a prefix, the module's last
    component (`muon_build`; a constant's in capitals); so does a definition named like an imported name or a
    builtin another module uses, and one that a local variable would hide where it is used
    (`reference.ns_coefficients(ns_coefficients)` in a function whose parameter is ns_coefficients becomes
    `reference_ns_coefficients(ns_coefficients)`). Names are resolved by Python's scoping rules (parameters, locals,
    class bodies, comprehensions, global/nonlocal), so a local variable is never renamed.
  - Decorators in `strip_decorators` (the registry's @optimizer, @recipe, ...) are removed: the script names its
    parts directly.
Statements that define nothing (a registration call, `_register()`) are side effects of importing a module and are
dropped, except one attached to a kept definition: `@op.register_fake def _(...)` and `op.register_autograd(...)`
where `op` is kept (a torch.library custom op keeps its fake and autograd implementations).

Two hooks let the caller say what names alone cannot: `substitutions` replace the statement binding a name by other
source (the kernel registry's table becomes the table of the implementations the run uses), and `external_refs` maps
an external attribute to the repository's definitions it reaches by name (`torch.ops.NAMESPACE.OP` to the statement
registering that custom op).

Modules are written in the order Python would finish importing them (a module after everything it imports at its
top level), each under a banner naming its file; a definition keeps the comment lines right above it. Limits (each
an error naming the file and line): `from M import *`, a module object used as a value (`f(reference)`), an
assignment to another module's attribute, a name that is neither bound nor a builtin.
"""

import ast
import builtins
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from speedrun.cli import UserError

REPO = Path(__file__).resolve().parents[1]
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


# --- bindings ------------------------------------------------------------------------------------------------


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
        for name, imported in _top_level_bindings(node):
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


def _top_level_bindings(node: ast.stmt):
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


# --- scopes -------------------------------------------------------------------------------------------------


class Scope:
    """A function, lambda, class body or comprehension: the names it binds and those it declares global."""

    def __init__(self, kind: str, parent, bound=(), declared_global=(), imports=None):
        self.kind, self.parent = kind, parent
        self.bound, self.declared_global = set(bound), set(declared_global)
        self.imports = imports or {}  # local name -> its import node (imports inside this scope)

    def lookup(self, name: str):
        """'global', or the Scope whose local `name` is."""
        scope = self
        if scope.kind == "module" or name in scope.declared_global:
            return "global"
        if name in scope.bound:
            return scope
        scope = scope.parent
        while scope is not None and scope.kind != "module":
            if scope.kind != "class" and name in scope.bound and name not in scope.declared_global:
                return scope
            scope = scope.parent
        return "global"


def _scope_of(kind: str, node, parent) -> Scope:
    """The Scope of a function/lambda/class/comprehension node: its parameters and what its own body binds."""
    bound, declared_global, imports = set(), set(), {}
    if kind in ("function", "lambda"):
        args = node.args
        for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
            if a is not None:
                bound.add(a.arg)
    if kind == "comprehension":
        body = [g.target for g in node.generators]
    else:
        body = [node.body] if kind == "lambda" else node.body

    class Binder(ast.NodeVisitor):
        def visit_FunctionDef(self, n):
            bound.add(n.name)
            for d in n.decorator_list:
                self.visit(d)

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_ClassDef(self, n):
            bound.add(n.name)

        def visit_Lambda(self, n):
            pass

        def visit_Global(self, n):
            declared_global.update(n.names)

        def visit_Nonlocal(self, n):
            pass  # a nonlocal name is an enclosing function's: not bound here, found outwards

        def visit_Import(self, n):
            for alias in n.names:
                local = alias.asname or alias.name.split(".")[0]
                bound.add(local)
                imports[local] = n

        def visit_ImportFrom(self, n):
            for alias in n.names:
                local = alias.asname or alias.name
                bound.add(local)
                imports[local] = n

        def visit_Name(self, n):
            if isinstance(n.ctx, (ast.Store, ast.Del)):
                bound.add(n.id)

        def visit_ExceptHandler(self, n):
            if n.name:
                bound.add(n.name)
            self.generic_visit(n)

        def visit_MatchAs(self, n):
            if n.name:
                bound.add(n.name)
            self.generic_visit(n)

        def visit_MatchStar(self, n):
            if n.name:
                bound.add(n.name)

        def visit_ListComp(self, n):
            for sub in ast.walk(n):
                if isinstance(sub, ast.NamedExpr):
                    bound.add(sub.target.id)

        visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_ListComp

    binder = Binder()
    for stmt in body:
        binder.visit(stmt)
    return Scope(kind, parent, bound - declared_global, declared_global, imports)


def _attribute_chain(node: ast.Attribute):
    """(root Name, [attribute nodes, innermost first]) of a.b.c, or (None, []) when the chain does not start at a
    name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node)
        node = node.value
    return (node, attrs[::-1]) if isinstance(node, ast.Name) else (None, [])


class _Walker:
    """Records every Name use of a statement with the scope it resolves in (Python's rules), and the imports inside
    nested scopes."""

    def __init__(self, unit: Unit, skip: set):
        self.unit, self.skip = unit, skip  # skip: nodes not to visit (stripped decorators)
        self.uses: list[Use] = []
        self.local_imports: list[ast.stmt] = []
        self.global_statements: list[ast.stmt] = []

    def visit(self, node, scope: Scope):
        if node is None or id(node) in self.skip:
            return
        if isinstance(node, FUNCTIONS):
            for d in node.decorator_list:
                self.visit(d, scope)
            self._arguments(node.args, scope)
            self.visit(node.returns, scope)
            inner = _scope_of("function", node, scope)
            for stmt in node.body:
                self.visit(stmt, inner)
        elif isinstance(node, ast.Lambda):
            self._arguments(node.args, scope)
            self.visit(node.body, _scope_of("lambda", node, scope))
        elif isinstance(node, ast.ClassDef):
            for expr in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
                self.visit(expr, scope)
            inner = _scope_of("class", node, scope)
            for stmt in node.body:
                self.visit(stmt, inner)
        elif isinstance(node, COMPREHENSIONS):
            generators = node.generators
            self.visit(generators[0].iter, scope)
            inner = _scope_of("comprehension", node, scope)
            for i, gen in enumerate(generators):
                self.visit(gen.target, inner)
                if i:
                    self.visit(gen.iter, inner)
                for cond in gen.ifs:
                    self.visit(cond, inner)
            for part in ("elt", "key", "value"):
                self.visit(getattr(node, part, None), inner)
        elif isinstance(node, ast.Attribute):
            root, attrs = _attribute_chain(node)
            if root is None:
                self.visit(node.value, scope)
            else:
                self._name(root, attrs, scope)
        elif isinstance(node, ast.Name):
            self._name(node, [], scope)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if scope.kind != "module":
                self.local_imports.append(node)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            self.global_statements.append(node)
        else:
            for child in ast.iter_child_nodes(node):
                self.visit(child, scope)

    def _arguments(self, args: ast.arguments, scope: Scope):
        for default in (*args.defaults, *[d for d in args.kw_defaults if d is not None]):
            self.visit(default, scope)
        for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
            if a is not None:
                self.visit(a.annotation, scope)

    def _name(self, node: ast.Name, attrs, scope: Scope):
        where = scope.lookup(node.id)
        if where == "global":
            self.uses.append(Use(self.unit, node, attrs, scope=scope))
        elif node.id in where.imports:  # a function-local import: of the repository, it is rewritten
            self.uses.append(Use(self.unit, node, attrs, binding=where.imports[node.id], scope=scope))


# --- the flattener ------------------------------------------------------------------------------------------


class Flattener:
    """See the module docstring. `extra_modules`: module name -> file, modules outside the checkout to inline (a
    researcher's own part file, loaded by optim.registry). `strip_decorators`: (module, name) of the decorators to
    remove. `substitutions`: (module, name) -> source text replacing the statement that binds that name (its own
    imports bind what it uses)."""

    def __init__(self, root_source: str, *, root_path: str = "script.py", extra_modules: dict | None = None,
                 strip_decorators=(), substitutions: dict | None = None, external_refs=None, repo: Path = REPO):
        self.repo = repo
        # external_refs(External, [attribute names]) -> [(module, name)]: definitions of the repository an external
        # attribute reaches by name (torch.ops.NAMESPACE.OP: the statement registering that custom op)
        self.external_refs = external_refs or (lambda ext, attrs: [])
        self.top_names = repository_top_names(repo)
        self.extra = {name: Path(path) for name, path in (extra_modules or {}).items()}
        self.strip = set(strip_decorators)
        self.substitutions = dict(substitutions or {})
        self.modules: dict[str, Module] = {}
        self.external_users: dict[str, set[str]] = {}  # external module -> the files whose kept code uses it
        self.root = Module("__main__", Path(root_path), root_source, self, display=Path(root_path).name)
        self.modules["__main__"] = self.root
        self.kept: list[Unit] = []
        self._analyse()

    # modules --------------------------------------------------------------------------------------------

    def is_repository(self, module: str) -> bool:
        return module in self.extra or module.split(".")[0] in self.top_names

    def module_file(self, module: str) -> Path | None:
        if module in self.extra:
            return self.extra[module]
        base = self.repo.joinpath(*module.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def module(self, name: str, node_for_error=None, importer: Module | None = None) -> Module:
        if name not in self.modules:
            path = self.module_file(name)
            if path is None:
                where = f"{importer.display}:{node_for_error.lineno}: " if importer and node_for_error else ""
                raise FlattenError(f"{where}no module {name} in the repository ({self.repo})")
            source = path.read_text()
            for (module, bound), text in self.substitutions.items():
                if module == name:
                    source = _substitute(source, bound, text, path)
            display = str(path.relative_to(self.repo)) if path.is_relative_to(self.repo) else str(path)
            self.modules[name] = Module(name, path, source, self, display)
        return self.modules[name]

    def is_submodule(self, package: str, name: str) -> bool:
        return package not in self.extra and self.module_file(f"{package}.{name}") is not None and \
            self.module_file(package) is not None and self.module_file(package).name == "__init__.py"

    def import_bindings(self, module: Module, node) -> list[tuple[str, object]]:
        """(local name, binding) for each name an import statement binds."""
        out = []
        if isinstance(node, ast.Import):
            for alias in node.names:
                if self.is_repository(alias.name):
                    if alias.asname is None and "." in alias.name:
                        raise module.error(node, f"`import {alias.name}`: write `from ... import ...` or `import "
                                                 f"{alias.name} as NAME` to import a module of the repository")
                    out.append((alias.asname or alias.name, RepoModule(alias.name)))
                else:
                    plain = alias.asname is None and "." in alias.name
                    local = alias.asname or alias.name.split(".")[0]
                    out.append((local, External(alias.name, None, plain=plain, alias=local)))
            return out
        base = node.module or ""
        if node.level:  # relative import
            package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        if node.module == "__future__":
            return [(alias.name, External("__future__", alias.name)) for alias in node.names]
        for alias in node.names:
            if alias.name == "*":
                raise module.error(node, f"`from {base} import *`: import the names one by one")
            local = alias.asname or alias.name
            if self.is_repository(base):
                binding = RepoModule(f"{base}.{alias.name}") if self.is_submodule(base, alias.name) else \
                    RepoName(base, alias.name)
            else:
                binding = External(base, alias.name, alias=local)
            out.append((local, binding))
        return out

    # resolution ---------------------------------------------------------------------------------------------

    def resolve(self, module: Module, name: str, attrs, node) -> tuple[object, int]:
        """(target, attributes consumed) of the global `name` of `module` followed by `attrs`."""
        bindings = module.bindings.get(name)
        if not bindings:
            if name in BUILTINS or name in DUNDERS:
                return BUILTIN, 0
            raise module.error(node, f"{name!r} is not defined in {module.display} (nor a builtin)")
        units = [b for b in bindings if isinstance(b, Unit)]
        if units:
            if len(units) != len(bindings):
                raise module.error(node, f"{name!r} is both imported from the repository and assigned in "
                                         f"{module.display}: give one of them another name")
            return Def(module.name, name), 0
        binding = bindings[-1]
        if isinstance(binding, External):
            return binding, 0
        if isinstance(binding, RepoName):
            return self.resolve(self.module(binding.module, node, module), binding.name, attrs, node)
        return self._resolve_in(binding.module, attrs, node, module, 0)

    def _resolve_in(self, modname: str, attrs, node, user: Module, consumed: int) -> tuple[object, int]:
        if not attrs:
            raise user.error(node, f"the module {modname} is used as a value; use the names it defines "
                                   f"(`{modname}.NAME`) instead")
        attr = attrs[0].attr
        if isinstance(attrs[0].ctx, (ast.Store, ast.Del)) and len(attrs) == 1:
            raise user.error(node, f"assigns {modname}.{attr}: another module's attributes cannot be assigned in "
                                   "one flat file")
        module = self.module(modname, node, user)
        if attr not in module.bindings and self.is_submodule(modname, attr):
            return self._resolve_in(f"{modname}.{attr}", attrs[1:], node, user, consumed + 1)
        target, more = self.resolve(module, attr, attrs[1:], node)
        return target, consumed + 1 + more

    def units_of(self, target: Def) -> list[Unit]:
        return [b for b in self.modules[target.module].bindings[target.name] if isinstance(b, Unit)]

    # analysis ------------------------------------------------------------------------------------------------

    def _analyse_unit(self, unit: Unit):
        """The unit's uses (resolved), dependencies, externals and edits."""
        if unit.analysed:
            return
        unit.analysed = True
        module, node = unit.module, unit.node
        skip = set()
        for d in getattr(node, "decorator_list", []):
            callee = d.func if isinstance(d, ast.Call) else d
            root, attrs = _attribute_chain(callee) if isinstance(callee, ast.Attribute) else (callee, [])
            if isinstance(root, ast.Name) and root.id in module.bindings:
                target, consumed = self.resolve(module, root.id, attrs, d)
                if isinstance(target, Def) and consumed == len(attrs) and (target.module, target.name) in self.strip:
                    skip.add(id(d))
                    unit.stripped.append(d)
        walker = _Walker(unit, skip)
        walker.visit(node, Scope("module", None))
        unit.uses, unit.local_imports, unit.global_statements = walker.uses, walker.local_imports, \
            walker.global_statements
        for use in unit.uses:
            if use.binding is not None:  # a name bound by an import inside a function
                bound = dict(self.import_bindings(module, use.binding))[use.name.id]
                if isinstance(bound, External):
                    use.target = BUILTIN  # stays as written, with its import
                    continue
                if isinstance(bound, RepoName):
                    use.target, use.consumed = self.resolve(self.module(bound.module, use.name, module), bound.name,
                                                            use.attrs, use.name)
                else:
                    use.target, use.consumed = self._resolve_in(bound.module, use.attrs, use.name, module, 0)
            else:
                use.target, use.consumed = self.resolve(module, use.name.id, use.attrs, use.name)
            if isinstance(use.target, Def):
                if isinstance(use.name.ctx, ast.Load) or use.consumed:
                    unit.deps.update(u for u in self.units_of(use.target) if u is not unit)
            elif isinstance(use.target, External):
                unit.externals.add(use.target)
                self.external_users.setdefault(use.target.module, set()).add(module.display)
                for modname, name in self.external_refs(use.target, [a.attr for a in use.attrs]):
                    target, _ = self.resolve(self.module(modname, use.name, module), name, [], use.name)
                    if isinstance(target, Def):
                        unit.deps.update(self.units_of(target))

    def _analyse(self):
        roots = [u for u in self.root.units if not u.is_import]
        kept, work = set(), list(roots)
        while True:
            while work:
                unit = work.pop()
                if unit in kept:
                    continue
                kept.add(unit)
                self._analyse_unit(unit)
                work.extend(unit.deps - kept)
            # side effects attached to what is kept: `@op.register_fake def _(...)`, `op.register_autograd(...)`
            for module in list(self.modules.values()):
                for unit in module.units:
                    subject = _subject(unit)
                    if unit not in kept and subject and any(
                            u in kept for u in module.bindings.get(subject, []) if isinstance(u, Unit)):
                        work.append(unit)
            if not work:
                break
        self.kept_set = kept
        order = self._module_order()
        self.kept = [u for name in order for u in self.modules[name].units if u in kept]
        self._name_everything()

    def _module_order(self) -> list[str]:
        """Modules in the order Python finishes importing them from the root (each after its top-level imports)."""
        order, state = [], {}

        def visit(name):
            if state.get(name):
                return
            state[name] = "visiting"
            for dep in self.modules[name].imports_in_order:
                if dep in self.modules:  # a module never loaded has nothing kept
                    visit(dep)
            order.append(name)
            state[name] = "done"

        visit("__main__")
        for name in self.modules:  # modules reached only through function-local imports
            if name not in state:
                visit(name)
        order.remove("__main__")
        return order + ["__main__"]

    # names ---------------------------------------------------------------------------------------------------

    def _name_everything(self):
        """The flat name of every kept definition and external import: its own name, unless another kept definition,
        an external import or a builtin some kept code uses has it; then the module's last component prefixes it
        (`muon_build`, `_attention_register`)."""
        externals = sorted({ext for unit in self.kept for ext in unit.externals},
                           key=lambda e: (e.module, e.attr or "", e.plain))
        defs = list(dict.fromkeys(Def(unit.module.name, name) for unit in self.kept
                                  for name in sorted(unit.defines - {"_"})))
        taken: dict[str, object] = {}
        self.names: dict[object, str] = {}
        sites: dict[object, list] = {}
        for unit in self.kept:
            for use in unit.uses:
                if use.target is not BUILTIN:
                    sites.setdefault(use.target, []).append((use.scope, unit.module))

        def hidden(name: str, scope, module: Module) -> bool:
            """Whether a local of `scope` (or an enclosing function) named `name` would hide a global there; a
            local bound only by an import of the repository is not one: that import is deleted."""
            where = scope.lookup(name) if scope is not None else "global"
            if where == "global":
                return False
            node = where.imports.get(name)
            return node is None or not all(isinstance(b, (RepoModule, RepoName))
                                           for _, b in self.import_bindings(module, node))

        def take(key, first: str, prefixed: str):
            """The first of first, prefixed, prefixed_2, ... that no other key has and that no local variable
            hides where the key is used (`reference.ns_coefficients(ns_coefficients)` in a function whose
            parameter is ns_coefficients becomes `reference_ns_coefficients(ns_coefficients)`)."""
            candidates = [first, prefixed] + [f"{prefixed}_{n}" for n in range(2, 100)]
            for name in candidates:
                if name in taken and taken[name] != key:
                    continue
                if any(hidden(name, scope, module) for scope, module in sites.get(key, [])):
                    continue
                taken[name] = key
                self.names[key] = name
                return
            raise FlattenError(f"no free name for {key}")

        def prefixed(module: str, name: str) -> str:
            prefix = (self.extra[module].stem if module in self.extra else module.rsplit(".", 1)[-1]).lstrip("_")
            prefix = re.sub(r"\W", "_", prefix) or "module"
            if name.isupper():  # a constant stays one: SUPPORTED_DTYPES -> NEWTON_SCHULZ_SUPPORTED_DTYPES
                prefix = prefix.upper()
            return f"{'_' if name.startswith('_') else ''}{prefix}_{name.lstrip('_')}"

        for ext in externals:  # imports keep their names (two modules importing one name differently: the second
            take(ext, ext.default_name, prefixed(ext.module, ext.default_name))  # gets its module's name)
        for unit in self.kept:
            for use in unit.uses:
                if use.target is BUILTIN and use.binding is None:
                    taken.setdefault(use.name.id, BUILTIN)
        wanted = {}
        for key in defs:
            wanted.setdefault(key.name, []).append(key)
        for key in defs:  # the root's own names first: the script reads as written
            if key.module == "__main__":
                take(key, key.name, prefixed("main", key.name))
        for key in defs:
            if key.module == "__main__":
                continue
            alone = len(wanted[key.name]) == 1 and key.name not in taken
            take(key, key.name if alone else prefixed(key.module, key.name), prefixed(key.module, key.name))

    # rendering ---------------------------------------------------------------------------------------------------

    def _edits(self, unit: Unit) -> list[tuple[int, int, str]]:
        module, edits = unit.module, []
        renamed = {}
        for use in unit.uses:
            target = use.target
            if target is BUILTIN:
                continue
            flat = self.names[target]
            end_node = use.attrs[use.consumed - 1] if use.consumed else use.name
            if use.consumed or flat != use.name.id:
                start = module.offset(use.name.lineno, use.name.col_offset)
                end = module.offset(end_node.end_lineno, end_node.end_col_offset)
                edits.append((start, end, flat))
            if not use.consumed and flat != use.name.id and use.binding is None:
                renamed[use.name.id] = flat
        node = unit.node
        if isinstance(node, (*FUNCTIONS, ast.ClassDef)) and node.name in unit.defines and node.name != "_":
            flat = self.names[Def(module.name, node.name)]
            if flat != node.name:
                start = module.offset(node.lineno, node.col_offset)
                line = module.source[start:module.line_starts[node.lineno]]
                m = re.match(r"(?:async\s+)?(?:def|class)\s+", line)
                edits.append((start + m.end(), start + m.end() + len(node.name), flat))
        for stmt in unit.global_statements:  # `global NAME` of a renamed global
            if isinstance(stmt, ast.Global):
                names = [renamed.get(n, self.names.get(Def(module.name, n), n)) for n in stmt.names]
                if names != stmt.names:
                    start, end = module.span(stmt)
                    edits.append((start, end, "global " + ", ".join(names)))
        for d in unit.stripped:
            edits.append(self._line_span(module, d, decorator=True) + ("",))
        for stmt in unit.local_imports:
            bound = self.import_bindings(module, stmt)
            repo = [isinstance(b, (RepoModule, RepoName)) for _, b in bound]
            if any(repo) and not all(repo):
                raise module.error(stmt, "an import mixing the repository's modules and others: split it")
            if all(repo):
                edits.append(self._line_span(module, stmt) + (self._pass_if_alone(unit.node, stmt, module),))
        # nested top-level imports of the repository (inside a top-level if/try)
        if not isinstance(node, (*FUNCTIONS, ast.ClassDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)) and sub not in unit.local_imports and sub is not node:
                    bound = self.import_bindings(module, sub)
                    if all(isinstance(b, (RepoModule, RepoName)) for _, b in bound):
                        edits.append(self._line_span(module, sub) + (self._pass_if_alone(node, sub, module),))
        return sorted(set(edits))

    @staticmethod
    def _line_span(module: Module, node, decorator: bool = False) -> tuple[int, int]:
        """Whole lines of `node` (a decorator: with its '@'); an error if they hold anything else. A statement
        right under its block's header takes the blank line after it along."""
        start = module.line_starts[node.lineno - 1]
        end = module.line_starts[node.end_lineno]
        before = module.source[start:module.offset(node.lineno, node.col_offset)].strip()
        after = module.source[module.offset(node.end_lineno, node.end_col_offset):end].strip()
        if before not in ("", "@" if decorator else "") or (after and not after.startswith("#")):
            raise module.error(node, "a statement sharing its line with others: put it on lines of its own")
        header = module.lines[node.lineno - 2].split("#")[0].rstrip() if node.lineno > 1 else ""
        if not decorator and header.endswith(":") and node.end_lineno < len(module.lines) and \
                not module.lines[node.end_lineno].strip():
            end = module.line_starts[node.end_lineno + 1]
        return start, end

    @staticmethod
    def _pass_if_alone(container, stmt, module: Module) -> str:
        """'' to delete `stmt`, or an indented `pass` when it is the only statement of its block."""
        for parent in ast.walk(container):
            for body_name in ("body", "orelse", "finalbody", "handlers"):
                body = getattr(parent, body_name, None)
                if isinstance(body, list) and stmt in body:
                    rest = [s for s in body if s is not stmt and not (
                        isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and s is body[0])]
                    if not rest:
                        line = module.lines[stmt.lineno - 1]
                        return line[:len(line) - len(line.lstrip())] + "pass\n"
        return ""

    def unit_text(self, unit: Unit, with_comments: bool = True) -> str:
        module, node = unit.module, unit.node
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        start_line = first
        if with_comments:
            while start_line > 1 and module.lines[start_line - 2].lstrip().startswith("#"):
                start_line -= 1
        start, end = module.line_starts[start_line - 1], module.line_starts[node.end_lineno]
        text = module.source[start:end]
        for a, b, replacement in sorted(self._edits(unit), reverse=True):
            if not (start <= a <= b <= end):
                raise module.error(node, "an edit outside its statement (a bug of the flattener)")
            text = text[:a - start] + replacement + text[b - start:]
        return text.rstrip("\n") + "\n"

    def externals(self) -> str:
        """The import statements of every external module the kept code uses, grouped as isort would (__future__,
        the standard library, then the rest), one blank line between groups."""
        used = {ext for unit in self.kept for ext in unit.externals}
        groups = {"future": [], "stdlib": [], "third": []}
        for ext in used:
            top = ext.module.split(".")[0]
            groups["future" if top == "__future__" else "stdlib" if top in sys.stdlib_module_names else "third"].append(
                ext)
        blocks = []
        for exts in groups.values():
            plain = sorted({ext.statement(self.names[ext]) for ext in exts if ext.attr is None},
                           key=lambda s: s.split()[1])
            froms: dict[str, list[str]] = {}
            for ext in exts:
                if ext.attr is not None:
                    name = self.names[ext]
                    froms.setdefault(ext.module, []).append(ext.attr + (f" as {name}" if name != ext.attr else ""))
            lines = plain + [f"from {m} import {', '.join(sorted(set(n)))}" for m, n in sorted(froms.items())]
            if lines:
                blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def label(self, module: Module) -> str:
        """How the output names a module's file: its path in the repository, or a file of one's own by its name."""
        return module.path.name if module.name in self.extra else module.display

    def module_sections(self) -> list[tuple[Module, list[Unit]]]:
        """(module, its kept units) in the output's order, the root last."""
        sections, current = [], None
        for unit in self.kept:
            if current is None or unit.module is not current[0]:
                current = (unit.module, [])
                sections.append(current)
            current[1].append(unit)
        return sections

    def root_text(self) -> str:
        """The root's source without its docstring and its imports, with its uses rewritten."""
        module = self.root
        edits = []
        for unit in module.units:
            if unit.is_import:
                edits.append(self._line_span(module, unit.node) + ("",))
            else:
                edits.extend(self._edits(unit))
        body = module.tree.body
        start = 0
        if body and module.docstring is not None:
            start = module.line_starts[body[0].end_lineno]
        text = module.source
        for a, b, replacement in sorted(set(edits), reverse=True):
            text = text[:a] + replacement + text[b:]
        text = text[start:]
        return re.sub(r"\n{3,}", "\n\n\n", text.lstrip("\n"))

    def render(self, header: str, banner) -> str:
        """The whole file: `header` (a docstring), the external imports, each module's kept code under
        banner(module) (a comment block), then the root's own code."""
        parts = [header, self.externals()]
        for module, units in self.module_sections():
            if module is self.root:
                continue
            chunks, previous = [banner(module)], None
            for unit in units:
                text = self.unit_text(unit)
                if previous is not None:
                    big = any(isinstance(u.node, (*FUNCTIONS, ast.ClassDef)) or u.node.end_lineno > u.node.lineno
                              for u in (unit, previous))
                    adjacent = unit.node.lineno == previous.node.end_lineno + 1 and not text.startswith("#")
                    chunks.append("\n\n" if big else ("" if adjacent else "\n"))
                chunks.append(text)
                previous = unit
            parts.append("".join(chunks))
        parts.append(self.root_text())
        return "\n\n".join(p.rstrip("\n") + "\n" for p in parts).rstrip("\n") + "\n"


def _subject(unit: Unit) -> str | None:
    """The top-level name of its own module a statement that defines nothing (or only `_`) is attached to: `op` in
    `@op.register_fake def _(...)` and in `op.register_autograd(...)`; None for any other statement."""
    node = unit.node
    if unit.is_import or unit.defines - {"_"}:
        return None
    subject = None
    if isinstance(node, FUNCTIONS) and node.name == "_" and node.decorator_list:
        subject = node.decorator_list[0]
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        subject = node.value.func
    if isinstance(subject, ast.Call):
        subject = subject.func
    if not isinstance(subject, ast.Attribute):
        return None
    root, _ = _attribute_chain(subject)
    if root is None or not any(isinstance(b, Unit) for b in unit.module.bindings.get(root.id, [])):
        return None
    return root.id


def _substitute(source: str, name: str, text: str, path: Path) -> str:
    """`source` with the top-level statement that binds `name` replaced by `text`."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for node in tree.body:
        if any(bound == name for bound, _ in _top_level_bindings(node)):
            return "".join(lines[:node.lineno - 1]) + text.rstrip("\n") + "\n" + "".join(lines[node.end_lineno:])
    raise FlattenError(f"{path}: no top-level statement binds {name!r} (the substitution's target)")
