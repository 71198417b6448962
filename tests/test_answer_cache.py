"""The web server's answer cache and the weak-query log (issue 18, section 1's log meets section 2's speed).

Counting a weakly covered text query ("guitar" on a library that has no class for it) used to commit to the
catalogue, which changed its data_version, which emptied the server's cached answers: a site where many people
type unknown words lost its cache. The log now lives in a file of its own (SQLite catalogues), so answers stay
cached, while every asking of a weak query is still counted (a cached answer too) and written before a clean
stop. And the catalogue's change counter, read in any thread, compares with one read in another (SQLite's own
counter is per connection)."""
from __future__ import annotations

import threading

import pytest

from test_vocabulary_cli import tones_library  # noqa: F401 - the fixture


def test_a_weak_query_keeps_the_cached_answers_and_is_counted_every_time(tones_library):  # noqa: F811
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nels.web.app import create_app

    lib = tones_library
    with TestClient(create_app(lib.path)) as c:
        st = c.app.state.nels
        first = c.get("/api/search", params={"q": "low tone", "k": 3})
        assert first.status_code == 200 and first.json()["coverage"]["covered"] is True
        stamp = lib.data_version()
        for _ in range(2):  # asked twice: the second answer comes from the cache
            d = c.get("/api/search", params={"q": "guitar", "k": 3}).json()
            assert d["coverage"]["covered"] is False and d["notice"].startswith("NELS has no class for 'guitar'")
        assert lib.data_version() == stamp, "counting a weak query changed the catalogue"
        hits = st.results.hits
        assert c.get("/api/search", params={"q": "low tone", "k": 3}).content == first.content
        assert st.results.hits == hits + 1, "the cached answer was lost after a weak query"
        assert c.get("/api/search", params={"q": "Guitar ", "k": 3}).status_code == 200  # a third asking
    # the server has stopped (cleanly): every asking is in the log
    logged = {r["query"]: r for r in lib.catalogue.weak_queries()}
    assert set(logged) == {"guitar"} and logged["guitar"]["count"] == 3
    assert logged["guitar"]["best_label"] in ("low tone", "middle tone", "high tone")


def test_an_ingest_still_retires_the_cached_answers(tones_library, tmp_path):  # noqa: F811
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nels.ingest.runner import IngestOptions, ingest
    from nels.web.app import create_app

    from conftest import write_wav
    from test_vocabulary_cli import tone

    lib = tones_library
    with TestClient(create_app(lib.path)) as c:
        before = c.get("/api/search", params={"q": "high tone", "k": 10}).json()
        write_wav(tmp_path / "more" / "t9-3000.wav", tone(3000, seed=9))
        rep = ingest(lib, [str(tmp_path / "more")], model="tones", options=IngestOptions(progress=False))
        assert len(rep.added) == 1
        after = c.get("/api/search", params={"q": "high tone", "k": 10}).json()
        assert {r["clip_id"] for r in after["results"]} - {r["clip_id"] for r in before["results"]} == set(rep.added)


def test_the_change_counter_compares_across_threads(tones_library):  # noqa: F811
    cat = tones_library.catalogue
    seen = {}

    def read(name):
        seen[name] = cat.data_version()

    def in_thread(name):
        t = threading.Thread(target=read, args=(name,))
        t.start()
        t.join()

    in_thread("a")
    read("main")
    in_thread("b")  # a thread whose connection opens after the others
    assert seen["a"] == seen["main"] == seen["b"]
    cat.set_meta("test.answer_cache", "1")  # a commit, on this thread's connection
    in_thread("c")
    read("main after")
    assert seen["c"] == seen["main after"] != seen["main"]


def test_queries_logged_in_the_catalogue_move_to_the_log_file(tones_library):  # noqa: F811
    """A library from before the log had its own file: its counts move there (added up), once."""
    from nels.library import Library

    lib = tones_library
    path = lib.path
    lib.catalogue.log_weak_query("zither", 0.2, "high tone", now=100.0)  # opens (creates) the log file
    lib.close()
    with Library(path) as old:  # what an older nels left in the catalogue's own table
        with old.catalogue.transaction() as c:
            c.execute("INSERT INTO query_log(query, count, best_score, best_label, first_at, last_at)"
                      " VALUES ('zither', 4, 0.2, 'high tone', 50.0, 90.0), ('kazoo', 2, 0.1, NULL, 60.0, 70.0)")
    with Library(path) as new:
        rows = {r["query"]: r for r in new.catalogue.weak_queries()}
        assert {q: r["count"] for q, r in rows.items()} == {"zither": 5, "kazoo": 2}
        assert (rows["zither"]["first_at"], rows["zither"]["last_at"]) == (50.0, 100.0)
        assert new.catalogue.conn.execute("SELECT COUNT(*) FROM query_log").fetchone()[0] == 0
        assert new.catalogue.query_log_file.is_file()
    with Library(path) as again:  # moved once: opening again adds nothing
        assert {r["query"]: r["count"] for r in again.catalogue.weak_queries()} == {"zither": 5, "kazoo": 2}


def test_a_weak_query_answered_while_the_server_stops_is_still_counted(tones_library):  # noqa: F811
    from nels.web.state import AppState

    st = AppState(tones_library.path)
    res = st.lib.search(text="guitar", k=3, log_weak=False)
    st.close()  # its log thread is done
    st.log_weak("guitar", res.coverage)
    st.log_weak("low tone", st.lib.search(text="low tone", k=3, log_weak=False).coverage)  # covered: not logged
    assert [(r["query"], r["count"]) for r in tones_library.catalogue.weak_queries()] == [("guitar", 1)]
    st.lib.close()


def test_an_app_served_again_after_a_stop_still_answers(tones_library):  # noqa: F811
    """A stopped app's worker threads are shut down; serving the same app again (a test client after another,
    an embedding server's restart) must open them again, not answer 500 'cannot schedule new futures'."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nels.web.app import create_app

    app = create_app(tones_library.path)
    for q in ("low tone", "guitar"):  # served, stopped, served again; the second one a weak (logged) query
        with TestClient(app) as c:
            r = c.get("/api/search", params={"q": q, "k": 3})
            assert r.status_code == 200, r.text
    logged = {r["query"]: r["count"] for r in tones_library.catalogue.weak_queries()}
    assert logged == {"guitar": 1}
