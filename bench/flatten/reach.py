"""The Flattener's reach: from the root's names to every definition of the repository they need, to the fixpoint.

Modules are loaded on demand (a module of the checkout, or a researcher's own file in `extra_modules`); each use of a
name is resolved through imports to a Def, a builtin or an External; the kept units are those reached from the
root's statements, plus the side effects attached to a kept definition (a custom op's fake and autograd
registrations). Naming and writing the output is the Writer's part (bench.flatten.write), which this class extends.
"""

import ast
from pathlib import Path

from bench.flatten.bindings import (
    BUILTIN,
    BUILTINS,
    DUNDERS,
    FUNCTIONS,
    REPO,
    Def,
    External,
    FlattenError,
    Module,
    RepoModule,
    RepoName,
    Unit,
    repository_top_names,
    top_level_bindings,
)
from bench.flatten.scopes import Scope, Walker, attribute_chain
from bench.flatten.write import Writer


class Flattener(Writer):
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
            root, attrs = attribute_chain(callee) if isinstance(callee, ast.Attribute) else (callee, [])
            if isinstance(root, ast.Name) and root.id in module.bindings:
                target, consumed = self.resolve(module, root.id, attrs, d)
                if isinstance(target, Def) and consumed == len(attrs) and (target.module, target.name) in self.strip:
                    skip.add(id(d))
                    unit.stripped.append(d)
        walker = Walker(unit, skip)
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
    root, _ = attribute_chain(subject)
    if root is None or not any(isinstance(b, Unit) for b in unit.module.bindings.get(root.id, [])):
        return None
    return root.id


def _substitute(source: str, name: str, text: str, path: Path) -> str:
    """`source` with the top-level statement that binds `name` replaced by `text`."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for node in tree.body:
        if any(bound == name for bound, _ in top_level_bindings(node)):
            return "".join(lines[:node.lineno - 1]) + text.rstrip("\n") + "\n" + "".join(lines[node.end_lineno:])
    raise FlattenError(f"{path}: no top-level statement binds {name!r} (the substitution's target)")
