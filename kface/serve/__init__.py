"""The web service: upload handling, per-worker pipelines, galleries, guards and the app."""
