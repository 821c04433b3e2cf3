"""The promotion gate: whether a candidate beats the incumbent on the same held-out items (a pure decision)."""
