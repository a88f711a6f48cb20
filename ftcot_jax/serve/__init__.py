"""`ftcot serve`: an OpenAI-compatible HTTP server for a student checkpoint (docs/serve.md).

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions, plus
GET /health and GET /stats (batching counters). Standard library only.

- `serve.schema`: request validation (OpenAI bodies -> `Request`) and `APIError`.
- `serve.chat`: the chat template.
- `serve.engine`: the batching worker over `decode.generate`.
- `serve.openai`: the OpenAI `App` (auth, model cards, responses, stream events).
- `serve.http`: the request handler, `make_server`/`shutdown_server` and `serve` (load a checkpoint, run).
The configuration is `ftcot_jax.config.ServeConfig`.
"""
