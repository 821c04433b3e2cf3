"""What every layer leans on: atomic files, crash points, safety checks, the HTTP retry policy, Prometheus metrics."""
