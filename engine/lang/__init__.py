"""The rule language: a Starlark-like subset of Python, checked statically and run by asteval."""
