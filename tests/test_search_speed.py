"""The faster search paths give exactly what the plain ones gave (issue 14's latency work: rankings unchanged).

Each test compares an optimised piece with a straightforward reference on data made here: the k-NN merge of a
query's windows, the relevance inputs of fused candidates, the threshold algorithm on a label-major
probability matrix, an audio query decoded once per sample rate, and FAISS searches of a few vectors on one
thread.
"""
import numpy as np
import pytest

from nels.search import calibration, linguistic, query
from nels.search.results import Candidate, nearest_segments


# -- the k-NN of a query's windows, merged per segment --------------------------------------------------------
def _nearest_reference(scores, ids, n):
    best: dict[int, float] = {}
    for srow, irow in zip(scores, ids):
        for s, i in zip(srow, irow):
            if i >= 0 and s > best.get(int(i), -2.0):
                best[int(i)] = float(s)
    return sorted(best.items(), key=lambda kv: -kv[1])[:n]


class _FixedStore:
    def __init__(self, scores, ids):
        self.scores, self.ids = scores, ids

    def search(self, queries, k):
        return self.scores, self.ids


@pytest.mark.parametrize("seed", range(6))
def test_nearest_segments_is_the_per_segment_best_in_first_found_order(seed):
    rng = np.random.default_rng(seed)
    nq, k = rng.integers(1, 6), int(rng.integers(1, 40))
    ids = rng.integers(-1, 30, size=(nq, k))  # repeats across windows, missing neighbours (-1)
    scores = np.round(rng.uniform(-1, 1, size=(nq, k)), 1).astype(np.float32)  # many exact ties
    scores[ids < 0] = -np.inf
    for n in (1, 5, 100):
        got = nearest_segments(_FixedStore(scores, ids), None, n)
        assert got == _nearest_reference(scores, ids, n)
        assert all(type(i) is int and type(s) is float for i, s in got)
    assert nearest_segments(_FixedStore(np.full((2, 3), -np.inf, np.float32), -np.ones((2, 3), np.int64)), None, 5) == []


# -- relevance inputs of fused candidates ----------------------------------------------------------------------
def _values_reference(c, part_features, fills):
    feats = sorted(set(part_features.values()))
    values = {f: fills.get(f, 0.0) for f in feats}
    seen: set[str] = set()
    for key, v in (c.parts or {}).items():
        f = part_features.get(key)
        if f is not None:
            values[f] = max(float(v), values[f]) if f in seen else float(v)
            seen.add(f)
    return values


def test_attach_values_are_each_features_best_part_over_its_fill():
    rng = np.random.default_rng(3)
    # two classifiers' linguistic parts share no feature; two acoustic spaces' parts share one on purpose
    part_features = {"linguistic:a": "linguistic:softmax", "linguistic:b": "linguistic:yamnet",
                     "acoustic:x": "acoustic:cnn", "acoustic:y": "acoustic:cnn", "joint": "joint_text:joint"}
    fills = {"linguistic:softmax": 0.05, "acoustic:cnn": 0.3, "joint_text:joint": 0.2}  # one feature unfilled
    cands = []
    for i in range(300):
        keys = [k for k in part_features if rng.random() < 0.5] + (["other"] if rng.random() < 0.2 else [])
        cands.append(Candidate(i, 0.0, "", {k: float(rng.uniform(0, 1)) for k in keys}))
    cands.append(Candidate(999, 0.0, "", {}))
    cands.append(Candidate(1000, 0.0, "", {"acoustic:y": 0.01}))  # a part below the fill replaces it
    calibration.attach(cands, part_features, fills)
    for c in cands:
        assert c.values == _values_reference(c, part_features, fills)
        assert list(c.values) == sorted(set(part_features.values()))
    assert cands[-1].values["acoustic:cnn"] == 0.01
    assert all(c.relevance is not None for c in cands)


# -- the threshold algorithm on a label-major probability matrix ------------------------------------------------
@pytest.mark.parametrize("depth", [None, 64, 300])
def test_top_segments_same_on_a_label_major_matrix_and_as_scoring_everything(depth):
    rng = np.random.default_rng(7)
    n_seg, n_lab = 3000, 40
    probs = rng.dirichlet(np.full(n_lab, 0.2), size=n_seg).astype(np.float32)
    probs[100:400] = probs[100]  # near-duplicates tie
    members = np.eye(n_lab, dtype=bool)
    members = np.concatenate([members, rng.random((15, n_lab)) < 0.15])  # concepts covering several labels
    order = linguistic.label_order(probs, depth=depth)
    order_f = linguistic.label_order(np.asfortranarray(probs), depth=depth)
    assert np.array_equal(order, order_f)
    for q in range(12):
        sims = rng.uniform(0, 0.8, size=len(members))
        w = linguistic.label_weights(sims)
        for n in (10, 200):
            rows_c, s_c = linguistic.top_segments(w, probs, n, order=order, members=members)
            rows_f, s_f = linguistic.top_segments(w, np.asfortranarray(probs), n, order=order_f, members=members)
            assert np.array_equal(rows_c, rows_f) and np.array_equal(s_c, s_f)
            full = linguistic.score(w, probs, members)
            assert np.array_equal(full[rows_c], s_c)
            assert s_c[-1] >= np.sort(full)[::-1][min(n, len(full)) - 1]  # exactly the n best scores


# -- an audio query: decoded once per rate ---------------------------------------------------------------------
class _Enc:
    def __init__(self, name, sr):
        self.name, self.sample_rate = name, sr


def test_an_audio_query_is_decoded_once_per_sample_rate(monkeypatch):
    decoded = []

    def fake_query_audio(audio, start, end, sr):
        decoded.append((audio, start, end, sr))
        return np.full(sr // 1000, sr / 1000, np.float32), sr

    monkeypatch.setattr(query, "query_audio", fake_query_audio)
    encs = [_Enc("cnn", 16000), _Enc("yamnet", 16000), _Enc("tones", 8000)]
    got = query.query_waveforms(encs, "q.wav", 1.0, 3.0)
    assert decoded == [("q.wav", 1.0, 3.0, 16000), ("q.wav", 1.0, 3.0, 8000)]
    assert [(sr, float(x.sum())) for x, sr in got] == [(16000, 256.0), (16000, 256.0), (8000, 64.0)]
    assert got[0][0] is got[1][0]  # the same decoded waveform, not a second decoding


# -- FAISS: a few vectors on the calling thread ----------------------------------------------------------------
def test_a_search_of_a_few_vectors_runs_on_one_thread_and_gives_the_batch_results(monkeypatch):
    faiss = pytest.importorskip("faiss")
    from nels.store import vectors

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(10, 3010, dtype=np.int64)
    store = vectors.FaissStore(32, hnsw_threshold=1000)
    store.build(ids, x)
    assert store.kind == "hnsw"
    q = x[:vectors.ONE_THREAD_BELOW + 8]
    seen = []

    class Spy:  # the index, noting how many OpenMP threads each search may use
        def __init__(self, index):
            self.index = index

        def search(self, qs, k):
            seen.append((len(qs), faiss.omp_get_max_threads()))
            return self.index.search(qs, k)

    monkeypatch.setattr(store, "index", Spy(store.index))
    before = faiss.omp_get_max_threads()
    few = store.search(q[:5], 50)
    batch = store.search(q, 50)
    assert faiss.omp_get_max_threads() == before  # restored for what this thread runs next
    assert seen == [(5, 1), (len(q), before)]
    assert np.array_equal(few[1], batch[1][:5]) and np.array_equal(few[0], batch[0][:5])
