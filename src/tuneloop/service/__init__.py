"""The fine-tuning service's core: files, jobs, models (no Prefect here; the entry layer drives Prefect)."""
