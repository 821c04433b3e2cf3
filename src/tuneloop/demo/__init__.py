"""The demo task (support-intent routing): synthetic data for `tuneloop demo` and the tests."""
