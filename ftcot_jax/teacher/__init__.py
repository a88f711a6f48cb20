"""Teacher side: Zero-shot-CoT rationales from a teacher into the teacher cache.

backend.py (the Backend Protocol, TeachItem, TeachReport) · run.py (select questions, make_backend, teach) · stage.py
(the one entry of a run's teach stage)
openai_backend.py (any OpenAI-compatible server) · batch.py (the OpenAI Batch API) · pricing.py (cost estimate)
reference.py (the offline program teacher, no LLM) with its rationale writers: equations.py (the equation solver)
· equation_files.py (the raw equation files) · simulators.py (coin flip, last letter, tracking) · variants.py
(other styles of a rationale) · rationale.py (what they share)
records.py (the record and its tf.train.Example codec) · scrub.py (keys kept out of the cache) · cache.py (the
cache directory) · segments.py (its records on an object store) · cache_query.py (find, select, describe, verify
caches) · compat.py (the reference's CompletionDataset JSON import/export).
"""
