"""The MLOps loop: registry + lineage, feedback, datasets, tuning jobs, reward model, deploy."""
