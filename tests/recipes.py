"""Registering an optimizer recipe for one test (configs.resolve reads optim.recipes.RECIPES)."""

from optim.recipes import RECIPES


def register_recipe(monkeypatch, name: str, fn):
    """Make `name` a recipe for the duration of the test."""
    monkeypatch.setitem(RECIPES, name, fn)
