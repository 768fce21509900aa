"""Stage 5, codegen: bench.codegen's sm_90 ahead-of-time predictions (registers, spills, shared memory) next to the
registers/spills of the kernels the JIT compiled for stage 3's launches."""

from bench.gpu_report.runner import Stage, json_safe, short_error


def match_jit(case, jit: list[dict]) -> list[dict]:
    """The JIT variants compiled from the same function with the case's constexprs, warps, stages and pointer
    dtypes (the JIT may hold more constexprs, e.g. a size specialised to 1: a superset matches)."""
    fn_name = getattr(case.fn, "__name__", None)
    want_ptrs = {k: v for k, v in case.signature.items() if isinstance(v, str) and v.startswith("*")}
    out = []
    for j in jit:
        if j["fn"] != fn_name or j["num_warps"] != case.num_warps or j["num_stages"] != case.num_stages:
            continue
        if any(j["constexprs"].get(k) != json_safe(v) for k, v in case.constexprs.items()):
            continue
        if any(j["pointer_types"].get(k) != v for k, v in want_ptrs.items()):
            continue
        out.append(j)
    return out


def run(ctx):
    from bench.codegen import all_cases, compile_sm90

    jit = ctx.previous_info("microbench").get("jit_kernels") or []
    cases = all_cases()
    keyed = [(f"codegen/{c.kernel}/{c.config}", c, match_jit(c, jit)) for c in cases]
    keyed.sort(key=lambda item: not item[2])  # the configurations the run launched first
    dry_subset = set()
    if ctx.dry_run:  # the first configuration of each kernel module: enough to prove the path, seconds not minutes
        seen = set()
        for key, c, _ in keyed:
            if c.fn not in seen:
                seen.add(c.fn)
                dry_subset.add(key)
    matched_jit = set()
    skipped = compiled = agreed = compared = 0
    for key, case, matches in keyed:
        base = {"kernel": case.kernel, "config": case.config, "num_warps": case.num_warps,
                "num_stages": case.num_stages}
        jit_fields = {}
        if matches:
            j = matches[0]
            matched_jit.update(id(m) for m in matches)
            jit_fields = {"jit_registers": j["n_regs"], "jit_spill_bytes": j["spill_bytes"],
                          "jit_shared_bytes": j["shared_bytes"], "jit_variants": len(matches)}
        if ctx.dry_run and key not in dry_subset:
            ctx.row(key, "skipped", reason="dry run compiles one configuration per kernel function", **base,
                    **jit_fields)
            continue
        if ctx.remaining() < 3.0:
            skipped += 1
            ctx.row(key, "skipped", reason="time box", **base, **jit_fields)
            continue
        try:
            rep = compile_sm90(case)
        except Exception as exc:  # noqa: BLE001
            ctx.row(key, "failed", error=short_error(exc), **base, **jit_fields)
            continue
        aot = {"aot_registers": rep.registers, "aot_spill_bytes": rep.spill_bytes, "aot_shared_bytes": rep.shared_bytes,
               "aot_hgmma": rep.hgmma, "violations": rep.violations(case.expect_hgmma)}
        agree = None
        if matches:
            agree = (jit_fields["jit_registers"] == rep.registers
                     and jit_fields["jit_spill_bytes"] == rep.spill_bytes)
            compared, agreed = compared + 1, agreed + agree
        compiled += 1
        ctx.row(key, "ok", **base, **aot, **jit_fields, agree=agree)
    for j in jit:  # what the JIT compiled that no AOT case describes
        if id(j) in matched_jit:
            continue
        key = f"jit/{j['fn']}/{j['num_warps']}w{j['num_stages']}s/" + ",".join(
            f"{k}={v}" for k, v in sorted(j["constexprs"].items()) if k.isupper())
        ctx.row(key, "ok", kernel=j["fn"], config="no AOT case", num_warps=j["num_warps"],
                num_stages=j["num_stages"], jit_registers=j["n_regs"], jit_spill_bytes=j["spill_bytes"],
                jit_shared_bytes=j["shared_bytes"], note="no bench.codegen case with these constexprs")
    jit_only = len([j for j in jit if id(j) not in matched_jit])
    summary = (f"{compiled} of {len(cases)} configurations compiled for sm_90; {compared} compared with the JIT, "
               f"{agreed} agree on registers and spills; {jit_only} JIT variant(s) without an AOT case")
    if not jit:
        summary += " (no JIT kernels recorded by stage 3: interpreter, or stage 3 did not run)"
    ctx.end("partial" if skipped else "done", reason=f"{skipped} configuration(s) not compiled: time box"
            if skipped else None, summary=summary)


STAGE = Stage("codegen", "sm_90 AOT register/spill/shared-memory predictions vs the JIT-compiled kernels", run,
              min_s=15, cap_s=60, dry_min_s=5)
