"""Prefect flows of switch-kd: the pipeline, the ablation grid, and the serve entry point."""
