"""multiwatch tests (a package, so `tests.support` imports from the repo root)."""
