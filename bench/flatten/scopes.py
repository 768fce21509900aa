"""Python's scoping rules over one top-level statement: which global each Name use reaches.

Walker visits a Unit's statement with a Scope per function, lambda, class body and comprehension (parameters,
locals, global/nonlocal declarations, imports inside it) and records each use of a module-level name as a Use, with
the attribute chain after it; a local variable is never mistaken for a global, so renaming a global never touches
one. Imports inside functions are collected apart: the flattener deletes those of the repository.
"""

import ast

from bench.flatten.bindings import COMPREHENSIONS, FUNCTIONS, Unit, Use


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


def attribute_chain(node: ast.Attribute):
    """(root Name, [attribute nodes, innermost first]) of a.b.c, or (None, []) when the chain does not start at a
    name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node)
        node = node.value
    return (node, attrs[::-1]) if isinstance(node, ast.Name) else (None, [])


class Walker:
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
            root, attrs = attribute_chain(node)
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
