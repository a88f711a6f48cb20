"""One process of tests/integration/test_decode_multihost.py: decodes with parameters sharded over a mesh that spans
every process, and writes what it got as JSON.

python -m tests.helpers.multihost_decode_worker PROCESS_ID NUM_PROCESSES PORT OUT_JSON (from the repository root)"""

import json
import sys

import jax
import numpy as np
from flax import nnx


def main(pid: int, n: int, port: int, out: str) -> None:
    if n > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=pid)
    from ftcot_jax import decode, models
    from ftcot_jax.models import sharding
    from tests.helpers.models import LETTER_GPT2, TINY_T5, padded_batch
    from tests.helpers.toy_tokenizers import LetterTokenizer

    results = {}
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    for name, cfg in (("gpt2", LETTER_GPT2), ("t5", TINY_T5)):
        model = models.from_config(cfg, seed=0)
        graphdef, state = nnx.split(model)
        shardings = sharding.logical_to_sharding(state, mesh)
        # every process holds the same host weights and places its part of each global array
        state = jax.tree.map(
            lambda a, s: jax.make_array_from_callback(a.shape, s, lambda i, a=a: np.asarray(a)[i]), state, shardings
        )
        model = nnx.merge(graphdef, state)
        ids, mask = padded_batch(cfg["vocab_size"], lengths=(5, 3, 2, 4), seed=3)
        tok = LetterTokenizer()
        with jax.set_mesh(mesh):
            tokens, done = decode.generate_ids(model, ids, mask, max_new_tokens=6, eos_token_id=[2])
            gens = decode.generate(
                model,
                tok,
                ["hello world", "abc", "the quick fox"],
                max_new_tokens=[20, 5, 12],
                batch_size=4,
                stop=[["dd"], [], ["zz"]],
            )
            sampled = decode.generate(
                model, tok, ["abc", "hello"], max_new_tokens=8, batch_size=2, temperature=1.0, rng=jax.random.key(7)
            )
        results[name] = {
            "tokens": tokens.tolist(),
            "done": done.tolist(),
            "gens": [[g.text, g.token_ids, g.finish_reason] for g in gens],
            "sampled": [[g.text, g.token_ids, g.finish_reason] for g in sampled],
        }
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
