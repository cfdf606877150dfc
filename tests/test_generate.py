"""The decode loops (SPEC section 5) on NumPy and JAX, with tiny deterministic models."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling._dispatch import get_backend

V = 8
EOS, PAD = 7, -1
# A bigram table with planted greedy chains 0 -> 1 -> 2 -> 3 -> 7 (EOS) and 4 -> 5 -> 6 -> 4 (a
# cycle that never ends), every other logit far below.
CHAIN = {0: 1, 1: 2, 2: 3, 3: EOS, 4: 5, 5: 6, 6: 4, EOS: 0}
GREEDY_TABLE = np.full((V, V), -4.0, np.float32)
for _token, _successor in CHAIN.items():
    GREEDY_TABLE[_token, _successor] = 4.0
# A bigram table for sampling: every row a different, spread-out distribution.
RANDOM_TABLE = np.random.default_rng(1234).normal(0.0, 1.5, (V, V)).astype(np.float32)


def chain(start: int, steps: int) -> list[int]:
    out = [start]
    for _ in range(steps):
        out.append(CHAIN[out[-1]])
    return out[1:]


class Decoder:
    """How a test talks to one backend: arrays and keys in, NumPy results out."""

    def __init__(self, name: str):
        self.name = name
        self.xp = np if name == "numpy" else __import__("jax.numpy", fromlist=["numpy"])
        self.greedy_model = self.bigram(GREEDY_TABLE)
        self.random_model = self.bigram(RANDOM_TABLE)

    def array(self, x: Any, dtype: Any = None) -> Any:
        return self.xp.asarray(np.asarray(x, dtype))

    def key(self, seed: int) -> Any:
        if self.name == "numpy":
            return np.random.default_rng(seed)
        import jax

        return jax.random.key(seed)

    def bigram(self, table: np.ndarray) -> Any:
        table = self.array(table)
        return lambda ids: table[ids]

    def run(self, key: Any, model: Any, prompt: Any, **kw: Any) -> smp.GenerateResult:
        return self.numpy(smp.generate(key, model, self.array(prompt), **kw))

    def run_with_state(self, key: Any, step: Any, state: Any, prompt: Any, **kw: Any) -> smp.GenerateResult:
        return self.numpy(smp.generate_with_state(key, step, state, self.array(prompt), **kw))

    @staticmethod
    def numpy(result: smp.GenerateResult) -> smp.GenerateResult:
        logprobs = None if result.logprobs is None else np.asarray(result.logprobs)
        return result._replace(ids=np.asarray(result.ids), num_generated=np.asarray(result.num_generated),
                               logprobs=logprobs, model_calls=int(result.model_calls))


def _jax_backend_available() -> bool:
    try:
        get_backend("jax")
    except ImportError:
        return False
    return True


@functools.cache
def _decoder(name: str) -> Decoder:
    # one instance per backend, so that its model objects (static arguments of the compiled JAX
    # loop) are shared and tests of the same shapes reuse one compilation
    return Decoder(name)


@pytest.fixture(params=["numpy", "jax"])
def dec(request: pytest.FixtureRequest) -> Decoder:
    if request.param == "jax" and not _jax_backend_available():
        pytest.skip("the JAX backend of sample is not available")
    return _decoder(request.param)


@pytest.fixture
def jax_dec() -> Decoder:
    if not _jax_backend_available():
        pytest.skip("the JAX backend of sample is not available")
    return _decoder("jax")


# --------------------------------------------------------------------------------------------
# Greedy chains, EOS, padding, early exit


def test_greedy_chains_rows_end_at_different_steps(dec):
    # right-padded prompts of lengths 3, 1, 2; row 1 reaches EOS first, row 2 never does
    prompt = [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    out = dec.run(0, dec.greedy_model, prompt, prompt_lengths=[3, 1, 2], max_new_tokens=5,
                  eos_id=EOS, pad_id=PAD, temperature=0.0)
    assert out.ids.tolist() == [
        [0, 1, 2, 3, EOS, PAD, PAD, PAD],
        [3, EOS, PAD, PAD, PAD, PAD, PAD, PAD],
        [4, 5, 6, 4, 5, 6, 4, PAD],
    ]
    assert out.num_generated.tolist() == [2, 1, 5]
    assert out.ids.shape == (3, 3 + 5)
    assert out.ids.dtype == (np.int64 if dec.name == "numpy" else np.int32)


def test_without_eos_every_row_generates_max_new_tokens(dec):
    out = dec.run(0, dec.greedy_model, [[0], [4]], max_new_tokens=6, temperature=0.0, pad_id=PAD)
    assert out.ids[:, 1:].tolist() == [chain(0, 6), chain(4, 6)]
    assert out.num_generated.tolist() == [6, 6]


def test_top_k_one_and_temperature_zero_rows_follow_the_chain(dec, seed):
    # per-row parameters: rows 0 and 1 are greedy by two spellings, row 2 samples
    out = dec.run(dec.key(seed), dec.greedy_model, [[0], [4], [4]], max_new_tokens=4, pad_id=PAD,
                  temperature=np.array([0.0, 1.0, 1.0]), top_k=np.array([0, 1, 0]))
    assert out.ids[0, 1:].tolist() == chain(0, 4)
    assert out.ids[1, 1:].tolist() == chain(4, 4)


def test_early_exit_stops_calling_the_model(dec):
    calls = []
    table = dec.array(GREEDY_TABLE)

    def counting_model(ids: Any) -> Any:
        calls.append(ids.shape)
        return table[ids]

    # both rows reach EOS within three positions; the buffer has room for 50
    out = dec.run(0, counting_model, [[0], [2]], max_new_tokens=50, eos_id=EOS, temperature=0.0)
    assert out.num_generated.tolist() == [4, 2]
    assert out.model_calls == 4  # positions 0..3; the loop would otherwise run 50 times
    if dec.name == "numpy":
        assert len(calls) == 4
    else:
        assert len(calls) == 1  # traced once, run 4 times


def test_stops_at_eos_generated_but_not_at_eos_in_the_prompt(dec):
    out = dec.run(0, dec.greedy_model, [[EOS, 2]], max_new_tokens=4, eos_id=EOS, temperature=0.0)
    assert out.ids.tolist() == [[EOS, 2, 3, EOS, 0, 0]]
    assert out.num_generated.tolist() == [2]


# --------------------------------------------------------------------------------------------
# Context cropping


def sum_model_for(dec: Decoder, widths: list[int]) -> Any:
    """A causal model whose next token is the sum of the tokens it sees, mod V: any cropping
    error changes the ids."""
    xp = dec.xp

    def model(ids: Any) -> Any:
        widths.append(ids.shape[1])
        total = xp.cumsum(ids, axis=1) % V
        return xp.where(xp.arange(V) == total[..., None], 5.0, 0.0).astype(xp.float32)

    return model


def reference_sum_decode(prompt: list[int], context: int, steps: int) -> list[int]:
    seq = list(prompt)
    for _ in range(steps):
        seq.append(sum(seq[-context:]) % V)
    return seq


@pytest.mark.parametrize("context_size", [1, 3, 20])
def test_context_cropping(dec, context_size):
    widths: list[int] = []
    prompts = [[1, 2, 3, 4, 5], [6, 1, 0, 0, 0]]  # row 0 longer than the context when it is 3
    out = dec.run(0, sum_model_for(dec, widths), prompts, prompt_lengths=[5, 2], max_new_tokens=6,
                  context_size=context_size, temperature=0.0, pad_id=PAD)
    assert out.ids[0].tolist() == reference_sum_decode([1, 2, 3, 4, 5], context_size, 6)
    assert out.ids[1].tolist() == reference_sum_decode([6, 1], context_size, 6) + [PAD] * 3
    assert max(widths) <= context_size
    if dec.name == "numpy":  # the seed's growing window, cropped
        assert widths == [min(t + 1, context_size) for t in range(1, 10)]


# --------------------------------------------------------------------------------------------
# Keys and sampling


def test_same_key_same_ids_other_key_other_ids(dec):
    prompt = np.zeros((4, 2), np.int64)
    first = dec.run(dec.key(7), dec.random_model, prompt, max_new_tokens=12, top_k=5)
    again = dec.run(dec.key(7), dec.random_model, prompt, max_new_tokens=12, top_k=5)
    other = dec.run(dec.key(8), dec.random_model, prompt, max_new_tokens=12, top_k=5)
    assert first.ids.tolist() == again.ids.tolist()
    assert first.ids.tolist() != other.ids.tolist()
    # identical prompts still decode independently
    assert len({tuple(row) for row in first.ids.tolist()}) > 1


def test_int_seed_is_a_key(dec):
    a = dec.run(3, dec.random_model, [[1, 2]], max_new_tokens=5)
    b = dec.run(3, dec.random_model, [[1, 2]], max_new_tokens=5)
    assert a.ids.tolist() == b.ids.tolist()


def test_logprobs_are_under_the_processed_distribution(dec, seed):
    params = smp.SamplingParams(temperature=np.array([0.7, 1.3, 0.0]), top_k=np.array([4, 0, 0]),
                                top_p=np.array([1.0, 0.8, 1.0]))
    prompt = [[1, 2], [3, 0], [5, 0]]
    out = dec.run(dec.key(seed), dec.random_model, prompt, prompt_lengths=[2, 1, 1], max_new_tokens=5,
                  eos_id=0, return_logprobs=True, params=params)
    assert out.logprobs.shape == out.ids.shape
    lengths = [2, 1, 1]
    for row in range(3):
        start, n = lengths[row], int(out.num_generated[row])
        assert np.all(out.logprobs[row, :start] == 0) and np.all(out.logprobs[row, start + n:] == 0)
        for position in range(start, start + n):
            previous, token = out.ids[row, position - 1], out.ids[row, position]
            row_params = {f: getattr(params, f)[row] for f in ("temperature", "top_k", "top_p")}
            p = smp.probs(RANDOM_TABLE[previous], **row_params)
            assert out.logprobs[row, position] == pytest.approx(np.log(p[token]), abs=1e-5)
    assert np.all(out.logprobs[2] == 0)  # a greedy row: every token has probability 1


def test_first_token_distribution(dec, seed):
    stats = pytest.importorskip("agnostic_sampling.stats")
    pytest.importorskip("scipy")
    if not hasattr(stats, "assert_samples_match"):
        pytest.skip("stats.assert_samples_match is not written yet")
    # two prompts with their own parameters, each repeated: every row's first token is one draw
    n = 6000
    last = np.array([2, 5])
    temperature, top_k, top_p = np.array([0.8, 1.5]), np.array([5, 0]), np.array([1.0, 0.9])
    prompt = np.stack([np.full(n, 4), np.tile(last, n // 2)], axis=1)
    per_row = {name: np.tile(value, n // 2) for name, value in
               dict(temperature=temperature, top_k=top_k, top_p=top_p).items()}
    out = dec.run(dec.key(seed), dec.random_model, prompt, max_new_tokens=1, **per_row)
    draws = out.ids[:, 2].reshape(n // 2, 2)
    expected = stats.reference_probs(RANDOM_TABLE[last], temperature=temperature, top_k=top_k, top_p=top_p)
    stats.assert_samples_match(draws, expected, tv=0.08, seed=seed)


# --------------------------------------------------------------------------------------------
# The stateful form


def sum_step_for(dec: Decoder, table: np.ndarray) -> tuple[Any, Any, Any]:
    """The same history-dependent model twice: ``model`` over the whole sequence, and ``step`` with
    a running sum and a position counter as its state (a stand-in for a KV cache)."""
    xp = dec.xp
    weights = dec.array(table)

    def model(ids: Any) -> Any:
        return weights[xp.cumsum(ids, axis=1) % V]

    def step(state: dict, ids: Any) -> tuple[Any, dict]:
        running = state["sum"] + ids
        return weights[running % V], {"sum": running, "position": state["position"] + 1}

    return model, step, {"sum": dec.array(np.zeros(3), np.int32), "position": dec.array(0, np.int32)}


@pytest.mark.parametrize("lengths", [[3, 1, 2], [3, 3, 2]])
def test_stateful_form_gives_the_same_ids(dec, seed, lengths):
    model, step, state = sum_step_for(dec, RANDOM_TABLE)
    prompt = [[1, 2, 3], [4, 0, 0], [5, 6, 0]]
    kw = dict(prompt_lengths=lengths, max_new_tokens=6, eos_id=0, pad_id=PAD, return_logprobs=True,
              temperature=np.array([1.0, 0.5, 2.0]), top_k=np.array([0, 3, 0]))
    plain = dec.run(dec.key(seed), model, prompt, **kw)
    stateful = dec.run_with_state(dec.key(seed), step, state, prompt, **kw)
    assert stateful.ids.tolist() == plain.ids.tolist()
    assert stateful.num_generated.tolist() == plain.num_generated.tolist()
    np.testing.assert_allclose(stateful.logprobs, plain.logprobs, atol=1e-6)
    # the step consumed the prompt from position 0, one call per position
    assert stateful.model_calls == plain.model_calls + min(lengths) - 1
    assert int(stateful.state["position"]) == stateful.model_calls


def test_stateful_early_exit(dec):
    calls = []
    table = dec.array(GREEDY_TABLE)

    def step(state: Any, ids: Any) -> tuple[Any, Any]:
        calls.append(1)
        return table[ids], state

    out = dec.run_with_state(0, step, dec.array(0, np.int32), [[1, 0]], prompt_lengths=[1], max_new_tokens=30,
                             eos_id=EOS, temperature=0.0)
    assert out.ids[0, :4].tolist() == [1, 2, 3, EOS]
    assert out.model_calls == 3
    assert len(calls) == (3 if dec.name == "numpy" else 1)


# --------------------------------------------------------------------------------------------
# JAX: one compile


def test_jax_compiles_once_across_parameters_keys_and_prompts(jax_dec):
    import jax

    traces = []
    table = jax_dec.array(RANDOM_TABLE)

    def model(ids: Any) -> Any:
        traces.append(ids.shape)  # runs only while tracing
        return table[ids]

    calls = [
        dict(key=jax.random.key(0), prompt=[[1, 2], [3, 4]], temperature=0.7, top_k=3, lengths=[2, 2]),
        dict(key=jax.random.key(1), prompt=[[5, 0], [6, 7]], temperature=1, top_k=5, lengths=[1, 2]),
        dict(key=jax.random.key(2), prompt=[[0, 0], [1, 1]], temperature=np.array([0.0, 2.0]),
             top_k=np.array([0, 2]), lengths=[2, 1]),
        dict(key=9, prompt=[[2, 2], [2, 2]], temperature=0.3, top_k=1, lengths=[1, 1]),
    ]
    for call in calls:
        out = smp.generate(call["key"], model, jax_dec.array(call["prompt"]), prompt_lengths=call["lengths"],
                           max_new_tokens=5, eos_id=0, temperature=call["temperature"], top_k=call["top_k"])
        out.ids.block_until_ready()
    assert len(traces) == 1


def test_jax_generate_inside_user_jit_with_weights_as_argument(jax_dec, seed):
    import jax

    @jax.jit
    def decode(weights: Any, key: Any, prompt: Any) -> Any:
        return smp.generate(key, lambda ids: weights[ids], prompt, max_new_tokens=6, top_p=0.9).ids

    prompt = jax_dec.array([[1, 2], [3, 4]])
    direct = smp.generate(jax.random.key(seed), jax_dec.random_model, prompt, max_new_tokens=6, top_p=0.9)
    jitted = decode(jax_dec.array(RANDOM_TABLE), jax.random.key(seed), prompt)
    assert np.asarray(jitted).tolist() == np.asarray(direct.ids).tolist()


# --------------------------------------------------------------------------------------------
# Bad input


def test_empty_prompts_are_refused(dec):
    with pytest.raises(ValueError, match=r"prompt is empty \(shape \(2, 0\)\)"):
        dec.run(0, dec.greedy_model, np.zeros((2, 0), np.int64), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt is empty \(shape \(0, 3\)\)"):
        dec.run(0, dec.greedy_model, np.zeros((0, 3), np.int64), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt row 1 is empty \(prompt_lengths\[1\] = 0\)"):
        dec.run(0, dec.greedy_model, [[1, 2], [3, 4]], prompt_lengths=[2, 0], max_new_tokens=3)


def test_length_longer_than_the_prompt_is_refused(dec):
    with pytest.raises(ValueError, match=r"prompt_lengths\[1\] = 5 is longer than the prompt array's width"):
        dec.run(0, dec.greedy_model, [[1, 2, 3], [3, 4, 5]], prompt_lengths=[3, 5], max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt_lengths must have shape \(2,\)"):
        dec.run(0, dec.greedy_model, [[1, 2, 3], [3, 4, 5]], prompt_lengths=[3], max_new_tokens=3)


@pytest.mark.parametrize("bad", [0, -2])
def test_max_new_tokens_below_one_is_refused(dec, bad):
    with pytest.raises(ValueError, match=f"max_new_tokens must be >= 1, got {bad}"):
        dec.run(0, dec.greedy_model, [[1]], max_new_tokens=bad)
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        dec.run(0, dec.greedy_model, [[1]], max_new_tokens=2.0)


def test_prompt_shape_and_dtype_are_checked(dec):
    one_d = r"prompt must have shape \(batch, length\), got shape \(3,\); for one prompt use prompt\[None\]"
    with pytest.raises(ValueError, match=one_d):
        dec.run(0, dec.greedy_model, [1, 2, 3], max_new_tokens=2)
    with pytest.raises(TypeError, match="prompt must hold integer token ids, got dtype float32"):
        dec.run(0, dec.greedy_model, np.ones((1, 2), np.float32), max_new_tokens=2)
    with pytest.raises(ValueError, match="context_size must be >= 1, got 0"):
        dec.run(0, dec.greedy_model, [[1]], max_new_tokens=2, context_size=0)


def test_model_returning_the_wrong_shape_is_reported(dec):
    table = dec.array(GREEDY_TABLE)
    last_only = lambda ids: table[ids[:, -1]]  # noqa: E731  (B, V) instead of (B, t, V)
    width = 2 if dec.name == "numpy" else 5  # NumPy feeds the growing prefix, JAX the buffer
    expected = rf"\(B, t, V\) = \(1, {width}, V\) for ids of shape \(1, {width}\)"
    with pytest.raises(ValueError, match=rf"model returned logits of shape \(1, {V}\); expected {expected}"):
        dec.run(0, last_only, [[1, 2]], max_new_tokens=3)
    whole = lambda state, ids: (table[ids][:, None], state)  # noqa: E731  (B, 1, V) instead of (B, V)
    with pytest.raises(ValueError, match=rf"step returned logits of shape \(1, 1, {V}\); expected \(B, V\)"):
        dec.run_with_state(0, whole, dec.array(0), [[1, 2]], max_new_tokens=3)


def test_keys_of_the_other_backend_are_refused(dec):
    if dec.name == "numpy":
        jax = pytest.importorskip("jax")
        with pytest.raises(TypeError, match="key is a JAX key but the numpy backend was chosen"):
            dec.run(jax.random.key(0), dec.greedy_model, [[1]], max_new_tokens=2)
    else:
        with pytest.raises(TypeError, match="key is a Generator but the jax backend was chosen"):
            dec.run(np.random.default_rng(0), dec.greedy_model, [[1]], max_new_tokens=2)


def test_sampling_parameters_are_validated_per_row(dec):
    with pytest.raises(ValueError, match="top_p must be in"):
        dec.run(0, dec.greedy_model, [[1], [2]], max_new_tokens=2, top_p=np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="does not broadcast to the batch shape"):
        dec.run(0, dec.greedy_model, [[1], [2]], max_new_tokens=2, temperature=np.ones(3))


# --------------------------------------------------------------------------------------------
# Examples


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["numpy_decode.py", "jax_decode.py"])
def test_examples_run(script):
    if script.startswith("jax") and not _jax_backend_available():
        pytest.skip("the JAX backend of sample is not available")
    env = dict(os.environ, PYTHONPATH=str(EXAMPLES.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "greedy" in done.stdout
