"""Search: Fast top-k, Slow re-ranking of the top K only, blending, queries, model checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastslow_cli.index.hnsw import AnnParams
from fastslow_cli.errors import FastslowError, UsageError
from fastslow_cli.eval.calibration import Calibration
from fastslow_cli.index.folder import SearchIndex, build_index
from fastslow_cli.search.retrievers import NativeFast, NativeSlow
from fastslow_cli.search.searcher import Result, Searcher, blend, check_query, rank_candidates
from fastslow_cli.store.parquet import FeatureStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

QUERIES = [
    "a red circle left of a blue square",
    "two cats sleep under a big tree",
    "a dog",
    "  A   GREEN triangle!  ",
    "zebra unknown words only",
]


@pytest.fixture(scope="module")
def setup(index_kit, tmp_path_factory: pytest.TempPathFactory) -> tuple[Searcher, NativeFast, NativeSlow]:
    root = tmp_path_factory.mktemp("search")
    store = index_kit.make_store(root, count=45)
    fast, slow = index_kit.make_models(store)
    # ef_search >= count: HNSW is exact here, so Fast order can be checked against brute force.
    build_index(store, root / "index" / "main", fast, slow, AnnParams(M=8, ef_construction=64, ef_search=64))
    return Searcher(SearchIndex.open(root / "index" / "main"), fast, slow), fast, slow


def key(results: list[Result]) -> list[tuple[str, float, float, float | None, float | None]]:
    return [(r.id, r.score, r.fast_score, r.slow_score, r.timestamp) for r in results]


def test_fast_search_matches_brute_force(setup: tuple[Searcher, NativeFast, NativeSlow]) -> None:
    searcher, fast, _ = setup
    index = searcher.index
    table_vectors = fast.encode_items(store_of(searcher).load(index.items["id"]))
    for query in QUERIES:
        results = searcher.search(query, k=10)
        qvec = fast.encode_texts([check_query(query)])[0]
        exact = np.argsort(-(table_vectors @ qvec), kind="stable")[:10]
        assert [r.id for r in results] == [index.items["id"][i] for i in exact]
        assert [r.rank for r in results] == list(range(1, 11))
        assert all(r.query == query and r.slow_score is None for r in results)
        np.testing.assert_allclose([r.score for r in results], (table_vectors @ qvec)[exact], atol=1e-5)
        assert [r.score for r in results] == [r.fast_score for r in results]
        for r in results:
            label = index.items["id"].index(r.id)
            assert r.kind == index.items["kind"][label] and r.path == index.items["path"][label]
            assert (r.timestamp is None) == (r.kind == "image")
            if r.kind == "video":
                a, b = index.frame_offsets[label], index.frame_offsets[label + 1]
                best = int(np.argmax(np.asarray(index.frame_vectors[a:b]) @ qvec))
                assert r.timestamp == index.items["timestamps"][label][best]


def store_of(searcher: Searcher) -> FeatureStore:
    return FeatureStore(searcher.index.feature_set_dir)


def test_single_and_batch_identical(setup: tuple[Searcher, NativeFast, NativeSlow]) -> None:
    searcher, _, _ = setup
    for rerank in (0, 7):
        one_by_one = [searcher.search(q, k=9, rerank=rerank) for q in QUERIES]
        batch = searcher.search_many(QUERIES, k=9, rerank=rerank)
        assert batch == one_by_one  # bit-identical: ids, ranks, every score, timestamps
        # The same query twice gives the same answer (no hidden state between queries).
        assert [key(rs) for rs in one_by_one] == [key(searcher.search(q, k=9, rerank=rerank)) for q in QUERIES]
    assert searcher.search_many([]) == []


@pytest.mark.parametrize("k, rerank", [(12, 5), (5, 12), (10, 10), (3, 1)])
def test_rerank_only_reorders_top_k(setup: tuple[Searcher, NativeFast, NativeSlow], k: int, rerank: int) -> None:
    searcher, _, slow = setup
    for query in QUERIES:
        plain = searcher.search(query, k=max(k, rerank))
        reranked = searcher.search(query, k=k, rerank=rerank)
        assert len(reranked) == k
        head = min(k, rerank)
        # The first K are the Fast top-K, in another order...
        assert {r.id for r in reranked[:head]} <= {r.id for r in plain[:rerank]}
        if k >= rerank:
            assert {r.id for r in reranked[:rerank]} == {r.id for r in plain[:rerank]}
        # ... sorted by the Slow score, which is the Slow model's score of the cached memory...
        labels = [searcher.index.items["id"].index(r.id) for r in plain[:rerank]]
        direct = slow.score([check_query(query)], searcher.index.memories(labels))[0]
        by_id = dict(zip((r.id for r in plain[:rerank]), direct))
        assert [r.slow_score for r in reranked[:head]] == pytest.approx([by_id[r.id] for r in reranked[:head]], abs=1e-5)
        assert all(1.0 < r.score < 2.0 for r in reranked[:head])  # re-scored by Slow: above every cosine
        expected_order = sorted(by_id, key=lambda i: -by_id[i])[:head]
        assert [r.id for r in reranked[:head]] == expected_order
        fast_of = {r.id: r.fast_score for r in plain}
        assert [r.fast_score for r in reranked] == [fast_of[r.id] for r in reranked]
        # ... and everything below K keeps its Fast order and score (its cosine).
        assert key(reranked[rerank:]) == key(plain[rerank:k])
        assert [r.score for r in reranked[rerank:]] == [r.fast_score for r in reranked[rerank:]]
        assert all(r.slow_score is None for r in reranked[rerank:])


def test_blend() -> None:
    fast = np.array([0.9, 0.5, 0.1])
    slow = np.array([-3.0, -1.0, -2.0])
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    np.testing.assert_allclose(blend(fast, slow, 0.0), z(slow))  # alpha 0: the Slow order
    np.testing.assert_allclose(np.argsort(-blend(fast, slow, 1.0)), [0, 1, 2])  # alpha 1: Fast order
    np.testing.assert_allclose(blend(fast, slow, 0.3), 0.7 * z(slow) + 0.3 * z(fast))
    np.testing.assert_array_equal(blend(fast[:1], slow[:1], 0.5), [0.0])  # one candidate: nothing to standardise


def test_rank_candidates_scores_never_rise_with_rank() -> None:
    """Property over random scores: every mode gives a non-increasing score on one scale."""
    rng = np.random.default_rng(0)
    for case in range(3000):
        n = int(rng.integers(1, 40))
        fast = np.sort(rng.uniform(-1.0, 1.0, n))[::-1]  # HNSW gives candidates in Fast order
        if case % 7 == 0:
            fast = np.round(fast, 1)  # ties
        head = int(rng.integers(0, n + 1))
        slow = rng.normal(-2.0, rng.choice([1e-13, 0.05, 1.0, 30.0]), head) if head else None
        alpha = float(rng.choice([0.0, 1.0, rng.uniform()]))
        order, score = rank_candidates(fast, slow, alpha)
        assert sorted(order) == list(range(n))
        assert np.all(np.diff(score) <= 0), (case, score)
        assert sorted(order[:head]) == list(range(head))  # the head is a permutation of the Fast top-K
        np.testing.assert_array_equal(order[head:], np.arange(head, n))  # the tail keeps Fast order...
        np.testing.assert_array_equal(score[head:], fast[head:])  # ... and its cosine
        assert np.all((score[:head] > 1.0) & (score[:head] < 2.0))
        if head:
            np.testing.assert_array_equal(order[:head], np.argsort(-blend(fast[:head], slow, alpha), kind="stable"))


def test_rank_candidates_keeps_far_out_scores_in_range() -> None:
    fast = np.array([1.0000001, 0.5, -1.0000001])  # float rounding of unit vectors
    order, score = rank_candidates(fast, None, 0.0)
    assert list(score) == [1.0, 0.5, -1.0]
    order, score = rank_candidates(np.linspace(1, 0, 5000), np.linspace(-50, 50, 2000), 0.0)
    assert np.all(np.diff(score) <= 0) and score[1999] >= 1.0 >= score[2000]


@pytest.mark.parametrize(
    "k, rerank, alpha", [(10, 0, None), (6, 3, 0.0), (6, 3, 0.4), (6, 3, 1.0), (12, 5, 0.0), (3, 8, 0.0), (3, 8, 0.6), (8, 8, 0.2)]
)
def test_score_never_rises_with_rank(setup: tuple[Searcher, NativeFast, NativeSlow], k: int, rerank: int, alpha: float | None) -> None:
    """Issue 9: with `-k 6 --rerank 3` ranks 4-6 scored 0.5 and ranks 1-3 about -2.1."""
    searcher, _, _ = setup
    for query in QUERIES:
        results = searcher.search(query, k=k, rerank=rerank, alpha=alpha)
        scores = [r.score for r in results]
        assert scores == sorted(scores, reverse=True), (query, scores)
        assert [r.rank for r in results] == list(range(1, k + 1))
        assert all((r.score > 1.0) == (r.slow_score is not None) for r in results)


def test_alpha_one_keeps_fast_order(setup: tuple[Searcher, NativeFast, NativeSlow]) -> None:
    searcher, _, _ = setup
    for query in QUERIES:
        plain = searcher.search(query, k=8)
        mixed = searcher.search(query, k=8, rerank=8, alpha=1.0)
        assert [r.id for r in mixed] == [r.id for r in plain]
        assert all(r.slow_score is not None for r in mixed)


def test_k_larger_than_item_count(setup: tuple[Searcher, NativeFast, NativeSlow]) -> None:
    searcher, _, _ = setup
    results = searcher.search("a dog on the beach", k=1000, rerank=500)
    assert len(results) == searcher.index.count == 45
    assert sorted(r.id for r in results) == sorted(searcher.index.items["id"])
    assert [r.rank for r in results] == list(range(1, 46))


@pytest.mark.parametrize("query", ["", "   ", "\t\n", "?!...", "-- ** --", "\x00\x01"])
def test_empty_or_punctuation_query_is_usage_error(setup: tuple[Searcher, NativeFast, NativeSlow], query: str) -> None:
    searcher, _, _ = setup
    with pytest.raises(UsageError) as exc:
        searcher.search(query)
    assert "\n" not in str(exc.value) and "no words" in str(exc.value)
    with pytest.raises(UsageError):
        searcher.search_many(["a dog", query])


def test_check_query() -> None:
    assert check_query("  a\tdog \n on  the beach ") == "a dog on the beach"
    assert check_query("café") == "café"
    assert check_query("狗") == "狗"
    with pytest.raises(UsageError, match="keep it under"):
        check_query("dog " * 400)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"k": 0}, "-k"), ({"rerank": -1}, "--rerank"), ({"rerank": 3, "alpha": 1.5}, "--alpha"), ({"ef": 0}, "ef")],
)
def test_bad_options(setup: tuple[Searcher, NativeFast, NativeSlow], kwargs: dict, match: str) -> None:
    searcher, _, _ = setup
    with pytest.raises(FastslowError, match=match):
        searcher.search("a dog", **kwargs)


def test_rerank_needs_slow_and_other_models_refused(index_kit, setup: tuple[Searcher, NativeFast, NativeSlow]) -> None:
    searcher, fast, slow = setup
    fast_only = Searcher(searcher.index, fast, None)
    assert len(fast_only.search("a dog", k=3)) == 3
    with pytest.raises(UsageError, match="Slow model"):
        fast_only.search("a dog", k=3, rerank=5)
    store_models = index_kit.make_models(store_of(searcher), fast_hash="fast-b", slow_hash="slow-b")
    with pytest.raises(FastslowError, match="models/fast-b"):
        Searcher(searcher.index, store_models[0], slow)
    with pytest.raises(FastslowError, match="models/slow-b"):
        Searcher(searcher.index, fast, store_models[1])


def test_result_json_fields(setup: tuple[Searcher, NativeFast, NativeSlow]) -> None:
    searcher, _, _ = setup
    row = searcher.search("a dog", k=1, rerank=2)[0].to_json()
    assert list(row) == ["query", "rank", "id", "path", "kind", "score", "fast_score", "slow_score", "timestamp", "missing",
                         "relevance", "fast_rank"]
    assert row["rank"] == 1 and isinstance(row["slow_score"], float) and row["relevance"] is None  # uncalibrated models


def test_fast_rank_is_the_rank_before_re_ranking(setup: tuple[Searcher, NativeFast, NativeSlow]) -> None:
    searcher, _, _ = setup
    fast_order = [r.id for r in searcher.search("a red circle", k=8)]
    assert [r.fast_rank for r in searcher.search("a red circle", k=8)] == list(range(1, 9))
    reranked = searcher.search("a red circle", k=8, rerank=6)
    assert [fast_order.index(r.id) + 1 for r in reranked] == [r.fast_rank for r in reranked]
    assert sorted(r.fast_rank for r in reranked[:6]) == list(range(1, 7))  # the head is the Fast top 6, reordered
    assert [r.fast_rank for r in reranked[6:]] == [7, 8]
    assert [r.rank for r in reranked] != [r.fast_rank for r in reranked]  # re-ranking moved something


@pytest.mark.parametrize("query", ["zzz qqq", "狗", "zebra 🦓 !", "Xylophone"])
def test_a_query_of_unknown_words_is_warned_about(setup: tuple[Searcher, NativeFast, NativeSlow], query: str) -> None:
    """Issue 9: such a query reads as [UNK] alone and got confident, arbitrary results silently."""
    searcher, fast, _ = setup
    warning = searcher.vocabulary_warning(query)
    assert warning == (
        f"no word of {query!r} is known to the Fast model (it knows only words of the training captions): "
        "results are arbitrary"
    )
    assert "Fast and Slow models (they know" in searcher.vocabulary_warning(query, rerank=5)
    assert len(searcher.search(query, k=3)) == 3  # still answered


@pytest.mark.parametrize("query", ["a zebra", "RED circle!", "dog 🦓"])
def test_a_query_with_a_known_word_is_not_warned_about(setup: tuple[Searcher, NativeFast, NativeSlow], query: str) -> None:
    searcher, _, _ = setup
    assert searcher.vocabulary_warning(query) is None and searcher.vocabulary_warning(query, rerank=5) is None


def test_models_without_a_word_vocabulary_are_not_checked(setup: tuple[Searcher, NativeFast, NativeSlow]) -> None:
    """Hugging Face adapters (no `query_words`): sub-word tokenizers know every word in pieces."""
    searcher, fast, slow = setup

    class SubWords:
        identity = fast.identity
        encode_texts = fast.encode_texts

    assert Searcher(searcher.index, SubWords(), slow).vocabulary_warning("zzz qqq") is None


def test_results_whose_file_is_gone_are_flagged(index_kit, tmp_path: Path) -> None:
    store = index_kit.make_store(tmp_path, count=6)
    fast, slow = index_kit.make_models(store)
    build_index(store, tmp_path / "index" / "main", fast, slow)
    searcher = Searcher(SearchIndex.open(tmp_path / "index" / "main"), fast, slow)
    gone = store.entries()["item004.png"]
    Path(gone.path).unlink()
    results = searcher.search("a dog", k=6, rerank=3)
    assert len(results) == 6
    assert [r.id for r in results if r.missing] == ["item004.png"]
    assert next(r for r in results if r.missing).to_json()["missing"] is True


def calibrated(searcher: Searcher, fast: Calibration | None, slow: Calibration | None) -> Searcher:
    """A Searcher over the same index whose models carry these calibrations (the fixture's stay as they are)."""
    import copy

    f, s = copy.copy(searcher.fast), copy.copy(searcher.slow)
    f.calibration, s.calibration = fast, slow
    return Searcher(searcher.index, f, s)


FAST_CAL = Calibration(a=8.0, b=-2.0, input="fast_score", items=45, fit_items=45, fit_queries=45)
SLOW_CAL = Calibration(a=3.0, b=9.0, input="slow_score", items=45, fit_items=45, fit_queries=45)


@pytest.mark.parametrize("rerank", [0, 4])
def test_relevance_is_the_slow_calibration_for_the_head_and_the_fast_one_for_the_tail(
    setup: tuple[Searcher, NativeFast, NativeSlow], rerank: int
) -> None:
    searcher = calibrated(setup[0], FAST_CAL, SLOW_CAL)
    results = searcher.search(QUERIES[0], k=10, rerank=rerank)
    assert sum(r.slow_score is not None for r in results) == rerank
    for r in results:
        want = SLOW_CAL(r.slow_score) if r.slow_score is not None else FAST_CAL(r.fast_score)
        assert r.relevance == pytest.approx(float(want)) and 0.0 <= r.relevance <= 1.0
    assert key(results) == key(setup[0].search(QUERIES[0], k=10, rerank=rerank))  # nothing else changed
    assert all(r.relevance is None for r in setup[0].search(QUERIES[0], k=10, rerank=rerank))  # uncalibrated models


def test_min_score_drops_results_below_it_and_keeps_the_rest_as_they_were(
    setup: tuple[Searcher, NativeFast, NativeSlow]
) -> None:
    searcher = calibrated(setup[0], FAST_CAL, SLOW_CAL)
    full = searcher.search(QUERIES[1], k=12, rerank=5)
    relevances = sorted(r.relevance for r in full)
    cut = relevances[len(relevances) // 2]  # half of them stay
    kept = searcher.search(QUERIES[1], k=12, rerank=5, min_score=cut)
    assert 0 < len(kept) < len(full)
    assert [r.to_json() for r in kept] == [r.to_json() for r in full if r.relevance >= cut]  # ranks, order, fields
    assert searcher.search(QUERIES[1], k=12, rerank=5, min_score=0.0) == full
    assert searcher.search_many(QUERIES[:2], k=12, rerank=5, min_score=cut)[1] == kept


def test_min_score_needs_calibrated_models_and_a_probability(setup: tuple[Searcher, NativeFast, NativeSlow]) -> None:
    with pytest.raises(FastslowError, match=r"Fast model models/fast-a has none .*run `fastslow calibrate fast-a --captions FILE`"):
        setup[0].search(QUERIES[0], min_score=0.5)
    only_fast = calibrated(setup[0], FAST_CAL, None)
    assert only_fast.search(QUERIES[0], min_score=0.0)  # the Slow model is not used without --rerank
    with pytest.raises(FastslowError, match=r"Slow model models/slow-a has none"):
        only_fast.search(QUERIES[0], rerank=3, min_score=0.5)
    with pytest.raises(UsageError, match="between 0 and 1"):
        only_fast.search(QUERIES[0], min_score=1.5)


def test_slow_memory_of_a_model_with_an_unresolved_finest_level(index_kit, tmp_path: Path) -> None:
    """A Slow model made without training (config `finest_level` None, e.g. saved straight
    from a config) resolves its finest level when encoding, as its forward pass does."""
    import torch

    from fastslow_cli.models.slow import SlowConfig, SlowModel

    store = index_kit.make_store(tmp_path, count=4)
    _, trained = index_kit.make_models(store)
    config = SlowConfig(level_shapes=[list(s) for s in store.manifest()["levels"]], vocab_size=trained.tokenizer.vocab_size,
                        width=32, heads=2, coarse_layers=1, refine_layers=1, decoder_layers=1)
    assert config.finest_level is None
    slow = NativeSlow(SlowModel(config), trained.tokenizer, identity=trained.identity, device=torch.device("cpu"))
    table = store.load(sorted(store.entries()))
    memories = slow.encode_items(table)
    h, w = config.level_shapes[config.resolve_finest_level()][:2]
    assert [m.shape for m in memories] == [(int(t) * h * w, 32) for t in table.frames]
    assert slow.score(["a red circle"], memories).shape == (1, 4)
