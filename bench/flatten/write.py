"""The Flattener's output: a flat name for every kept definition and external import, and the text of the file.

Naming: a definition keeps its own name unless another kept definition, an external import or a builtin some kept
code uses has it, or a local variable would hide it where it is used; then its module's last component prefixes it.
Writing: each kept statement's source with its uses rewritten to the flat names, repository imports and stripped
decorators deleted, grouped by module under a banner, the external imports on top and the root's code last.

Writer is a part of Flattener (bench.flatten.reach), split out to be read on its own; it uses the attributes the
reach leaves behind: `kept` (the kept Units in output order), `root`, `extra` and `import_bindings`.
"""

import ast
import re
import sys

from bench.flatten.bindings import BUILTIN, FUNCTIONS, Def, FlattenError, Module, RepoModule, RepoName, Unit


class Writer:
    """Names and writes what the reach kept (see the module docstring)."""

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
