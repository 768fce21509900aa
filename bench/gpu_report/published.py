"""Published track-3 step times, for the e2e stage's comparison (data only; imports nothing)."""

# ---------------------------------------------------------------------------------------------------
# Published track-3 step times (KellerJordan/modded-nanogpt @ f411b3d3, records/track_3_optimization/results/).
# Each log's last line "step:N/N val_loss:… train_time:Ts" gives the run's training time with the clock paused
# during validation; ms/step = 1000·T/N (the first interval includes torch.compile). GPU and torch from each log's
# "Running PyTorch … on <GPU> with world_size 8" header line.
# ---------------------------------------------------------------------------------------------------

_T3 = "records/track_3_optimization/results/"
_H100 = "NVIDIA H100 80GB HBM3"
TRACK3_PUBLISHED = [
    # result #36: tuned baseline, Muon + aux AdamW, 3250 steps (the track's baseline; n=10)
    *({"result": "#36 tuned baseline (Muon + aux AdamW)", "file": _T3 + "20260610_tuned_baseline_3250/" + name,
       "gpu": _H100, "world_size": 8, "torch": "2.10.0+cu128", "steps": 3250, "train_time_s": seconds}
      for name, seconds in [("263ea3c4-2b13-4adf-8a71-0410386b20e1.txt", 503.169),
                            ("556e61b9-efe1-44af-a16c-58e4a3371aea.txt", 503.323),
                            ("55cb8434-a6e6-4056-aeca-e105682c8ff7.txt", 503.556),
                            ("629ead24-9ba5-4853-b60f-2fc4344fe066.txt", 503.104),
                            ("78db13a0-5ec8-46bd-871c-8a19e9f61015.txt", 503.854),
                            ("a7c375e8-c0f3-404b-8522-7b1fd91c7236.txt", 503.825),
                            ("b199590f-f4a3-47a6-bc5a-aeef94b92000.txt", 504.208),
                            ("c67512ee-2070-4733-9769-573116e14ad5.txt", 504.109),
                            ("f0bcca7d-a146-4cf8-a7c3-ba36733928f4.txt", 503.021),
                            ("fc5b73a0-d67d-4b00-a5dc-934fa01c1505.txt", 503.059)]),
    # result #10: NorMuon, horizon 3300 steps (read at 3250); two logs, one on each GPU model
    {"result": "#10 NorMuon", "file": _T3 + "20260503_normuon/08ffadff-3576-496b-9795-2dc5cf8f4f46.txt",
     "gpu": _H100, "world_size": 8, "torch": "2.11.0+cu128", "steps": 3300, "train_time_s": 485.043},
    {"result": "#10 NorMuon", "file": _T3 + "20260503_normuon/e0d0185f-ccb8-426d-8265-a4e762ec69f6.txt",
     "gpu": "NVIDIA H200", "world_size": 8, "torch": "2.10.0+cu128", "steps": 3300, "train_time_s": 475.241},
    # result #2: AdamW, 5625 steps; its header line names no GPU
    {"result": "#2 AdamW", "file": _T3 + "a63a68d1-24aa-4a22-af9a-224e43209ea4.txt",
     "gpu": None, "world_size": None, "torch": "2.10.0+cu128", "steps": 5625, "train_time_s": 833.211},
]
TRACK3_SOURCE = "KellerJordan/modded-nanogpt @ f411b3d3"


def published_track3() -> list[dict]:
    """One summary per published result: mean/min/max ms per step over its logs, the GPUs and files."""
    out = {}
    for log in TRACK3_PUBLISHED:
        ms = 1000.0 * log["train_time_s"] / log["steps"]
        entry = out.setdefault(log["result"], {"result": log["result"], "steps": log["steps"], "ms": [], "gpus": set(),
                                               "files": []})
        entry["ms"].append(ms)
        entry["gpus"].add(log["gpu"] or "not named in the log header")
        entry["files"].append(log["file"])
    return [{"result": e["result"], "steps": e["steps"], "logs": len(e["ms"]),
             "ms_per_step_mean": sum(e["ms"]) / len(e["ms"]), "ms_per_step_min": min(e["ms"]),
             "ms_per_step_max": max(e["ms"]), "gpus": sorted(e["gpus"]), "files": e["files"],
             "source": TRACK3_SOURCE} for e in out.values()]
