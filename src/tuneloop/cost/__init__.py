"""What a job costs before it runs and while it runs: hardware rows, sizing, estimates and the cost/time guards."""
