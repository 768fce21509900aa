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

The parts, in reading order: bindings (a module's top-level statements and what each name is bound to), scopes
(Python's scoping rules: which global a name use reaches), reach (Flattener: the definitions the root needs, to the
fixpoint) and write (the flat names and the output's text).
"""

from bench.flatten.bindings import FlattenError, repository_top_names
from bench.flatten.reach import Flattener

__all__ = ["Flattener", "FlattenError", "repository_top_names"]
