"""The results.json files bench.speedrun writes, read back for `--from-results` (re-judging saved runs)."""

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


def load_results(paths: list[str]) -> dict:
    """The runs of one or more results.json files of one preset, judged together: each optimizer must come from
    one file (its seeds ran under one command). The first file's rule and machine are kept; every file's
    command, commit and machine are listed under "sources"."""
    merged = None
    for path in paths:
        results = load_one(path)
        source = {k: results.get(k) for k in ("command", "commit", "machine")} | {"file": path}
        if merged is None:
            merged = results | {"sources": [source]}
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
        merged["sources"].append(source)
    commits = dict.fromkeys(s["commit"] for s in merged["sources"])
    merged["commit"] = ", ".join(commits)
    return merged
