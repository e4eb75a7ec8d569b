"""Stages of the IU X-ray report + image fusion pipeline (one module per DVC stage)."""
