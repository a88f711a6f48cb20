"""`ftcot serve`: an OpenAI-compatible HTTP server for a student (docs/serve.md).

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions (both with
token streaming), plus GET /health, GET /stats (batching and HTTP counters) and GET /openapi.json (the API
schema). FastAPI on uvicorn.

- `serve.errors`: `APIError` (OpenAI's error shape) and pydantic's validation errors as OpenAI's.
- `serve.schema`: request validation (pydantic models of OpenAI bodies -> `Request`).
- `serve.openapi`: the published OpenAPI schema (the request models tightened to this server's limits).
- `serve.responses`: the response, stream-chunk, model-card and error bodies (pydantic).
- `serve.chat`: the chat template.
- `serve.engine`: the batching worker over `decode.generate`, streaming each row's text as it is decoded.
- `serve.openai`: the OpenAI `App` (auth, model cards, responses, stream chunks, a trained student's format).
- `serve.routes`: the FastAPI routes and the ASGI guard (errors in OpenAI's shape, responses counted).
- `serve.protocol`: uvicorn's h11 protocol with a read timeout and a cap on open connections.
- `serve.http_stats`: the HTTP counters of /stats.
- `serve.server`: uvicorn and its socket (`make_server`, `Server.start`/`stop`) and `serve` (load a student, run).
The configuration is `ftcot_jax.config.ServeConfig`.
"""
