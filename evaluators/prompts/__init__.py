"""Versioned judging prompts for evaluation jobs (YAML; shipped as package data)."""
