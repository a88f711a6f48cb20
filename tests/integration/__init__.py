"""Subprocess, multi-host, kill/resume, pipeline, compare and benchmark tests; all marked slow (conftest.py)."""
