"""Decode a model written in plain JAX: compiled once, as a whole-sequence model and as a cached step.

Run: python examples/jax_decode.py   (a few seconds on a CPU)

The model embeds characters, mixes each position with the positions before it by an exponential
moving average (causal, like attention with a fixed decay), and reads out logits with a 2-layer
MLP; its weights are random (seeded), so the text is noise, but the plumbing is the real one.
Written over a whole sequence it is ``model(ids (B, t)) -> (B, t, V)``; written as a step it keeps
the running average as its state, the way a transformer keeps a KV cache, and costs O(1) per token.
"""

import jax
import jax.numpy as jnp
import numpy as np

import agnostic_sampling as smp

ALPHABET = "abcdefghijklmnopqrstuvwxyz ."
V, D, DECAY = len(ALPHABET), 32, 0.7
EOS = ALPHABET.index(".")
embed_key, hidden_key, out_key = jax.random.split(jax.random.key(0), 3)
WEIGHTS = {
    "embed": jax.random.normal(embed_key, (V, D)),
    "hidden": jax.random.normal(hidden_key, (D, D)) / D**0.5,
    "out": 3.0 * jax.random.normal(out_key, (D, V)) / D**0.5,
}
traces = []


def readout(mixed: jax.Array) -> jax.Array:
    return jnp.tanh(mixed @ WEIGHTS["hidden"]) @ WEIGHTS["out"]


def model(ids: jax.Array) -> jax.Array:
    """(B, t) -> (B, t, V). Causal: position i only mixes positions <= i."""
    traces.append(ids.shape)  # Python side effects run only while JAX traces
    age = jnp.arange(ids.shape[1])[:, None] - jnp.arange(ids.shape[1])[None, :]
    decay = jnp.where(age >= 0, DECAY ** jnp.maximum(age, 0), 0.0)
    return readout(jnp.einsum("ts,bsd->btd", decay, WEIGHTS["embed"][ids]))


def step(state: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(state (B, D), ids (B,)) -> (logits (B, V), state): one position for every row."""
    mixed = DECAY * state + WEIGHTS["embed"][ids]
    return readout(mixed), mixed


def encode(prompts: list[str]) -> tuple[jax.Array, jax.Array]:
    """Right-padded ids and per-row lengths."""
    width = max(map(len, prompts))
    rows = [[ALPHABET.index(c) for c in p] + [0] * (width - len(p)) for p in prompts]
    return jnp.array(rows), jnp.array([len(p) for p in prompts])


def show(result: smp.GenerateResult, lengths: jax.Array) -> list[str]:
    ends = np.asarray(lengths + result.num_generated)
    rows = np.asarray(result.ids)
    return ["".join(ALPHABET[i] for i in row[:end]) for row, end in zip(rows, ends, strict=True)]


# One strategy per row, in one batch: the identity values (top_k=0, top_p=1, min_p=0) turn a step
# off for a row, temperature=0 makes it greedy.
names = ["greedy", "temperature 0.7", "top-k 5", "top-p 0.8", "min-p 0.1"]
params = smp.SamplingParams(temperature=jnp.array([0.0, 0.7, 1.0, 1.0, 1.0]),
                            top_k=jnp.array([0, 0, 5, 0, 0]),
                            top_p=jnp.array([1.0, 1.0, 1.0, 0.8, 1.0]),
                            min_p=jnp.array([0.0, 0.0, 0.0, 0.0, 0.1]))
prompt, lengths = encode(["the ", "a cat ", "we ", "x", "so it "])
decode = dict(prompt_lengths=lengths, max_new_tokens=24, eos_id=EOS, params=params)

result = smp.generate(jax.random.key(1), model, prompt, **decode)
for name, text in zip(names, show(result, lengths), strict=True):
    print(f"{name:>16}: {text!r}")

# Other values, another key, another prompt of the same shape: the compiled loop is reused.
other = smp.SamplingParams(temperature=jnp.full(5, 1.3), top_k=jnp.full(5, 8), top_p=jnp.full(5, 0.95),
                           min_p=jnp.full(5, 0.05))
prompt2, lengths2 = encode(["hello ", "b", "cd", "efg", "hij"])
again = smp.generate(jax.random.key(2), model, prompt2, **dict(decode, prompt_lengths=lengths2, params=other))
print(f"{'hotter':>16}: {show(again, lengths2)}")
print(f"model traced {len(traces)} time(s) for 2 calls; loop iterations: {int(result.model_calls)}, "
      f"{int(again.model_calls)}")

# The cached form: the prompt is fed one position per call, then the samples; same key, same ids.
cached = smp.generate_with_state(jax.random.key(1), step, jnp.zeros((5, D)), prompt, **decode)
print(f"{'cached step':>16}: same ids as the whole-sequence model: "
      f"{bool(jnp.all(cached.ids == result.ids))}; greedy row: {show(cached, lengths)[0]!r}")
