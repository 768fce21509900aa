"""A result's adapter and the rewrite of its script: the constants moved to the tiny size and the short run.

An Adapter (scripts/track3_adapters/<folder>.py) says which schedule points to move, which environment the
published run used and how the loop reads out validation. rewrite() applies those values to the script's syntax
tree, line numbers kept, and returns every rewritten constant (its original text, its new value, where).
"""

import ast
import importlib.util

from . import ADAPTERS


class Adapter:
    """Per-result settings (a module scripts/track3_adapters/<folder>.py may set any of these names).

    RESULT       the results-table number (checked against the table)
    STEPS        optimizer steps to record (default 5)
    ASSIGN       {name: value}: every assignment `name = ...` outside function bodies gets `value`
    KWARGS       {callee: {keyword: value}}: every call `callee(...)` gets `keyword=value`
    DEFAULTS     {function: {argument: value}}: the function's default for the argument
    ENV          {name: value}: environment the script reads (the published run's settings)
    A value may be a function of the step count (then called with it).
    MODEL_CLASS  the model class the script constructs ("GPT")
    RECORD_AFTER "zero_grad" (the model's, after the optimizer steps) or "Class.method" (after that method runs)
    RECORD_FORWARD_NORMS  also record every parameter's norm at each training forward (wrappers that move the
                 parameters between the step and the next forward, e.g. a lookahead)
    VAL_DENOMINATOR  "tokens" (the summed val loss / val_tokens) or "microbatches" (mean of per-batch means)
    VAL_LABELS   names of the validation passes one validation runs, in order (raw, then readouts)
    LIBRARY      put the result folder (exported from the checkout) on sys.path: the script imports from it
    NOTES        prose recorded in meta
    """
    RESULT = None
    STEPS = 5
    ASSIGN: dict = {}
    KWARGS: dict = {}
    DEFAULTS: dict = {}
    ENV: dict = {}
    MODEL_CLASS = "GPT"
    RECORD_AFTER = "zero_grad"
    RECORD_FORWARD_NORMS = False
    VAL_DENOMINATOR = "tokens"
    VAL_LABELS = ("val_loss",)
    LIBRARY = False
    NOTES = ""

    def __init__(self, name: str):
        self.name, self.file = name, ADAPTERS / f"{name}.py"
        if self.file.is_file():
            spec = importlib.util.spec_from_file_location(f"track3_adapter_{name}", self.file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            for key in dir(Adapter):
                if key.isupper() and hasattr(module, key):
                    setattr(self, key, getattr(module, key))
        else:
            self.file = None


def resolve(value, steps: int):
    return value(steps) if callable(value) else value


########################################
#          Rewriting the script        #
########################################

class Rewriter(ast.NodeTransformer):
    """Constants replaced in the syntax tree (locations kept, so tracebacks and line numbers are the script's)."""

    def __init__(self, source: str, assign: dict, kwargs: dict, defaults: dict, hook_classes: set):
        self.source, self.assign, self.kwargs, self.defaults = source, assign, kwargs, defaults
        self.hook_classes = hook_classes
        self.applied, self.depth, self.hooked = [], 0, set()

    def _note(self, kind, name, old, new, line):
        text = ast.get_source_segment(self.source, old) if old is not None else None
        self.applied.append({"kind": kind, "name": name, "line": line, "was": text, "now": repr(new)})

    @staticmethod
    def _const(value, like):
        return ast.copy_location(ast.parse(repr(value), mode="eval").body, like)

    def visit_FunctionDef(self, node):
        if node.name in self.defaults:
            args = node.args
            positional = args.posonlyargs + args.args
            for arg, value in self.defaults[node.name].items():
                names = [a.arg for a in positional]
                if arg in names and names.index(arg) >= len(names) - len(args.defaults):
                    i = names.index(arg) - (len(names) - len(args.defaults))
                    self._note("default", f"{node.name}({arg}=)", args.defaults[i], value, args.defaults[i].lineno)
                    args.defaults[i] = self._const(value, args.defaults[i])
                elif arg in [a.arg for a in args.kwonlyargs]:
                    i = [a.arg for a in args.kwonlyargs].index(arg)
                    old = args.kw_defaults[i]
                    self._note("default", f"{node.name}({arg}=)", old, value, node.lineno)
                    args.kw_defaults[i] = self._const(value, old or node)
                else:
                    raise SystemExit(f"{node.name} has no default for {arg}")
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        if self.depth == 0 and node.name in self.hook_classes:
            self.hooked.add(node.name)
            hook = ast.parse(f"{node.name} = __golden__.on_class({node.name!r}, {node.name})").body[0]
            return [node, ast.copy_location(hook, node)]
        return node

    def visit_Assign(self, node):
        self.generic_visit(node)
        if self.depth == 0 and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in self.assign:
                self._note("assign", name, node.value, self.assign[name], node.lineno)
                node.value = self._const(self.assign[name], node.value)
        return node

    def visit_AnnAssign(self, node):
        self.generic_visit(node)
        if self.depth == 0 and isinstance(node.target, ast.Name) and node.value is not None:
            if node.target.id in self.assign:
                self._note("assign", node.target.id, node.value, self.assign[node.target.id], node.lineno)
                node.value = self._const(self.assign[node.target.id], node.value)
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        callee = node.func.id if isinstance(node.func, ast.Name) else None
        if callee in self.kwargs:
            for kw, value in self.kwargs[callee].items():
                match = [k for k in node.keywords if k.arg == kw]
                if match:
                    self._note("kwarg", f"{callee}({kw}=)", match[0].value, value, node.lineno)
                    match[0].value = self._const(value, match[0].value)
                else:
                    self._note("kwarg", f"{callee}({kw}=)", None, value, node.lineno)
                    node.keywords.append(ast.keyword(arg=kw, value=self._const(value, node)))
        return node


def rewrite(text: str, filename: str, assign: dict, kwargs: dict, defaults: dict, hook_classes: set):
    tree = ast.parse(text, filename)
    rw = Rewriter(text, assign, kwargs, defaults, hook_classes)
    tree = ast.fix_missing_locations(rw.visit(tree))
    done = {a["name"].split("(")[0] for a in rw.applied} | {a["name"] for a in rw.applied}
    missing = [n for n in assign if n not in done] + [f"{c}({k}=)" for c, kw in kwargs.items() for k in kw
                                                       if f"{c}({k}=)" not in done]
    missing += [f"{f}({a}=)" for f, ad in defaults.items() for a in ad if f"{f}({a}=)" not in done]
    missing += [f"class {c}" for c in hook_classes - rw.hooked]
    if missing:
        raise SystemExit(f"{filename}: nothing to rewrite for {', '.join(missing)}; does the adapter fit the script?")
    return compile(tree, filename, "exec"), rw.applied


########################################
#          Running on the CPU          #
########################################
