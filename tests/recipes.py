"""Registering optimizer recipes in tests (configs.resolve reads optim.recipes.RECIPES)."""

import importlib
import sys
import types


def register_recipe(monkeypatch, name: str, fn):
    """Make `name` a recipe for the duration of the test (in optim.recipes.RECIPES; a stand-in module if the
    optim package has none yet)."""
    try:
        module = importlib.import_module("optim.recipes")
    except ModuleNotFoundError:
        module = types.ModuleType("optim.recipes")
        module.RECIPES = {}
        monkeypatch.setitem(sys.modules, "optim.recipes", module)
    monkeypatch.setitem(module.RECIPES, name, fn)


def stand_in_track3_recipes(monkeypatch):
    """The track-3 recipes' step counts and Muon hyperparameters on today's OptimConfig fields, registered only
    where optim/recipes.py does not define them yet."""
    import configs

    stand_ins = {
        "track3-muon": lambda: {"optim.name": "muon", "optim.lr": 0.025, "optim.weight_decay": 0.05,
                                "max_steps": 3250, "warmup_steps": 0},
        "track3-normuon": lambda: {"optim.name": "normuon", "optim.lr": 0.035, "optim.weight_decay": 0.025,
                                   "max_steps": 3250, "schedule_steps": 3300, "warmup_steps": 0},
        "track3-adam": lambda: {"optim.name": "adamw", "optim.lr": 0.0015, "optim.weight_decay": 0.1,
                                "max_steps": 5625, "warmup_steps": 250},
    }
    for name, fn in stand_ins.items():
        if name not in configs.recipes():
            register_recipe(monkeypatch, name, fn)
