"""The crawl planner's seed URLs: the AudioSet ontology's positive-example videos (the shipped table, checked
against the ontology when ../shared has it) and a user's own, planned once each from the class's budget; crawled
and ingested from a loopback site, and a URL that cannot be fetched is recorded as failed and not retried
forever. Nothing here touches the network (YouTube seeds are only planned, never fetched)."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from videosite import VideoSite, synthetic_videos

from nels.errors import NelsError
from nels.learn import planner
from nels.store.catalogue import Catalogue
from nels.store.library import Library

ONTOLOGY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "audioset-ontology" / "ontology.json"


def test_shipped_examples_are_the_ontologys():
    if not ONTOLOGY.exists():
        pytest.skip("no ../shared/datasets/audioset-ontology")
    fresh = planner.build_examples(ONTOLOGY)
    shipped = json.loads(planner.AUDIOSET_EXAMPLES.read_text())
    assert shipped["classes"] == fresh["classes"] and "CC BY-SA 4.0" in shipped["licence"]
    rows = json.loads(ONTOLOGY.read_text())
    assert len(fresh["classes"]) == sum(1 for r in rows if r["positive_examples"])


def test_seed_urls_of_audioset_and_esc50_classes():
    table = planner.audioset_examples()
    assert all(u.startswith("https://youtu.be/") for urls in table.values() for u in urls)
    seeds = planner.seed_urls(["dog", "whistle", "Beep", "low hum"])
    assert "low hum" not in seeds  # no AudioSet class of that name: no seeds
    assert seeds["whistle"] == list(table["Whistle"])  # the AudioSet class of that name
    assert seeds["Beep"] == list(table["Beep, bleep"])  # ... or of one of its synonyms
    dog, bark = table["Dog"], table["Bark"]  # ESC-50 "dog" is linked to Dog and Bark: taken in turn
    assert seeds["dog"][:4] == [dog[0], bark[0], dog[1], bark[1]] and set(seeds["dog"]) == set(dog) | set(bark)
    own = planner.seed_urls(["dog"], extra={"dog": ["https://example.org/v/1"]})["dog"]
    assert own[0] == "https://example.org/v/1" and len(own) == len(seeds["dog"]) + 1  # the user's own first
    assert planner.seed_urls(["dog"], examples={}) == {}  # examples switched off
    assert planner.audioset_examples(str(Path("/nonexistent/examples.json"))) == {}  # no table: no seeds, no error


def test_seed_file_is_checked(tmp_path):
    good = tmp_path / "seeds.json"
    good.write_text(json.dumps({"dog": ["https://example.org/a"]}))
    assert planner.read_seed_file(good) == {"dog": ["https://example.org/a"]}
    for bad in ('["https://example.org/a"]', '{"dog": ["ftp://x/y"]}', "{not json"):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(NelsError):
            planner.read_seed_file(tmp_path / "bad.json")


def test_seeds_take_part_of_the_class_budget_once(tmp_path):
    cat = Catalogue(tmp_path / "nels.db")
    planner.ensure_queries(cat, ["whistle", "low hum"])
    seeds = planner.seed_urls(["whistle", "low hum"], extra={"low hum": [f"https://example.org/{i}" for i in range(2)]})
    assert planner.ensure_seeds(cat, seeds) == len(seeds["whistle"]) + 2
    first = planner.plan(cat, ["whistle", "low hum"], {}, per_cycle=8, seeds=seeds)
    assert sum(p.n for p in first) == 8  # seeds count in the budget
    for label in ("whistle", "low hum"):
        mine = [p for p in first if p.label == label]
        urls = [p.query for p in mine if p.kind == "url"]
        assert 1 <= len(urls) <= sum(p.n for p in mine) // 2  # at most half of the class's share
        assert urls == seeds[label][:len(urls)]  # in the seeds' order
        assert any(p.kind == "search" for p in mine)
    assert all(p.query.startswith("https://youtu.be/") for p in first if p.kind == "url" and p.label == "whistle")
    for p in first:  # the crawl step notes each run
        cat.note_crawl(p.query, p.n)
    again = [p.query for p in planner.plan(cat, ["whistle", "low hum"], {}, per_cycle=8, seeds=seeds)]
    assert not set(again) & {p.query for p in first if p.kind == "url"}  # a seed is planned once
    assert [p for p in planner.plan(cat, ["whistle"], {}, per_cycle=8, seeds={}) if p.kind == "url"] == []  # off
    assert planner.primary_queries(cat)["low hum"] == "low hum"
    cat.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_seed_urls_are_fetched_and_failures_recorded_not_retried_forever(tmp_path, monkeypatch):
    from nels.learn.run import Context, RunOptions, step_crawl, step_ingest, step_plan

    monkeypatch.setenv("NELS_MODEL", "default")
    classes = {"low hum": 200.0, "whistle": 2500.0}
    with VideoSite(synthetic_videos(classes, per_class=3, distractors=0, seed=5, title_accuracy=1.0)) as site:
        monkeypatch.setenv("NELS_YTDLP_SEARCH", site.search_template)
        good = f"{site.base}/watch/low-hum-2"
        missing = f"{site.base}/watch/no-such-video"  # a removed video: 404
        refused = f"http://127.0.0.1:{_closed_port()}/watch/x"  # an unreachable host
        seeds = tmp_path / "seeds.json"
        seeds.write_text(json.dumps({"low hum": [good, missing, refused]}))
        lib = Library(tmp_path / "lib")
        lib.set_meta("run.dataset_labels", list(classes))
        ctx = Context(lib, RunOptions(seed_urls=str(seeds), audioset_examples=False, allow_private=True, rate=100.0,
                                      retries=2, per_cycle=12), tmp_path / "run.log", echo=False)
        def steps(cycle, *funcs):
            for step in funcs:
                lib.catalogue.step_start(cycle, step.__name__[5:])
                status, detail = step(ctx, cycle)
                lib.catalogue.step_finish(cycle, step.__name__[5:], status, detail)

        steps(1, step_plan, step_crawl, step_ingest)
        planned = lib.catalogue.step_detail(1, "plan")["detail"]["queries"]
        assert [q[0] for q in planned if q[3] == "url"] == [good, missing, refused]  # half of low hum's 6
        assert lib.catalogue.step_detail(1, "crawl")["detail"]["seed_urls"] == 3
        hits = dict(site.hits)
        steps(2, step_plan, step_ingest)  # the next cycle: the seeds are not planned, the failed ones not fetched
        assert not [q for q in lib.catalogue.step_detail(2, "plan")["detail"]["queries"] if q[3] == "url"]
        assert lib.catalogue.step_detail(2, "ingest")["detail"]["added"] == 0 and site.hits == hits
        clips = {r[0]: (r[1], r[2]) for r in lib.catalogue.clips(("source_uri", "query", "title"))}
        assert clips[good][0] == "low hum" and clips[good][1].startswith("low hum sound 2")  # under the name query
        assert len(lib.catalogue.clips_by_query()["low hum"]) >= 1  # so it counts in the class's pool
        failures = {f["uri"]: f for f in lib.stats()["failures"]}
        assert set(failures) == {missing, refused} and all(f["error"] for f in failures.values())  # with the reason
        assert all(1 <= f["attempts"] <= 2 for f in failures.values())  # --retries 2 at most
        due = {r["uri"] for r in lib.catalogue.pending_crawl_items(2, now=1e12)}
        assert not due & {missing, refused}  # never due again, whenever the next cycle runs
        lib.close()
