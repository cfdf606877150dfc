"""Chains of processors in any order, and the peers' presets, on every backend: against the float64
oracle, the engines' documented orders on worked examples, chi-square, logprobs, bad input, and one
compile per chain structure."""

from __future__ import annotations

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.stats import reference_logprobs
from agnostic_sampling.stats import reference_probs

ROWS, V = 4, 40
LOGITS = (np.random.default_rng(20261207).standard_normal((ROWS, V)) * 2).astype(np.float32)
LOGITS[2, ::4] = -np.inf

CHAINS = {
    "llama_cpp": smp.presets.llama_cpp(temperature=np.array([0.8, 1.5, 0.6, 1.0]), top_k=30, top_p=0.9,
                                       min_p=0.05, typical_p=0.95, top_n_sigma=2.5),
    "vllm": smp.presets.vllm(temperature=0.7, min_p=np.array([0.1, 0.0, 0.2, 0.05]), top_k=20, top_p=0.8),
    "repeated": smp.chain(smp.top_k(25), smp.temperature(2.0), smp.top_p(0.9), smp.temperature(0.5),
                          smp.top_k(np.array([5, 0, 10, 3])), min_keep=2),
    "greedy_in_the_middle": smp.chain(smp.min_p(0.2), smp.temperature(np.array([0.0, 1.0, 0.0, 2.0])),
                                      smp.top_p(0.5)),
    "strategies_first": smp.chain(smp.xtc(0.05, 0.5), smp.eta(0.02), smp.epsilon(0.01), smp.typical_p(0.8),
                                  smp.temperature(1.3), min_keep=np.array([1, 2, 3, 1])),
}


BIAS = np.random.default_rng(5).standard_normal((ROWS, V)).astype(np.float32)
SHAPING = {"logit_bias": BIAS, "banned": np.arange(V) % 7 == 0, "repetition_penalty": 1.4,
           "history": np.random.default_rng(6).integers(0, V, (ROWS, 12))}


@pytest.mark.parametrize("name", list(CHAINS))
def test_matches_reference(backend, name):
    chain = CHAINS[name]
    assert chain.as_params() is None  # not the default order: the whole-row route
    expected = reference_probs(LOGITS, params=chain)
    np.testing.assert_allclose(backend.probs(LOGITS, params=chain), expected, rtol=2e-5, atol=1e-6)
    z = backend.process_logits(LOGITS, params=chain)
    np.testing.assert_array_equal(z.max(axis=-1), np.zeros(ROWS))
    np.testing.assert_allclose(np.exp(z) / np.exp(z).sum(-1, keepdims=True), expected, rtol=2e-5, atol=1e-6)


def test_the_order_matters():
    # the chains above are not the default order in disguise
    for name, chain in CHAINS.items():
        kinds = chain.kinds
        position = smp._chain.DEFAULT_ORDER.index
        steps = sorted(chain.steps, key=lambda step: position(step.kind))
        default = smp.chain(*steps, min_keep=chain.min_keep)
        if len(set(kinds)) == len(kinds):
            assert not np.allclose(reference_probs(LOGITS, params=chain),
                                   reference_probs(LOGITS, params=default)), name


def test_the_default_order_is_the_keywords(backend):
    chain = smp.chain(smp.temperature(0.8), smp.top_k(20), smp.top_p(0.9), smp.typical_p(0.95))
    params = chain.as_params()
    assert params is not None and float(params.top_p) == 0.9
    np.testing.assert_array_equal(backend.probs(LOGITS, params=chain),
                                  backend.probs(LOGITS, temperature=0.8, top_k=20, top_p=0.9, typical_p=0.95))
    assert smp.presets.hf(temperature=0.8, top_k=20, top_p=0.9).as_params() is not None


def test_presets_follow_their_engines(backend):
    x = np.log(np.array([[0.5, 0.3, 0.2]], np.float32))
    # llama.cpp: temperature last, so top-p sees the untempered distribution
    llama = backend.probs(x, params=smp.presets.llama_cpp(temperature=3.0, top_p=0.75))
    top_two = np.array([[0.5, 0.3, 0.0]]) ** (1 / 3)
    np.testing.assert_allclose(llama, top_two / top_two.sum(), rtol=1e-5)
    # Hugging Face: temperature first, so top-p sees the flattened one and keeps all three
    hf = backend.probs(x, params=smp.presets.hf(temperature=3.0, top_p=0.75))
    cube = np.array([[0.5, 0.3, 0.2]]) ** (1 / 3)
    np.testing.assert_allclose(hf, cube / cube.sum(), rtol=1e-5)
    # vLLM: min-p before top-p, so top-p renormalises over min-p's set
    y = np.log(np.array([[0.4, 0.3, 0.2, 0.05, 0.05]], np.float32))
    vllm = backend.probs(y, params=smp.presets.vllm(min_p=0.2, top_p=0.75)) > 0
    assert vllm.tolist() == [[True, True, False, False, False]]
    keywords = backend.probs(y, min_p=0.2, top_p=0.75) > 0  # top-p first: 0.2 is inside 0.75
    assert keywords.tolist() == [[True, True, True, False, False]]


@pytest.mark.parametrize("kind", ["processed", "raw"])
def test_logprobs_match_reference(eager_backend, kind):
    backend = eager_backend
    chain = CHAINS["llama_cpp"]
    ids = np.array([3, int(np.argmax(LOGITS[1])), 7, 0])
    got = smp.logprobs(backend.array(LOGITS), backend.array(ids), kind=kind, top_n=4, params=chain)
    expected = reference_logprobs(LOGITS, ids, kind=kind, top_n=4, params=chain)
    for name in ("token", "top_logprobs", "kept_log_mass"):
        np.testing.assert_allclose(np.asarray(getattr(got, name)), getattr(expected, name), rtol=1e-5,
                                   atol=1e-5, err_msg=name)
    for name in ("rank", "top_ids", "kept_count"):
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), getattr(expected, name), err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_draws_follow_reference(backend, dtype, seed):
    pytest.importorskip("scipy")
    from agnostic_sampling.stats import assert_samples_match

    if backend.jitted and dtype != "float32":
        pytest.skip("under jit float32 only (each dtype is a compile; the eager runs cover them)")
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    logits = LOGITS[:, :32].astype(dtype)
    chain = CHAINS["llama_cpp"]
    n = 65_536  # detects TV 0.02 at power 0.99 per row at the default level (1e-6 per assertion)
    ids = backend.sample(backend.key(seed), np.broadcast_to(logits, (n, *logits.shape)), params=chain)
    assert_samples_match(ids, reference_probs(logits, params=chain), seed=seed)


def test_one_compile_per_structure():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    traces = []

    @jax.jit
    def draw(key, logits, chain):
        traces.append(1)
        return smp.sample(key, logits, params=chain), smp.probs(logits, params=chain)

    for i in range(3):
        chain = smp.chain(smp.top_k(jnp.int32(10 + i)), smp.temperature(0.5 + i / 4),
                          smp.top_p(0.8 + i / 20), min_keep=1 + i)
        ids, p = draw(jax.random.key(i), jnp.asarray(LOGITS), chain)
        np.testing.assert_allclose(p, reference_probs(LOGITS, params=chain), rtol=2e-5, atol=1e-6)
        assert (np.asarray(p)[np.arange(ROWS), np.asarray(ids)] > 0).all()
    assert len(traces) == 1
    draw(jax.random.key(0), jnp.asarray(LOGITS), smp.chain(smp.temperature(0.5), smp.top_k(3)))
    assert len(traces) == 2  # a new order is a new structure


def test_bad_input(eager_backend):
    logits = eager_backend.array(LOGITS)
    with pytest.raises(ValueError, match="top_p must be in \\[0, 1\\], got 1.5"):
        smp.probs(logits, params=smp.chain(smp.temperature(2.0), smp.top_p(1.5)))
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        smp.sample(eager_backend.key(0), logits, params=smp.chain(smp.top_k(3), smp.temperature(-1.0)))
    with pytest.raises(ValueError, match="min_keep must be >= 1"):
        smp.probs(logits, params=smp.chain(smp.top_k(3), smp.temperature(2.0), min_keep=0))
    with pytest.raises(ValueError, match="top_k has shape \\(3,\\), which does not broadcast"):
        smp.probs(logits, params=smp.chain(smp.top_p(0.5), smp.top_k(np.array([1, 2, 3]))))
    with pytest.raises(TypeError, match="not both: got a chain and top_p"):
        smp.probs(logits, top_p=0.5, params=smp.chain(smp.top_k(3)))
    with pytest.raises(TypeError, match="chain takes processors"):
        smp.chain(smp.top_k(3), 0.5)
    with pytest.raises(TypeError, match="not both: got a chain and top_k"):
        smp.verify_draft(eager_backend.key(0), eager_backend.array(np.zeros((1, 2, V), np.float32)),
                         eager_backend.array(np.array([[0]])), top_k=3, params=smp.chain(smp.top_p(0.5)))
    with pytest.raises(ValueError, match="repetition_penalty needs history"):
        smp.probs(logits, repetition_penalty=1.2, params=CHAINS["vllm"])
    with pytest.raises(ValueError, match="kind='raw' is log_softmax of the logits as given"):
        smp.logprobs(logits, eager_backend.array(np.zeros(ROWS, int)), kind="raw", logit_bias=BIAS,
                     params=CHAINS["vllm"])
    with pytest.raises(ValueError, match="row 1"):
        bad = LOGITS.copy()
        bad[1, 0] = np.nan
        smp.probs(eager_backend.array(bad), params=CHAINS["vllm"])


def test_callers_arrays_are_not_modified(eager_backend):
    logits = eager_backend.array(LOGITS.copy())
    smp.sample(eager_backend.key(0), logits, params=CHAINS["repeated"])
    smp.logprobs(logits, np.zeros(ROWS, int), top_n=2, params=CHAINS["repeated"])
    np.testing.assert_array_equal(np.asarray(logits), LOGITS)


@pytest.mark.parametrize("name", ["llama_cpp", "greedy_in_the_middle"])
def test_shaping_keywords_run_before_the_chain(eager_backend, name):
    chain = CHAINS[name]
    logits = eager_backend.array(LOGITS)
    shaping = {key: eager_backend.array(value) if isinstance(value, np.ndarray) else value
               for key, value in SHAPING.items()}
    expected = reference_probs(LOGITS, params=chain, **SHAPING)
    assert (expected[:, ::7] == 0).all() and not np.allclose(expected, reference_probs(LOGITS, params=chain))
    np.testing.assert_allclose(np.asarray(smp.probs(logits, params=chain, **shaping)), expected, rtol=2e-5,
                               atol=1e-6)
    ids = np.asarray(smp.sample(eager_backend.key(0), logits, params=chain, **shaping))
    assert (expected[np.arange(ROWS), ids] > 0).all()
    got = smp.logprobs(logits, eager_backend.array(ids), top_n=3, params=chain, **shaping)
    np.testing.assert_allclose(np.asarray(got.token), np.log(expected[np.arange(ROWS), ids]), rtol=1e-5,
                               atol=1e-5)


def test_verify_draft_takes_a_chain(eager_backend, seed):
    """The first emitted token of the standard rule follows the target's chain distribution."""
    pytest.importorskip("scipy")
    from agnostic_sampling.stats import assert_samples_match

    chain = smp.chain(smp.top_p(0.9), smp.temperature(0.6), smp.top_k(6))
    row = LOGITS[0, :32]
    p = reference_probs(row, params=chain)
    n = 20_000  # detects TV 0.03 at power 0.99 at the default level (checked by assert_samples_match)
    target = np.broadcast_to(row, (n, 2, row.size))  # K = 1 drafted position and the bonus one
    draft = np.full((n, 1), int(np.argmax(row)))  # a greedy draft
    out = smp.verify_draft(eager_backend.key(seed), eager_backend.array(target), eager_backend.array(draft),
                           params=chain)
    assert_samples_match(np.asarray(out.tokens)[:, 0], p, seed=seed, tv=0.03)
    accepted = np.asarray(out.num_accepted)
    assert abs(accepted.mean() - p[np.argmax(row)]) < 0.02  # accepted with probability p(draft)


@pytest.mark.parametrize("penalty", [None, 1.5])
def test_generate_with_a_chain_is_the_plain_loop(eager_backend, penalty):
    """`generate` with a chain equals `sample` with the same chain at every position, by hand."""
    table = (np.random.default_rng(8).standard_normal((V, V)) * 2).astype(np.float32)
    table_b = eager_backend.array(table)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    chain = smp.chain(smp.top_p(0.9), smp.temperature(np.array([0.7, 1.3])), smp.top_k(4))
    banned = np.arange(V) == 9
    out = smp.generate(smp.Seed(3, 0), lambda ids: table_b[ids], eager_backend.array(prompt),
                       max_new_tokens=5, params=chain, banned=banned, repetition_penalty=penalty,
                       return_logprobs=True)
    ids = prompt.copy()
    for t in range(prompt.shape[1] - 1, prompt.shape[1] + 4):
        history = {} if penalty is None else {"history": ids, "repetition_penalty": penalty}
        logits = eager_backend.array(table[ids[:, t]])
        token = np.asarray(smp.sample(smp.Seed(3, t + 1), logits, params=chain, banned=banned, **history))
        lp = smp.logprobs(logits, eager_backend.array(token), params=chain, banned=banned, **history)
        np.testing.assert_allclose(np.asarray(out.logprobs)[:, t + 1], np.asarray(lp.token), rtol=1e-5,
                                   atol=1e-6)
        ids = np.concatenate([ids, token[:, None]], axis=1)
    np.testing.assert_array_equal(np.asarray(out.ids), ids)
    assert not (ids[:, 3:] == 9).any()


def _candidate_rows(vocab: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((4, vocab)) * 3).astype(np.float32)
    x[1, rng.choice(vocab, 20, replace=False)] = 12.0  # 20 tied tokens in as many blocks at the top
    x[2, 1000:2000] = x[2].max()  # ties at the maximum over many blocks: greedy's first argmax
    return x


LEADING_TOP_K = {
    "llama_cpp": smp.presets.llama_cpp(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
    "greedy_first": smp.chain(smp.temperature(np.array([0.0, 1.0, 0.0, 2.0])),
                              smp.top_k(np.array([5, 50, 3, 1])), smp.top_p(0.5), smp.temperature(0.7)),
    "min_keep": smp.chain(smp.top_k(np.array([3, 10, 1, 40])), smp.temperature(0.6), smp.min_p(0.5),
                          min_keep=4),
}


@pytest.mark.parametrize("name", list(LEADING_TOP_K))
def test_a_chain_that_starts_with_top_k_runs_on_candidates(eager_backend, name):
    """The candidate route (the blocks with the largest maxima) gives the whole-row result, and a
    batch where some row's top-k set reaches below the candidates falls back to whole rows."""
    chain = LEADING_TOP_K[name]
    vocab = 65_536
    x = _candidate_rows(vocab)
    route = _route(eager_backend, x, chain)
    assert route is not None and route.all(), "the test must exercise the candidate route"
    flat = x.copy()
    flat[3] = 0.0  # every token tied: no block bound separates the top-k set
    assert not _route(eager_backend, flat, chain).all()
    for logits in (x, flat):
        expected = reference_probs(logits, params=chain)
        got = np.asarray(smp.probs(eager_backend.array(logits), params=chain))
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
        draws = eager_backend.array(np.broadcast_to(logits, (8, *logits.shape)))
        ids = np.asarray(smp.sample(eager_backend.key(1), draws, params=chain))  # (8, 4)
        assert (expected[np.arange(4)[None, :], ids] > 0).all()


def _route(backend, x, chain):
    """Per row, whether the backend's candidate route serves it (None: not taken at all)."""
    if backend.name == "numpy":
        from agnostic_sampling.backends import _numpy_chain as module

        cand = module._chain_candidates(x, chain, x.shape[:-1], bool(np.any(np.asarray(chain.min_keep) != 1)))
    else:
        import jax.numpy as jnp

        from agnostic_sampling.backends import _jax_chain as module

        cand = module._chain_candidates(jnp.asarray(x), chain, bool(np.any(np.asarray(chain.min_keep) != 1)))
    return None if cand is None else np.asarray(cand.exact)


def test_candidate_route_draws_follow_reference(eager_backend, seed):
    pytest.importorskip("scipy")
    from agnostic_sampling.stats import assert_samples_match

    chain = smp.chain(smp.top_k(6), smp.temperature(1.5), smp.top_p(0.9))
    row = _candidate_rows(8192)[0]
    assert _route(eager_backend, row[None], chain).all()
    n = 7_000  # 6 cells at most: detects TV 0.05 at power 0.99 at the default level (checked)
    ids = smp.sample(eager_backend.key(seed), eager_backend.array(np.broadcast_to(row, (n, row.size))),
                     params=chain)
    assert_samples_match(np.asarray(ids), reference_probs(row, params=chain), seed=seed, tv=0.05)
