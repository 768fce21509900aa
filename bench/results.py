"""The results.json files bench.speedrun writes, read back to judge saved runs again (`--from-results`, and
bench.leaderboard): one file or several of one preset, and the same runs judged on a smaller val set."""

import statistics

from speedrun import cli


def load_one(path) -> dict:
    """A results.json, also one written before the rule was recorded (target only, curves as [step, loss])."""
    results = cli.read_json(path, what="--from-results", hint="pass a results.json this command wrote")
    if not isinstance(results, dict) or not results.get("runs"):
        raise cli.UserError(f"{path} holds no runs to judge")
    results.setdefault("rule_params", {"target": results.get("target")})
    results.setdefault("commit", "not recorded")
    results.setdefault("machine", {"cpu": "not recorded", "cores": "?", "cpu_capability": "?", "threads": "?",
                                   "loadavg_1m": float("nan")})
    for runs in results["runs"].values():
        for run in runs:
            run["curve"] = [r if isinstance(r, dict) else {"step": r[0], "val_loss": r[1]} for r in run["curve"]]
    return results


def _command_optimizers(command) -> list[str]:
    """The --optimizers of a recorded bench.speedrun command line ([] when it names none)."""
    command = list(command or [])
    for i, arg in enumerate(command):
        if arg == "--optimizers" and i + 1 < len(command):
            return command[i + 1].split(",")
        if arg.startswith("--optimizers="):
            return arg.split("=", 1)[1].split(",")
    return []


def _sources(results: dict, path: str) -> list[dict]:
    """Where a file's runs come from: the file itself, or, for a file that judged several files together, each of
    those (its "sources"), with the optimizers each trained."""
    nested = results.get("sources")
    if not nested:
        return [{k: results.get(k) for k in ("command", "commit", "machine")}
                | {"file": path, "rule_params": dict(results["rule_params"]), "optimizers": list(results["runs"])}]
    out = []
    for s in nested:
        opts = s.get("optimizers") or [o for o in _command_optimizers(s.get("command")) if o in results["runs"]]
        out.append(s | {"file": s.get("file", path), "via": path, "rule_params": dict(results["rule_params"]),
                        "optimizers": opts})
    return out


def load_results(paths: list[str]) -> dict:
    """The runs of one or more results.json files of one preset, judged together: each optimizer must come from
    one file (its seeds ran under one command). The first file's rule and machine are kept; every file's
    command, commit, machine, recorded rule and optimizers are listed under "sources" (a file that was itself a
    judgement of several files contributes their sources)."""
    merged = None
    for path in paths:
        results = load_one(path)
        sources = _sources(results, path)
        if merged is None:
            merged = results | {"sources": sources}
            continue
        if results.get("preset") != merged.get("preset"):
            raise cli.UserError(f"{path} holds preset {results.get('preset')!r} runs, "
                                f"{paths[0]} {merged.get('preset')!r}: judge one preset at a time")
        twice = sorted(set(results["runs"]) & set(merged["runs"]))
        if twice:
            raise cli.UserError(f"{', '.join(twice)} has runs in {path} and in an earlier file; "
                                "pass each optimizer's runs once")
        merged["runs"].update(results["runs"])
        merged.setdefault("tuning", {}).update(results.get("tuning", {}))
        merged["sources"] += sources
    commits = dict.fromkeys(s["commit"] for s in merged["sources"])
    merged["commit"] = ", ".join(str(c) for c in commits)
    return merged


def use_val_slices(results: dict, k: int) -> dict:
    """Judge on the mean of the first k val slices each validation logged (runs trained with --val_slice_tokens)
    instead of the val loss of their whole val set: the same runs on a smaller val set (k slices of S tokens are
    the first k·S val tokens, so k = 1 with 8192-token slices is an 8192-token val set exactly)."""
    for opt, runs in results["runs"].items():
        for run in runs:
            for record in run["curve"]:
                slices = record.get("val_slices")
                if not slices or len(slices) < k:
                    raise cli.UserError(f"{opt} seed {run.get('seed')}: its step-{record['step']} validation logged "
                                        f"{len(slices or [])} val slices, --val-slices {k} needs {k} (train with "
                                        "--val_slice_tokens)")
                record["val_loss_whole"] = record.get("val_loss_whole", record["val_loss"])
                record["val_loss"] = statistics.fmean(slices[:k])
            run["final_val_loss"] = run["curve"][-1]["val_loss"]
    results["val_slices"] = k
    return results
