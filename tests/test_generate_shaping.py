"""Logit shaping inside the decode loops: the loop's carried counts against `sample` with the
history given by hand, position by position, on both backends and both loop forms."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling._dispatch import get_backend

V, PAD = 40, -1
TABLE = np.random.default_rng(5).standard_normal((V, V)).astype(np.float32) * 2
# a few strongly preferred successors, so that unpenalised decoding repeats itself
TABLE[np.arange(V), (np.arange(V) * 7 + 3) % V] += 4.0
PROMPT = np.array([[1, 2, 3, 1, 2], [4, 5, 0, 0, 0], [6, 6, 6, 7, 0]])
LENGTHS = np.array([5, 2, 4])
EOS = (8, 9)
NEW = 10


def _jax_available() -> bool:
    try:
        get_backend("jax")
    except ImportError:
        return False
    return True


class Loop:
    """One backend's decode loops on the bigram table; results as NumPy."""

    def __init__(self, name: str):
        self.name = name
        self.xp = np if name == "numpy" else __import__("jax.numpy", fromlist=["numpy"])
        self.table = self.xp.asarray(TABLE)
        self.traces = 0

    def model(self, ids: Any) -> Any:
        self.traces += 1
        return self.table[ids]

    def step(self, state: Any, ids: Any) -> tuple[Any, Any]:
        return self.table[ids], state

    def generate(self, seed: int, stateful: bool = False, **kw: Any) -> smp.GenerateResult:
        prompt = self.xp.asarray(PROMPT)
        common = dict(max_new_tokens=NEW, prompt_lengths=LENGTHS, pad_id=PAD, eos_id=EOS, **kw)
        if stateful:
            out = smp.generate_with_state(smp.Seed(seed, 0), self.step, 0, prompt, **common)
        else:
            out = smp.generate(smp.Seed(seed, 0), self.model, prompt, **common)
        return out._replace(ids=np.asarray(out.ids), num_generated=np.asarray(out.num_generated),
                            logprobs=None if out.logprobs is None else np.asarray(out.logprobs))


_LOOPS: dict[str, Loop] = {}


@pytest.fixture(params=["numpy", "jax"])
def loop(request: pytest.FixtureRequest) -> Loop:
    if request.param == "jax" and not _jax_available():
        pytest.skip("JAX not installed (the NumPy-only environment)")
    return _LOOPS.setdefault(request.param, Loop(request.param))


def by_hand(seed: int, counted: Any, min_tokens: int = 0, **kw: Any) -> np.ndarray:
    """The decode loop written plainly: at each position, `sample` on NumPy with the history
    ``counted(ids, t)`` (``-1`` where a position does not count) and ``min_tokens`` as a mask."""
    batch, width = PROMPT.shape
    total = width + NEW
    ids = np.full((batch, total), PAD)
    ids[:, :width] = np.where(np.arange(width) < LENGTHS[:, None], PROMPT, PAD)
    finished = np.zeros(batch, bool)
    generated = np.zeros(batch, int)
    for t in range(int(LENGTHS.min()) - 1, total - 1):
        taking = ~finished & (LENGTHS <= t + 1)
        if not taking.any():
            continue
        banned = np.zeros((batch, V), bool)
        banned[:, list(EOS)] = (generated < min_tokens)[:, None]
        tokens = smp.sample(smp.Seed(seed, t + 1), TABLE[ids[:, t]], history=counted(ids[:, :t + 1], t),
                            banned=banned, **kw)
        ids[taking, t + 1] = tokens[taking]
        generated += taking
        finished |= taking & ((generated >= NEW) | np.isin(tokens, EOS))
    return ids


def everything(ids: np.ndarray, t: int) -> np.ndarray:
    return ids


def output_only(ids: np.ndarray, t: int) -> np.ndarray:
    return np.where(np.arange(ids.shape[1]) >= LENGTHS[:, None], ids, -1)


def last(n: int, scope: Any) -> Any:
    def counted(ids: np.ndarray, t: int) -> np.ndarray:
        return np.where(np.arange(ids.shape[1]) > t - n, scope(ids, t), -1)

    return counted


def _pack(mask: np.ndarray) -> np.ndarray:
    """Booleans (..., V) as uint32 words (..., ceil(V / 32)): bit j of word w is token 32w + j."""
    words = np.zeros((*mask.shape[:-1], -(-mask.shape[-1] // 32)), np.uint32)
    for token in range(mask.shape[-1]):
        words[..., token // 32] |= mask[..., token].astype(np.uint32) << np.uint32(token % 32)
    return words


def _dense(entries: dict[tuple[int, int], float]) -> np.ndarray:
    """A (3, V) float32 bias, zero but at the (row, token) entries given."""
    bias = np.zeros((3, V), np.float32)
    for at, value in entries.items():
        bias[at] = value
    return bias


PENALTIES = dict(repetition_penalty=np.array([1.5, 1.2, 2.0]), frequency_penalty=np.array([0.4, 0.0, 1.0]),
                 presence_penalty=0.3)
CASES = {
    # (loop keywords, the history the hand loop counts, sampling keywords)
    "all-scope": (dict(penalty_scope="prompt_and_output"), everything, PENALTIES),
    "output-scope": (dict(penalty_scope="output"), output_only, PENALTIES),
    "default-repetition": ({}, everything, dict(repetition_penalty=1.8)),  # prompt and output
    "default-frequency": ({}, output_only, dict(frequency_penalty=0.7, presence_penalty=0.5)),  # output
    "window": (dict(penalty_scope="prompt_and_output", penalty_window=3), last(3, everything), PENALTIES),
    "window-output": (dict(penalty_scope="output", penalty_window=4), last(4, output_only), PENALTIES),
    "bias-and-penalty": ({}, everything, dict(repetition_penalty=1.4,
                                             logit_bias=np.linspace(-1, 1, V, dtype=np.float32))),
    "ngrams-and-bad-words": ({}, everything, dict(no_repeat_ngram_size=np.array([2, 3, 1]),
                                                 bad_words=np.array([[3, 6, -1], [6, 6, 7], [10, -1, -1]]))),
    "dry": ({}, everything, dict(dry=smp.Dry(np.array([0.8, 2.0, 1.0]), base=np.array([1.75, 1.2, 3.0]),
                                             allowed_length=np.array([2, 1, 2]), last_n=np.array([-1, 6, 9]),
                                             breakers=np.array([7, -1])))),
    "dry-and-penalties": (dict(penalty_scope="prompt_and_output"), everything,  # DRY changes 2 tokens
                          dict(repetition_penalty=1.1, dry=smp.Dry(3.0, allowed_length=1))),
    "sparse-bias-and-penalty": ({}, output_only, dict(frequency_penalty=0.9, logit_bias=(
        np.array([[3, 10, -1], [10, 11, 12], [0, 0, 5]]), np.array([[1.0, 2.0, 0], [-1.0, 2.0, 3.0],
                                                                  [0.5, 0.5, -np.inf]], np.float32)))),
    # a NumPy loop adds a dense bias with few nonzero entries (5 of 120 here) through their indices
    "few-bias-entries-and-penalty": ({}, everything, dict(repetition_penalty=1.3, logit_bias=_dense(
        {(0, 3): 2.0, (0, 10): -np.inf, (1, 10): 1.5, (1, 0): -1.0, (2, 5): 3.0}))),
    # a NumPy loop finds the masks' bans once: flat indices when few (6 of 120 here), else a boolean
    "few-bans-and-penalty": ({}, everything, dict(repetition_penalty=1.3, allowed=_pack(
        ~(np.arange(V) == np.array([[3], [0], [6]])) & ~(np.arange(V) == np.array([[10], [17], [7]]))))),
    "many-bans-and-penalty": ({}, everything, dict(repetition_penalty=1.3, vocab_size=np.array([36, 40, 30]),
                                                   allowed=np.arange(V) % 3 != 1)),
}


@pytest.mark.parametrize("stateful", [False, True], ids=["model", "step"])
@pytest.mark.parametrize("case", list(CASES))
def test_loop_equals_sample_with_the_history_by_hand(loop, case, stateful):
    loop_kw, counted, sampling = CASES[case]
    want = by_hand(11, counted, temperature=0.8, **sampling)
    got = loop.generate(11, stateful=stateful, temperature=0.8, **loop_kw, **sampling)
    np.testing.assert_array_equal(got.ids, want)


def test_penalties_change_what_is_generated(loop):
    plain = loop.generate(3, temperature=0.0)
    penalised = loop.generate(3, temperature=0.0, repetition_penalty=3.0, penalty_scope="prompt_and_output")
    assert (plain.ids != penalised.ids).any()  # the step is not silently dropped
    dry = loop.generate(3, temperature=0.0, dry=smp.Dry(2.0, allowed_length=1))
    assert (plain.ids != dry.ids).any()


@pytest.mark.parametrize("min_tokens", [0, 4, np.array([2, 7, 0])])
def test_min_tokens_bans_every_eos_id_until_then(loop, min_tokens):
    # logits that make EOS the favourite everywhere: rows stop at min_tokens exactly
    bias = np.zeros(V, np.float32)
    bias[list(EOS)] = 50.0
    out = loop.generate(2, temperature=1.0, logit_bias=bias, min_tokens=min_tokens)
    want = np.broadcast_to(min_tokens, (3,)) + 1
    np.testing.assert_array_equal(out.num_generated, np.minimum(want, NEW))
    for row in range(3):
        end = LENGTHS[row] + out.num_generated[row]
        assert out.ids[row, end - 1] in EOS  # each row stops at one of the EOS ids
        assert not np.isin(out.ids[row, LENGTHS[row]:end - 1], EOS).any()


def test_min_tokens_matches_the_loop_by_hand(loop):
    want = by_hand(4, everything, min_tokens=3, temperature=1.3, repetition_penalty=1.1)
    got = loop.generate(4, temperature=1.3, repetition_penalty=1.1, min_tokens=3)
    np.testing.assert_array_equal(got.ids, want)


def test_masks_apply_at_every_position(loop):
    allowed = np.zeros(V, bool)
    allowed[10:20] = True
    out = loop.generate(6, temperature=1.0, allowed=allowed, frequency_penalty=0.5)
    for row in range(3):
        generated = out.ids[row, LENGTHS[row]:LENGTHS[row] + out.num_generated[row]]
        assert ((generated >= 10) & (generated < 20)).all()


def test_processed_logprobs_are_under_the_shaped_distribution(loop):
    kw = dict(temperature=0.9, repetition_penalty=1.7, presence_penalty=0.4,
              penalty_scope="prompt_and_output")
    out = loop.generate(8, return_logprobs="processed", **kw)
    raw = loop.generate(8, return_logprobs="raw", **kw)
    np.testing.assert_array_equal(out.ids, raw.ids)
    row, t = 0, LENGTHS[0] - 1  # the first generated token of row 0, by hand
    ids = out.ids[:1, :t + 1]
    shaped = smp.process_logits(TABLE[ids[:, -1]], history=ids, repetition_penalty=1.7, presence_penalty=0.4,
                                temperature=0.9)
    expected = shaped[0, out.ids[0, t + 1]] - np.log(np.exp(shaped[0][np.isfinite(shaped[0])]).sum())
    assert out.logprobs[row, t + 1] == pytest.approx(expected, abs=1e-5)
    logits = TABLE[ids[0, -1]]
    raw_expected = logits[out.ids[0, t + 1]] - np.log(np.exp(logits.astype(np.float64)).sum())
    assert raw.logprobs[row, t + 1] == pytest.approx(raw_expected, abs=1e-5)


def test_jax_compiles_once_for_every_penalty_value():
    if not _jax_available():
        pytest.skip("JAX not installed (the NumPy-only environment)")
    loop = Loop("jax")  # its own model object: its own compiled loop
    loop.generate(0, temperature=0.7, repetition_penalty=1.2, frequency_penalty=0.1, min_tokens=1)
    after_first = loop.traces
    for seed, (r, f, m) in enumerate([(1.5, 0.0, 3), (np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.0, 1.0]),
                                                       np.array([0, 2, 5]))]):
        loop.generate(seed, temperature=0.7, repetition_penalty=r, frequency_penalty=f, min_tokens=m)
    assert loop.traces == after_first


@pytest.mark.parametrize(("keywords", "error", "match"), [
    (dict(params=smp.SamplingParams(history=np.zeros((3, 2), int), repetition_penalty=1.2)), ValueError,
     "count each row's own history"),
    (dict(penalty_scope="prompt"), ValueError, "penalty_scope must be"),
    (dict(penalty_window=0), ValueError, "penalty_window must be >= 1"),
    (dict(penalty_window=2.5), TypeError, "penalty_window must be an int"),
    (dict(min_tokens=-1), ValueError, "min_tokens must be >= 0"),
    (dict(min_tokens=1.5), TypeError, "min_tokens must be integers"),
    (dict(min_tokens=np.array([1, 2])), ValueError, "does not broadcast"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty must be"),
    (dict(frequency_penalty=np.nan), ValueError, "frequency_penalty must be"),
])
def test_bad_loop_shaping_is_refused_before_the_model_is_called(loop, keywords, error, match):
    before = loop.traces
    with pytest.raises(error, match=match):
        loop.generate(0, **keywords)
    assert loop.traces == before


def test_min_tokens_needs_an_eos_id():
    with pytest.raises(ValueError, match="needs eos_id"):
        smp.generate(0, lambda ids: TABLE[ids], PROMPT, max_new_tokens=2, min_tokens=1)


def test_numpy_loop_with_logits_of_any_layout(loop):
    # the NumPy loop writes the penalties in place into its own copy, whatever the model returns
    if loop.name != "numpy":
        pytest.skip("a NumPy layout")
    fortran = np.asfortranarray(TABLE)
    prompt = PROMPT
    kw = dict(max_new_tokens=NEW, prompt_lengths=LENGTHS, pad_id=PAD, eos_id=EOS, temperature=0.8,
              repetition_penalty=1.5, frequency_penalty=0.4, penalty_scope="prompt_and_output")
    want = smp.generate(smp.Seed(1, 0), lambda ids: TABLE[ids], prompt, **kw)
    def step(state: Any, ids: Any) -> tuple[Any, Any]:
        return np.asfortranarray(fortran[ids]), state

    got = smp.generate_with_state(smp.Seed(1, 0), step, 0, prompt, **kw)
    np.testing.assert_array_equal(got.ids, want.ids)
