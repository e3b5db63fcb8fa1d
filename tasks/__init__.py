"""Prefect tasks, the DVC stage helpers and the MLflow tracker of switch-kd (the orchestration layer)."""
