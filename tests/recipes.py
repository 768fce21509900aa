"""Registering an optimizer recipe for one test (speedrun.config resolves recipes through optim.registry)."""

from optim import registry


def register_recipe(monkeypatch, name: str, fn):
    """Make `name` a recipe for the duration of the test."""
    registry.discover()
    fn.__doc__ = fn.__doc__ or f"A test recipe. Source: our own ({name})."
    entry = registry.Entry("recipe", name, None, fn, __file__)
    monkeypatch.setitem(registry._ENTRIES["recipe"], name, entry)
