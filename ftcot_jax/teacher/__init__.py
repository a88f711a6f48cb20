"""Teacher side: Zero-shot-CoT rationales from a teacher into the teacher cache.

backend.py (the Backend Protocol, TeachItem, TeachReport) · run.py (select questions, make_backend, teach)
openai_backend.py (any OpenAI-compatible server) · batch.py (the OpenAI Batch API) · reference.py (offline,
no LLM) · pricing.py (cost estimate) · cache.py (the TFRecord cache) · cache_query.py (select, describe,
verify caches) · compat.py (the reference's CompletionDataset JSON import/export).
"""
