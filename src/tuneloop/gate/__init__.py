"""The promotion gate: whether a candidate beats the incumbent on the same held-out items (a pure decision,
decide.py), what it is compared against (incumbent.py), the judge's rubric checks (rubrics.py), and the
decision applied to the registry (apply.py)."""
