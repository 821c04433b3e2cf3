"""The entry layer: the `tuneloop` command (main.py), its management surface (manage.py) and export (export.py)."""
