"""The GPU report's markdown (imports no torch): report.md from report.json's data, one section per stage, and the
derived figures (% of the measured peak, speedup over eager) filled into the microbenchmark rows."""

from bench.gpu_report.published import TRACK3_SOURCE, published_track3


def annotate(data: dict):
    """Fill in % of the measured peak and the speedup over eager on every microbenchmark row."""
    env = next((s for s in data["stages"] if s["name"] == "environment"), {})
    peak = (env.get("info") or {}).get("peak_tflops")
    micro = next((s for s in data["stages"] if s["name"] == "microbench"), None)
    if micro is None:
        return
    eager = {(r.get("kernel"), r.get("case"), r.get("variant")): r.get("ms") for r in micro["rows"]
             if r.get("provider") == "eager" and r.get("status") == "ok"}
    for r in micro["rows"]:
        if r.get("status") != "ok":
            continue
        r["pct_peak"] = 100.0 * r["tflops"] / peak if peak and r.get("tflops") else None
        base = eager.get((r.get("kernel"), r.get("case"), r.get("variant")))
        r["speedup_vs_eager"] = base / r["ms"] if base and r.get("ms") else None


def _fmt(value, spec=".3g", none="—"):
    if value is None:
        return none
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _status_text(row: dict, limit: int = 200) -> str:
    """status: reason (shortened for the table; report.json has it whole)."""
    status = row.get("status", "")
    note = str(row.get("reason") or row.get("error") or row.get("note") or "")
    if len(note) > limit:
        note = note[:limit] + " …"
    return f"{status}: {note}" if note else status


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return lines


def ok_rows(entry) -> int:
    return sum(1 for r in entry["rows"] if r.get("status") == "ok")


def render_markdown(data: dict) -> str:
    env = next(s for s in data["stages"] if s["name"] == "environment")
    device = next((r for r in env["rows"] if r["key"] == "device"), {})
    dry = " (dry run: CPU, tiny shapes — no figure here is a GPU measurement)" if data["dry_run"] else ""
    lines = [f"# GPU report{dry}",
             "",
             f"- command: `{data['command']}`",
             f"- device: {device.get('name', 'not measured')}; commit {data['host']['commit']}; "
             f"host {data['host']['hostname']} ({data['host']['cpus']} CPUs, load {data['host']['loadavg_1m']})",
             f"- started {data['started_at']}, updated {data['updated_at']}, {data['elapsed_s']} s of the "
             f"{data['budget_s']} s budget; state: **{data['state']}**"
             + (f" (by {data['interrupted_by']})" if data["interrupted_by"] else ""),
             ""]
    if data["state"] == "running":
        lines += ["> This report is being written. If no process is writing it any more, the run was cut short "
                  "(e.g. SIGKILL) during the stage marked running: its rows are what it had measured.", ""]
    lines += ["## Stages", ""]
    lines += _table(["stage", "status", "time box s", "elapsed s", "rows ok / all", "summary / reason / error"],
                    [[f"{i + 1}. {s['name']}", f"**{s['status']}**", _fmt(s["box_s"]), _fmt(s["elapsed_s"]),
                      f"{ok_rows(s)} / {len(s['rows'])}", s["summary"] or s["reason"] or s["error"] or ""]
                     for i, s in enumerate(data["stages"])])
    renderers = {"environment": _md_environment, "correctness": _md_correctness, "microbench": _md_microbench,
                 "e2e": _md_e2e, "codegen": _md_codegen}
    for i, s in enumerate(data["stages"]):
        lines += ["", f"## Stage {i + 1}: {s['name']} — {s['title']}", "",
                  f"Status: **{s['status']}**" + (f" — {s['reason']}" if s["reason"] else "")]
        if s["error"]:
            lines += ["", f"Error: `{s['error']}`"]
        if s["rows"]:
            lines += [""] + renderers[s["name"]](s, data)
    return "\n".join(lines) + "\n"


def _md_environment(s, data):
    out = []
    for r in s["rows"]:
        fields = {k: v for k, v in r.items() if k not in ("key", "status")}
        out.append(f"- **{r['key']}** ({r['status']}): "
                   + "; ".join(f"{k} {_fmt(v, '.4g')}" for k, v in fields.items() if v is not None))
    return out


def _md_correctness(s, data):
    out = []
    for r in s["rows"]:
        out.append(f"- `{r.get('command')}` → exit {r.get('exit_code')}: {r.get('counts')}")
        if r.get("first_failure"):
            out += ["", "First failure:", "", "```", str(r["first_failure"])[:3000], "```"]
    return out


def _md_microbench(s, data):
    rows = []
    for r in s["rows"]:
        ms, p20, p80 = r.get("ms"), r.get("ms_p20"), r.get("ms_p80")
        timing = _fmt(ms, ".4g") + (f" ({p20:.4g}–{p80:.4g})" if p20 is not None and p80 is not None else "")
        rows.append([r.get("kernel") or r["key"], r.get("case"), r.get("variant"), r.get("provider"), timing,
                     _fmt(r.get("tflops"), ".3g"), _fmt(r.get("pct_peak"), ".3g"),
                     _fmt(r.get("speedup_vs_eager"), ".2f"), _fmt(r.get("peak_mem_mb"), ".0f"),
                     _status_text(r)])
    peak = (next(x for x in data["stages"] if x["name"] == "environment").get("info") or {}).get("peak_tflops")
    head = [f"Timer: {s['info'].get('timer', '—')}. % of peak: of the measured bf16 matmul peak "
            f"({_fmt(peak, '.1f')} TFLOP/s, stage 1). × eager: eager's median / this median.", ""]
    return head + _table(["kernel", "case", "variant", "provider", "ms median (p20–p80)", "TFLOP/s", "% peak",
                          "× eager", "peak MB", "status"], rows)


def _md_e2e(s, data):
    rows = []
    for r in s["rows"]:
        proj = r.get("projection_8gpu") or {}
        rows.append([r["key"], _fmt(r.get("impls")), _fmt(r.get("micro_batch")), _fmt(r.get("accum_steps")),
                     _fmt(r.get("warmup_s"), ".1f"), _fmt(r.get("steps_timed")), _fmt(r.get("ms_per_step"), ".1f"),
                     _fmt(r.get("tokens_per_s"), ".0f"), _fmt(r.get("peak_mem_gb"), ".1f"),
                     _fmt(proj.get("ms_per_step"), ".1f"), _fmt(proj.get("full_run_s"), ".0f"), _status_text(r)])
    out = _table(["preset", "impls", "micro-batch", "accum", "warm-up s", "steps", "ms/step (1 GPU)", "tokens/s",
                  "peak GB", "projected ms/step on 8 GPUs", "projected full run s", "status"], rows)
    out += ["", "Projection: the 1-GPU step (all micro-batches of the global batch accumulated) divided by 8, times "
            "the preset's max_steps; it assumes perfect scaling (no communication) and is not a measurement.", "",
            f"Published track-3 step times ({TRACK3_SOURCE}; train_time / steps of each log, 8 GPUs):", ""]
    out += _table(["result", "steps", "logs", "ms/step mean (min–max)", "GPU (log header)", "first log"],
                  [[p["result"], p["steps"], p["logs"],
                    f"{p['ms_per_step_mean']:.1f} ({p['ms_per_step_min']:.1f}–{p['ms_per_step_max']:.1f})",
                    ", ".join(p["gpus"]), p["files"][0]] for p in s["info"].get("published", published_track3())])
    return out


def _md_codegen(s, data):
    rows = []
    for r in s["rows"]:
        rows.append([r.get("kernel"), r.get("config"), r.get("num_warps"), r.get("num_stages"),
                     _fmt(r.get("aot_registers")), _fmt(r.get("aot_spill_bytes")), _fmt(r.get("aot_shared_bytes")),
                     _fmt(r.get("jit_registers")), _fmt(r.get("jit_spill_bytes")), _fmt(r.get("agree")),
                     _status_text(r)])
    return ["AOT: bench.codegen's sm_90 compile at the 124M shape. JIT: the kernels stage 3 launched "
            "(CompiledKernel.n_regs; spill bytes = n_spills × 4).", ""] + _table(
        ["kernel", "config", "warps", "stages", "AOT regs", "AOT spill B", "AOT smem B", "JIT regs", "JIT spill B",
         "agree", "status"], rows)
