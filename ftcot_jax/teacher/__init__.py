"""Teacher side: backends that write Zero-shot-CoT rationales (backend.py, run.py, reference.py), the
TFRecord cache they write to (cache.py) and CompletionDataset JSON import/export (compat.py)."""
