"""The decode loops (README: "Decode loops") on NumPy and JAX, with tiny deterministic models."""

from __future__ import annotations

import functools
import importlib
import runpy
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
# A bigram table: every row a different, spread-out distribution, with planted greedy chains
# 0 -> 1 -> 2 -> 3 -> 7 (EOS) and 4 -> 5 -> 6 -> 4 (a cycle that never reaches EOS).
CHAIN = {0: 1, 1: 2, 2: 3, 3: EOS, 4: 5, 5: 6, 6: 4, EOS: 0}
TABLE = np.random.default_rng(1234).normal(0.0, 1.5, (V, V)).astype(np.float32)
for _token, _successor in CHAIN.items():
    TABLE[_token, _successor] = TABLE[_token].max() + 1.0

# Most tests share one configuration, so that on JAX they share one compiled loop (a compile
# costs seconds on a CPU): batch 3, prompt width 3, 6 new tokens, EOS, logprobs on, and
# temperature, top-k and top-p given (per row or not; their values are traced).
B, P, N = 3, 3, 6
STANDARD = dict(max_new_tokens=N, eos_id=EOS, pad_id=PAD, return_logprobs=True)


def strategy(temperature: Any = 1.0, top_k: Any = 0, top_p: Any = 1.0) -> smp.SamplingParams:
    return smp.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)


GREEDY = strategy(temperature=0.0)


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
        self.table = self.array(TABLE)
        self.traces = 0  # on JAX: how many times `model` was traced

    def model(self, ids: Any) -> Any:
        self.traces += 1
        return self.table[ids]

    def array(self, x: Any, dtype: Any = None) -> Any:
        return self.xp.asarray(np.asarray(x, dtype))

    def key(self, seed: int) -> Any:
        if self.name == "numpy":
            return np.random.default_rng(seed)
        import jax

        return jax.random.key(seed)

    def run(self, key: Any, model: Any, prompt: Any, **kw: Any) -> smp.GenerateResult:
        return self.numpy(smp.generate(key, model, self.array(prompt), **kw))

    def standard(self, key: Any, prompt: Any, lengths: Any, params: smp.SamplingParams) -> smp.GenerateResult:
        return self.run(key, self.model, prompt, prompt_lengths=lengths, params=params, **STANDARD)

    def run_with_state(self, key: Any, step: Any, state: Any, prompt: Any, **kw: Any) -> smp.GenerateResult:
        return self.numpy(smp.generate_with_state(key, step, state, self.array(prompt), **kw))

    @staticmethod
    def numpy(result: smp.GenerateResult) -> smp.GenerateResult:
        def host(x: Any) -> Any:
            return None if x is None else np.asarray(x)

        return result._replace(ids=np.asarray(result.ids), num_generated=np.asarray(result.num_generated),
                               logprobs=host(result.logprobs), model_calls=int(result.model_calls),
                               top_ids=host(result.top_ids), top_logprobs=host(result.top_logprobs))


def _jax_backend_available() -> bool:
    try:
        get_backend("jax")
    except ImportError:
        return False
    return True


@functools.cache
def _decoder(name: str) -> Decoder:
    # one instance per backend: its `model` method is the same static argument every time
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
    out = dec.standard(0, [[0, 1, 2], [3, 0, 0], [4, 5, 0]], [3, 1, 2], GREEDY)
    assert out.ids.tolist() == [
        [0, 1, 2, 3, EOS, PAD, PAD, PAD, PAD],
        [3, EOS, PAD, PAD, PAD, PAD, PAD, PAD, PAD],
        [4, 5] + chain(5, N) + [PAD],
    ]
    assert out.num_generated.tolist() == [2, 1, N]
    assert out.ids.dtype == (np.int64 if dec.name == "numpy" else np.int32)
    assert np.all(out.logprobs == 0)  # greedy: every token has probability 1
    assert out.model_calls == 7  # positions 0..6: row 2 fills the buffer


def test_per_row_greedy_by_temperature_zero_or_top_k_one(dec, seed):
    params = strategy(temperature=np.array([0.0, 1.0, 1.0]), top_k=np.array([0, 1, 0]))
    out = dec.standard(dec.key(seed), [[0, 0, 0], [4, 0, 0], [4, 0, 0]], [1, 1, 1], params)
    assert out.ids[0].tolist() == [0] + chain(0, 4) + [PAD] * 4
    assert out.ids[1].tolist() == [4] + chain(4, N) + [PAD] * 2


def test_early_exit(dec):
    calls = []

    def counting_model(ids: Any) -> Any:
        calls.append(ids.shape)
        return dec.model(ids)

    # every row reaches EOS within four positions; the buffer has room for eight
    model = counting_model if dec.name == "numpy" else dec.model  # keep JAX's compiled loop
    out = dec.run(0, model, [[0, 0, 0], [2, 0, 0], [3, 0, 0]], prompt_lengths=[1, 1, 1], params=GREEDY,
                  **STANDARD)
    assert out.num_generated.tolist() == [4, 2, 1]
    assert out.model_calls == 4  # on JAX: iterations of the while-loop
    if dec.name == "numpy":
        assert calls == [(3, 1), (3, 2), (3, 3), (3, 4)]


def test_eos_in_the_prompt_does_not_stop_a_row(dec):
    out = dec.standard(0, [[EOS, 2, 0]] * 3, [2, 2, 2], GREEDY)
    assert out.ids[0].tolist() == [EOS, 2, 3, EOS] + [PAD] * 5
    assert out.num_generated.tolist() == [2, 2, 2]


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


def test_context_cropping(dec):
    # one window width compiles on JAX; NumPy also checks the edges
    for context_size in [3] if dec.name == "jax" else [1, 3, 20]:
        widths: list[int] = []
        prompts = [[1, 2, 3, 4, 5], [6, 1, 0, 0, 0]]  # row 0 is longer than a context of 3
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
    prompt, lengths = [[1, 0, 0]] * 3, [1, 1, 1]
    first = dec.standard(dec.key(7), prompt, lengths, strategy())
    again = dec.standard(dec.key(7), prompt, lengths, strategy())
    other = dec.standard(dec.key(8), prompt, lengths, strategy())
    assert first.ids.tolist() == again.ids.tolist()
    assert first.ids.tolist() != other.ids.tolist()
    # identical prompts still decode independently
    assert len({tuple(row) for row in first.ids.tolist()}) > 1


def test_int_seed_is_a_key(dec):
    a = dec.standard(3, [[1, 2, 3]] * 3, [3, 3, 3], strategy(top_k=4))
    b = dec.standard(3, [[1, 2, 3]] * 3, [3, 3, 3], strategy(top_k=4))
    assert a.ids.tolist() == b.ids.tolist()


def test_legacy_prngkey_gives_the_ids_of_the_typed_key(jax_dec):
    import jax

    typed = jax_dec.standard(jax.random.key(5), [[1, 2, 3]] * 3, [3, 2, 1], strategy(top_k=4))
    legacy = jax_dec.standard(jax.random.PRNGKey(5), [[1, 2, 3]] * 3, [3, 2, 1], strategy(top_k=4))
    assert typed.ids.tolist() == legacy.ids.tolist()


def test_a_value_that_is_no_key_is_refused_before_the_loop(dec):
    calls = dec.traces
    message = r"key must be a (numpy\.random\.Generator|jax\.random\.key).*got str"
    with pytest.raises(TypeError, match=message):
        dec.run("seed", dec.model, [[1]], max_new_tokens=2)
    assert dec.traces == calls  # refused before the model is called or traced


def test_parameters_are_validated_once_per_decode(dec, monkeypatch):
    # the module that validates a decode request once, before the loop
    decode_module = importlib.import_module("agnostic_sampling._decode")
    validate = decode_module.validate_params
    seen = []

    def counting(params: Any, batch_shape: tuple[int, ...], *args: Any, **kw: Any) -> None:
        seen.append(batch_shape)
        validate(params, batch_shape, *args, **kw)

    monkeypatch.setattr(decode_module, "validate_params", counting)
    monkeypatch.setattr(importlib.import_module("agnostic_sampling._api"), "validate_params", counting)
    out = dec.standard(0, [[1, 2, 3]] * 3, [3, 2, 1], strategy(0.7, 3, 0.9))
    assert out.model_calls > 1
    assert seen == [(B,)]  # before the loop, not at every position


def test_logprobs_are_under_the_processed_distribution(dec, seed):
    params = strategy(temperature=np.array([0.7, 1.3, 0.0]), top_k=np.array([4, 0, 0]),
                      top_p=np.array([1.0, 0.8, 1.0]))
    lengths = [2, 1, 1]
    out = dec.standard(dec.key(seed), [[1, 2, 0], [3, 0, 0], [5, 0, 0]], lengths, params)
    assert out.logprobs.shape == out.ids.shape
    for row in range(B):
        start, n = lengths[row], int(out.num_generated[row])
        assert np.all(out.logprobs[row, :start] == 0) and np.all(out.logprobs[row, start + n:] == 0)
        for position in range(start, start + n):
            previous, token = out.ids[row, position - 1], out.ids[row, position]
            row_params = {f: getattr(params, f)[row] for f in ("temperature", "top_k", "top_p")}
            p = smp.probs(TABLE[previous], **row_params)
            assert out.logprobs[row, position] == pytest.approx(np.log(p[token]), abs=1e-5)
    assert np.all(out.logprobs[2] == 0)  # a greedy row: every token has probability 1


# Log-probabilities of either kind, with the top-n alternatives: one shared configuration (on JAX
# each kind and top_n compiles once)
MIXED = strategy(temperature=np.array([0.7, 1.0, 0.0]), top_k=np.array([4, 0, 0]),
                 top_p=np.array([1.0, 0.8, 1.0]))
TOP = 3
MIXED_PROMPT, MIXED_LENGTHS = [[1, 2, 0], [3, 0, 0], [5, 0, 0]], [2, 1, 1]


def with_kind(dec: Decoder, key: Any, kind: Any, top: int = TOP, params: Any = MIXED) -> smp.GenerateResult:
    return dec.run(key, dec.model, MIXED_PROMPT, prompt_lengths=MIXED_LENGTHS, params=params,
                   **{**STANDARD, "return_logprobs": kind}, top_logprobs=top)


def generated_positions(out: smp.GenerateResult) -> np.ndarray:
    """``(B, P + N)`` True where a row's token was generated."""
    positions = np.arange(out.ids.shape[1])
    start = np.array(MIXED_LENGTHS)[:, None]
    return (positions >= start) & (positions < start + out.num_generated[:, None])


@pytest.mark.parametrize("kind", ["processed", "raw"])
def test_logprobs_of_either_kind_match_a_loop_of_logprobs_calls(dec, seed, kind):
    out = with_kind(dec, dec.key(seed), kind)
    generated = generated_positions(out)
    assert out.top_ids.shape == out.top_logprobs.shape == out.ids.shape + (TOP,)
    assert out.top_ids.dtype == (np.int64 if dec.name == "numpy" else np.int32)
    assert out.top_logprobs.dtype == out.logprobs.dtype
    # prompt and padding positions: 0, -1 and -inf
    assert np.all(out.logprobs[~generated] == 0)
    assert np.all(out.top_ids[~generated] == -1) and np.all(out.top_logprobs[~generated] == -np.inf)
    # each generated position against `smp.logprobs` of the bigram's logits for the token before it
    for position in range(1, out.ids.shape[1]):
        rows = generated[:, position]
        if not rows.any():
            continue
        logits = dec.array(TABLE[np.where(rows, out.ids[:, position - 1], 0)])
        tokens = dec.array(np.where(rows, out.ids[:, position], 0))
        expected = smp.logprobs(logits, tokens, kind=kind, top_n=TOP, params=MIXED)
        np.testing.assert_allclose(out.logprobs[rows, position], np.asarray(expected.token)[rows], atol=1e-6)
        assert out.top_ids[rows, position].tolist() == np.asarray(expected.top_ids)[rows].tolist()
        np.testing.assert_allclose(out.top_logprobs[rows, position], np.asarray(expected.top_logprobs)[rows],
                                   atol=1e-6)
    # the alternatives are descending, led by the most likely token
    top = out.top_logprobs[generated]
    assert np.all(top[:, :-1] >= top[:, 1:])
    assert np.all(out.logprobs[generated] <= top[:, 0] + 1e-6)


def test_raw_and_processed_differ_where_the_parameters_reshape_the_distribution(dec, seed):
    key_seed = seed % 1000
    processed, raw = (with_kind(dec, dec.key(key_seed), kind) for kind in ("processed", "raw"))
    plain = with_kind(dec, dec.key(key_seed), True, top=0)
    # log-probabilities draw nothing: the same key gives the same ids whatever is returned
    assert processed.ids.tolist() == raw.ids.tolist() == plain.ids.tolist()
    np.testing.assert_array_equal(plain.logprobs, processed.logprobs)  # True is "processed"
    assert plain.top_ids is None and plain.top_logprobs is None
    generated = generated_positions(raw)
    # the greedy row 2: probability 1 when processed, a proper log_softmax value when raw
    assert np.all(processed.logprobs[2][generated[2]] == 0)
    assert np.all(raw.logprobs[2][generated[2]] < 0)
    # row 1 (temperature 1, top-p 0.8): processed = raw - log(kept mass) > raw on kept tokens
    assert np.all(processed.logprobs[1][generated[1]] > raw.logprobs[1][generated[1]])
    # raw: every token has a finite log-probability; processed greedy: one token, then -inf
    assert np.all(np.isfinite(raw.top_logprobs[generated]))
    assert np.all(processed.top_logprobs[2][generated[2]] == [0, -np.inf, -np.inf])


def test_numpy_and_jax_give_the_same_log_probabilities_for_a_seed():
    if not _jax_backend_available():
        pytest.skip("the JAX backend of sample is not available")
    results = {}
    for name in ("numpy", "jax"):
        dec = _decoder(name)
        results[name] = [with_kind(dec, smp.Seed(11, 0), kind) for kind in ("processed", "raw")]
    for on_numpy, on_jax in zip(results["numpy"], results["jax"], strict=True):
        assert on_numpy.ids.tolist() == on_jax.ids.tolist()  # a Seed: the same tokens on both
        np.testing.assert_allclose(on_numpy.logprobs, on_jax.logprobs, atol=1e-5)
        assert on_numpy.top_ids.tolist() == on_jax.top_ids.tolist()
        np.testing.assert_allclose(on_numpy.top_logprobs, on_jax.top_logprobs, atol=1e-5)


def test_jax_compiles_once_per_kind_and_top_n(jax_dec):
    import jax

    with_kind(jax_dec, jax.random.key(0), "raw")
    after_first = jax_dec.traces
    other = strategy(np.array([1.5, 0.2, 0.9]), np.array([0, 2, 6]), np.array([0.5, 1.0, 0.7]))
    for key in (jax.random.key(1), 3, smp.Seed(5, 2)):
        out = with_kind(jax_dec, key, "raw", params=other)
        assert out.top_ids.shape == out.ids.shape + (TOP,)
    assert jax_dec.traces == after_first  # parameter values, keys: the same compiled loop


@pytest.mark.parametrize("keywords, error, match", [
    (dict(return_logprobs="log"), ValueError, "return_logprobs must be one of False, True, 'processed'"),
    (dict(return_logprobs=1), ValueError, "'raw', got 1"),
    (dict(return_logprobs="raw", top_logprobs=-1), ValueError, "top_logprobs must be >= 0"),
    (dict(return_logprobs="raw", top_logprobs=2.0), TypeError, "top_logprobs must be an int"),
    (dict(return_logprobs="raw", top_logprobs=True), TypeError, "top_logprobs must be an int"),
    (dict(top_logprobs=2), ValueError, "top_logprobs=2 needs return_logprobs"),
    (dict(return_logprobs="processed", top_logprobs=V + 1), ValueError,
     rf"top_logprobs must be in \[0, {V}\] \(the vocabulary size"),
])
def test_bad_logprob_options_are_refused(dec, keywords, error, match):
    calls = dec.traces
    with pytest.raises(error, match=match):
        dec.run(0, dec.model, [[1, 2]], max_new_tokens=2, **keywords)
    if "top_logprobs" not in keywords or keywords["top_logprobs"] <= V:
        assert dec.traces == calls  # refused before the model is called or traced


def test_stateful_form_checks_top_logprobs_against_the_step_vocabulary(dec):
    step, state = cached_bigram_step(dec)
    with pytest.raises(ValueError, match=rf"top_logprobs must be in \[0, {V}\]"):
        dec.run_with_state(0, step, state, [[1, 2, 3]] * B, max_new_tokens=2, return_logprobs="raw",
                           top_logprobs=V + 3)
    out = dec.run_with_state(0, step, state, [[1, 2, 3]] * B, max_new_tokens=2, return_logprobs="raw",
                             top_logprobs=V)
    assert out.top_ids[:, P:P + 2].shape == (B, 2, V)
    assert np.all(np.sort(out.top_ids[:, P:P + 2], axis=-1) == np.arange(V))  # all V tokens ranked


def test_first_token_distribution(dec, seed):
    pytest.importorskip("scipy", reason="the chi-square test needs SciPy (absent in the NumPy-only run)")
    from agnostic_sampling import stats
    # two prompts with their own parameters, each repeated: every row's first token is one draw
    n = 6000
    last = np.array([2, 5])
    temperature, top_k, top_p = np.array([0.8, 1.5]), np.array([5, 0]), np.array([1.0, 0.9])
    prompt = np.stack([np.full(n, 4), np.tile(last, n // 2)], axis=1)
    per_row = {name: np.tile(value, n // 2) for name, value in
               dict(temperature=temperature, top_k=top_k, top_p=top_p).items()}
    out = dec.run(dec.key(seed), dec.model, prompt, max_new_tokens=1, **per_row)
    draws = out.ids[:, 2].reshape(n // 2, 2)
    expected = stats.reference_probs(TABLE[last], temperature=temperature, top_k=top_k, top_p=top_p)
    stats.assert_samples_match(draws, expected, tv=0.08, seed=seed)


# --------------------------------------------------------------------------------------------
# The stateful form


def cached_bigram_step(dec: Decoder) -> tuple[Any, dict]:
    """The standard model as a step whose state is a cache of every token fed so far and the
    position: the logits are read from the cache, so a state that is not threaded through the
    loop correctly changes the ids."""

    def step(state: dict, ids: Any) -> tuple[Any, dict]:
        position = state["position"]
        if dec.name == "numpy":
            cache = state["cache"].copy()
            cache[:, position] = ids
        else:
            cache = state["cache"].at[:, position].set(ids)
        return dec.table[cache[:, position]], {"cache": cache, "position": position + 1}

    return step, {"cache": dec.array(np.full((B, P + N), -2), np.int32), "position": dec.array(0, np.int32)}


@pytest.mark.parametrize("prompt, lengths, temperature", [
    ([[1, 2, 3], [4, 4, 0], [5, 6, 0]], [3, 2, 2], [1.0, 0.5, 2.0]),  # one prefill-only call
    # row 0 ends at the first position while the others still read their prompts: no draw there
    ([[3, 0, 0], [4, 4, 4], [5, 6, 1]], [1, 3, 3], [0.0, 0.5, 2.0]),
])
def test_stateful_form_gives_the_same_ids(dec, seed, prompt, lengths, temperature):
    step, state = cached_bigram_step(dec)
    params = strategy(temperature=np.array(temperature), top_k=np.array([0, 3, 0]))
    plain = dec.standard(dec.key(seed), prompt, lengths, params)
    stateful = dec.run_with_state(dec.key(seed), step, state, prompt, prompt_lengths=lengths, params=params,
                                  **STANDARD)
    assert stateful.ids.tolist() == plain.ids.tolist()
    assert stateful.num_generated.tolist() == plain.num_generated.tolist()
    np.testing.assert_allclose(stateful.logprobs, plain.logprobs, atol=1e-6)
    # the step consumed the prompt from position 0, one call per position, and stopped with the rows
    calls = stateful.model_calls
    assert calls == plain.model_calls + min(lengths) - 1
    assert int(stateful.state["position"]) == calls
    assert np.asarray(stateful.state["cache"])[:, :calls].tolist() == stateful.ids[:, :calls].tolist()


# --------------------------------------------------------------------------------------------
# JAX: one compile


def test_jax_compiles_once_across_parameters_keys_and_prompts(jax_dec):
    import jax

    calls = [  # scalars and per-row arrays, ints and floats, new keys, prompts and lengths
        (jax.random.key(0), [[1, 2, 3], [3, 4, 5]] + [[0, 0, 0]], [3, 3, 1], strategy(0.7, 3, 0.9)),
        (jax.random.key(1), [[5, 0, 0], [6, 7, 0], [1, 1, 1]], [1, 2, 3], strategy(1, 5, 1)),
        (jax.random.key(2), [[0, 0, 0]] * 3, [2, 1, 3],
         strategy(np.array([0.0, 2.0, 1.0]), np.array([0, 2, 1]), np.array([1.0, 0.5, 0.9]))),
        (9, [[2, 2, 2]] * 3, [1, 1, 1], strategy(0.3, 1, 0.0)),
    ]
    before = jax_dec.traces
    jax_dec.standard(*calls[0])
    after_first = jax_dec.traces
    assert after_first - before <= 1  # 0 if an earlier test compiled the standard loop
    for call in calls[1:]:
        jax_dec.standard(*call)
    assert jax_dec.traces == after_first


def test_jax_generate_inside_user_jit_with_weights_as_argument(jax_dec, seed):
    import jax

    @jax.jit
    def decode(weights: Any, key: Any, prompt: Any, lengths: Any, top_p: Any) -> Any:
        return smp.generate(key, lambda ids: weights[ids], prompt, prompt_lengths=lengths,
                            params=strategy(top_p=top_p), **STANDARD).ids

    prompt, lengths = [[1, 2, 3], [4, 5, 6], [7, 0, 1]], [3, 1, 2]
    direct = jax_dec.standard(jax.random.key(seed), prompt, lengths, strategy(top_p=0.9))
    jitted = decode(jax_dec.table, jax.random.key(seed), jax_dec.array(prompt), jax_dec.array(lengths), 0.9)
    assert np.asarray(jitted).tolist() == direct.ids.tolist()


# --------------------------------------------------------------------------------------------
# Bad input


def test_empty_prompts_are_refused(dec):
    with pytest.raises(ValueError, match=r"prompt is empty \(shape \(2, 0\)\)"):
        dec.run(0, dec.model, np.zeros((2, 0), np.int64), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt is empty \(shape \(0, 3\)\)"):
        dec.run(0, dec.model, np.zeros((0, 3), np.int64), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt row 1 is empty \(prompt_lengths\[1\] = 0\)"):
        dec.run(0, dec.model, [[1, 2], [3, 4]], prompt_lengths=[2, 0], max_new_tokens=3)


def test_length_longer_than_the_prompt_is_refused(dec):
    with pytest.raises(ValueError, match=r"prompt_lengths\[1\] = 5 is longer than the prompt array's width"):
        dec.run(0, dec.model, [[1, 2, 3], [3, 4, 5]], prompt_lengths=[3, 5], max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt_lengths must have shape \(2,\)"):
        dec.run(0, dec.model, [[1, 2, 3], [3, 4, 5]], prompt_lengths=[3], max_new_tokens=3)


@pytest.mark.parametrize("bad", [0, -2])
def test_max_new_tokens_below_one_is_refused(dec, bad):
    with pytest.raises(ValueError, match=f"max_new_tokens must be >= 1, got {bad}"):
        dec.run(0, dec.model, [[1]], max_new_tokens=bad)
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        dec.run(0, dec.model, [[1]], max_new_tokens=2.0)


def test_prompt_shape_and_dtype_are_checked(dec):
    one_d = r"prompt must have shape \(batch, length\), got shape \(3,\); for one prompt use prompt\[None\]"
    with pytest.raises(ValueError, match=one_d):
        dec.run(0, dec.model, [1, 2, 3], max_new_tokens=2)
    with pytest.raises(TypeError, match="prompt must hold integer token ids, got dtype float32"):
        dec.run(0, dec.model, np.ones((1, 2), np.float32), max_new_tokens=2)
    with pytest.raises(ValueError, match="context_size must be >= 1, got 0"):
        dec.run(0, dec.model, [[1]], max_new_tokens=2, context_size=0)


def test_model_returning_the_wrong_shape_is_reported(dec):
    table = dec.table
    last_only = lambda ids: table[ids[:, -1]]  # noqa: E731  (B, V) instead of (B, t, V)
    width = 2 if dec.name == "numpy" else 5  # NumPy feeds the growing prefix, JAX the buffer
    expected = rf"\(B, t, V\) = \(1, {width}, V\) for ids of shape \(1, {width}\)"
    with pytest.raises(ValueError, match=rf"model returned logits of shape \(1, {V}\); expected {expected}"):
        dec.run(0, last_only, [[1, 2]], max_new_tokens=3)
    whole = lambda state, ids: (table[ids][:, None], state)  # noqa: E731  (B, 1, V) instead of (B, V)
    with pytest.raises(ValueError, match=rf"step returned logits of shape \(1, 1, {V}\); expected \(B, V\)"):
        dec.run_with_state(0, whole, dec.array(0), [[1, 2]], max_new_tokens=3)


def test_jax_unhashable_model_is_reported(jax_dec):
    class Unhashable:
        __hash__ = None

        def __call__(self, ids: Any) -> Any:
            return jax_dec.table[ids]

    with pytest.raises(TypeError, match="the model must be hashable on JAX"):
        jax_dec.run(0, Unhashable(), [[1]], max_new_tokens=2)


def test_nan_logits_are_reported_with_the_position():
    def nan_at_position_two(ids: Any) -> Any:
        out = TABLE[ids]
        if ids.shape[1] == 3:
            out = out.copy()
            out[1, -1, 4] = np.nan
        return out

    with pytest.raises(ValueError, match=r"logits for position 3 \(fed through position 2\): logits row 1 "
                                         "contains NaN"):
        smp.generate(0, nan_at_position_two, np.array([[1], [2]]), max_new_tokens=5)


def test_model_returning_integer_logits_is_refused(dec):
    integer_table = dec.array(np.round(TABLE * 10), np.int32)
    with pytest.raises(TypeError, match="logits must be a floating-point array, got dtype int32"):
        dec.run(0, lambda ids: integer_table[ids], [[1]], max_new_tokens=2)


def test_keys_of_the_other_backend_are_refused(dec):
    if dec.name == "numpy":
        jax = pytest.importorskip("jax")
        with pytest.raises(TypeError, match="key is a JAX key but the numpy backend was chosen"):
            dec.run(jax.random.key(0), dec.model, [[1]], max_new_tokens=2)
    else:
        with pytest.raises(TypeError, match="key is a Generator but the jax backend was chosen"):
            dec.run(np.random.default_rng(0), dec.model, [[1]], max_new_tokens=2)


def test_sampling_parameters_are_validated_per_row(dec):
    with pytest.raises(ValueError, match="top_p must be in"):
        dec.run(0, dec.model, [[1], [2]], max_new_tokens=2, top_p=np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="does not broadcast to the batch shape"):
        dec.run(0, dec.model, [[1], [2]], max_new_tokens=2, temperature=np.ones(3))


def test_numpy_decoding_imports_no_jax():
    code = (
        "import sys, numpy as np, agnostic_sampling as smp;"
        "table = np.zeros((4, 4), np.float32);"
        "smp.generate(0, lambda ids: table[ids], np.array([[1, 2]]), max_new_tokens=3, top_p=0.9);"
        "smp.generate_with_state(0, lambda s, ids: (table[ids], s), 0, np.array([[1]]), max_new_tokens=2);"
        "print([m for m in sys.modules if m == 'jax' or m.endswith('_generate_jax')])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# pad_id and a model that masks padding itself

MODEL_PAD = 0  # the id the model below treats as padding
EMBED = np.random.default_rng(99).normal(0.0, 1.0, (V, 4)).astype(np.float32)
UNEMBED = np.random.default_rng(98).normal(0.0, 1.0, (4, V)).astype(np.float32)
NEVER_PAD = np.where(np.arange(V) == MODEL_PAD, -1e4, 0.0).astype(np.float32)  # never drawn greedily


def masking_model(ids: Any) -> Any:
    """Two causal attention layers whose mask also drops every position holding MODEL_PAD, as a
    model with its own padding mask does: a fully masked position becomes NaN, and the second
    layer spreads it to earlier positions (a zero weight times NaN is NaN)."""
    xp = np if isinstance(ids, np.ndarray) else __import__("jax.numpy", fromlist=["numpy"])
    width = ids.shape[1]
    real = ids != MODEL_PAD
    mask = xp.tril(xp.ones((width, width), bool))[None] & real[:, None, :] & real[:, :, None]
    h = xp.asarray(EMBED)[ids]
    for _ in range(2):
        scores = xp.where(mask, h @ h.swapaxes(1, 2), -xp.inf)
        weights = xp.exp(scores - scores.max(axis=-1, keepdims=True))
        h = h + (weights / weights.sum(axis=-1, keepdims=True)) @ h
    return h @ xp.asarray(UNEMBED) + xp.asarray(NEVER_PAD)


def test_jax_pad_id_that_the_model_masks_changes_the_ids_and_another_does_not(jax_dec):
    # greedy, rows of equal length, no EOS: NumPy never feeds padding, so its ids are the reference
    prompt, kw = [[1, 2], [3, 4]], dict(max_new_tokens=4, temperature=0.0)
    reference = smp.generate(0, masking_model, np.array(prompt), **kw).ids
    assert np.all(reference[:, 2:] != MODEL_PAD)
    safe = jax_dec.run(0, masking_model, prompt, pad_id=V - 1, **kw)
    masked = jax_dec.run(0, masking_model, prompt, pad_id=MODEL_PAD, **kw)  # traced pad: one compile
    assert safe.ids.tolist() == reference.tolist()
    assert masked.ids.tolist() != reference.tolist()  # what the pad_id docstring warns about


# --------------------------------------------------------------------------------------------
# Examples


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["numpy_decode.py", "jax_decode.py"])
def test_examples_run(script, capsys):
    if script.startswith("jax") and not _jax_backend_available():
        pytest.skip("the JAX backend of sample is not available")
    # in this process: a subprocess would pay for importing JAX again
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    printed = capsys.readouterr().out
    assert "greedy" in printed
    if script.startswith("jax"):
        assert "model traced 1 time(s) for 2 calls" in printed
        assert "same ids as the whole-sequence model: True" in printed
