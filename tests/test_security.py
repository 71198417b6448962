"""Issue 17, hostile input and hostile users: each test is the regression test of one finding of the outside
probe (SSRF past the first hop, stored XSS through /media, poison audio, NaN queries, the spectrogram cache,
the address guard, huge ids, what anonymous users see, Host checks, the feedback rate limit).

Real parts only: HTTP servers on loopback (127.0.0.1 is "internal"; 127.0.0.2, also loopback, is marked
"public" by replacing the guard's policy `nels.sources.guard.is_allowed`), real files, real decoding."""
from __future__ import annotations

import ipaddress
import json
import socket
import sqlite3
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from devserver import Server, build_library, synth_sounds, wav_bytes
from hostile import HTML, Site, audio, float_wav, html_wav, noise, page, pcm16_wav, poison_files, redirect

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import nels.sources.guard as guard  # noqa: E402
from nels.errors import QueryError, SourceError  # noqa: E402
from nels.ingest.runner import IngestOptions, crawl, ingest  # noqa: E402
from nels.library import Library  # noqa: E402

TOKEN = "t0ken-for-security-tests"
PUBLIC = ipaddress.ip_address("127.0.0.2")


@pytest.fixture
def public_127_0_0_2(monkeypatch):
    """The guard's policy, with 127.0.0.2 (loopback) treated as a public address and everything else as usual."""
    monkeypatch.setattr(guard, "is_allowed", lambda ip: ip == PUBLIC or guard.default_is_allowed(ip))


@pytest.fixture
def sites(public_127_0_0_2):
    """(internal, public): two loopback servers; the internal one holds a secret, the public one is the
    attacker's (its routes are set by each test)."""
    internal = Site("127.0.0.1", {"/secret.wav": audio(pcm16_wav(noise(3.0, 11)))})
    public = Site("127.0.0.2")
    yield internal, public
    internal.close()
    public.close()


def _ingest(lib, urls, **kw):
    return ingest(lib, urls, model="baseline", options=IngestOptions(progress=False, retries=1, **kw),
                  allow_private=False)


# -- 1. SSRF after the first hop ----------------------------------------------------------------------------------
def test_a_redirect_to_an_internal_address_is_refused_at_that_hop(tmp_path, sites):
    internal, public = sites
    public.routes.update({"/go": redirect(f"{internal.url}/secret.wav"),
                          "/go-public": redirect("/ok.wav"), "/ok.wav": audio(pcm16_wav(noise(3.0, 12)))})
    lib = Library(tmp_path / "lib")
    rep = _ingest(lib, [f"{public.url}/go"])
    assert not rep.added and internal.hits == []  # the internal server was never asked
    (uri, error), = rep.failed
    assert "refused" in error and "127.0.0.1" in error, error
    # a redirect that stays on public addresses is still followed
    rep = _ingest(lib, [f"{public.url}/go-public"])
    assert len(rep.added) == 1 and public.hits[-1] == "/ok.wav"
    assert lib.stats()["clips"] == 1 and internal.hits == []


def test_a_page_whose_audio_is_internal_is_refused(tmp_path, sites):
    """The generic extractor (yt-dlp) follows a page's <audio src>: through the guard proxy, the internal URL
    is refused; a page whose audio is public still works."""
    internal, public = sites
    public.routes.update({
        "/page.html": page(f'<html><body><audio src="{internal.url}/secret.wav"></audio></body></html>'),
        "/good.html": page('<html><body><audio src="/ok.wav"></audio></body></html>'),
        "/ok.wav": audio(pcm16_wav(noise(3.0, 13)))})
    lib = Library(tmp_path / "lib")
    rep = _ingest(lib, [f"{public.url}/page.html"])
    assert not rep.added and internal.hits == []
    (uri, error), = rep.failed
    assert "refused" in error and "127.0.0.1" in error, error
    rep = _ingest(lib, [f"{public.url}/good.html"])
    assert len(rep.added) == 1 and "/ok.wav" in public.hits and internal.hits == []


def test_dns_rebinding_cannot_move_the_connection_to_an_internal_address(tmp_path, public_127_0_0_2, monkeypatch):
    """A name that resolves to a public address when checked and to 127.0.0.1 right after: the connection
    goes to the address that was checked (pinned), never to the second answer."""
    for _ in range(20):  # the same port on both addresses, as one name would give
        public = Site("127.0.0.2", {"/a.wav": audio(pcm16_wav(noise(3.0, 14)))})
        try:
            internal = Site("127.0.0.1", {"/a.wav": audio(pcm16_wav(noise(3.0, 15)))}, port=public.port)
            break
        except OSError:
            public.close()
    else:
        pytest.skip("no port free on both loopback addresses")
    answers = iter(["127.0.0.2"])
    real = socket.getaddrinfo

    def rebinding_dns(host, port, *args, **kwargs):  # first answer public, every later one internal
        if host == "rebind.nels.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers, "127.0.0.1"), port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    try:
        lib = Library(tmp_path / "lib")
        rep = _ingest(lib, [f"http://rebind.nels.test:{public.port}/a.wav"])
        assert len(rep.added) == 1, rep.to_dict()
        assert public.hits == ["/a.wav"] and internal.hits == []
    finally:
        public.close()
        internal.close()


# -- 6. the address guard -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("addr", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                  "100.64.0.1", "100.100.100.200", "0.0.0.0", "255.255.255.255", "224.0.0.1",
                                  "::1", "::", "fe80::1", "fd00::1", "ff02::1", "::ffff:127.0.0.1",
                                  "::ffff:169.254.169.254", "2002:7f00:1::", "2002:a9fe:a9fe::1", "64:ff9b::7f00:1",
                                  "2001:0:4136:e378:8000:63bf:3fff:fdd2"])
def test_the_guard_refuses_every_non_global_form(addr):
    assert not guard.default_is_allowed(ipaddress.ip_address(addr))
    with pytest.raises(SourceError, match="refused"):
        guard.check_public_url(f"http://{'[' + addr + ']' if ':' in addr else addr}/x.wav")


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2002:0808:0808::1"])
def test_the_guard_allows_public_addresses(addr):
    assert guard.default_is_allowed(ipaddress.ip_address(addr))


@pytest.mark.parametrize("url", ["http://[::1", "http://example.org:99999/a.wav", "http://exa mple.org:-1/",
                                 "ftp://example.org/a.wav", "http:///a.wav", "javascript:alert(1)"])
def test_malformed_urls_are_clear_source_errors(url):
    with pytest.raises(SourceError):
        guard.check_public_url(url)


# -- 2. stored XSS through /media ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weblib(tmp_path_factory) -> Path:
    return build_library(tmp_path_factory.mktemp("seclib"))


@pytest.fixture
def own_lib(weblib, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(weblib, tmp_path / "library"))


def _client(library, **kw) -> TestClient:
    from nels.web.app import create_app

    return TestClient(create_app(library, admin_token=TOKEN, max_upload_bytes=2 * 1024 * 1024, **kw),
                      raise_server_exceptions=False)


ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def test_media_is_stored_by_decoded_format_and_never_served_as_a_page(own_lib, tmp_path, sites):
    internal, public = sites
    poly = html_wav(seed=21)
    (tmp_path / "x.html").write_bytes(poly)  # a valid WAV, named .html, with a page inside
    public.routes["/y.svg"] = audio(html_wav(seed=22), "audio/wav")  # an admin URL ingest ending .svg
    lib = Library(own_lib)
    rep = ingest(lib, [str(tmp_path / "x.html")], options=IngestOptions(progress=False))
    rep2 = _ingest(lib, [f"{public.url}/y.svg"])
    assert len(rep.added) == 1 and len(rep2.added) == 1, (rep.to_dict(), rep2.to_dict())
    for cid in rep.added + rep2.added:
        assert lib.catalogue.clip_media(cid)["media_path"].endswith(".wav")
    assert not list((own_lib / "media").rglob("*.html")) and not list((own_lib / "media").rglob("*.svg"))
    lib.close()
    with _client(own_lib) as c:
        for cid in rep.added + rep2.added:
            r = c.get(f"/media/{cid}")
            assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
            assert r.headers["content-security-policy"].startswith("sandbox")
            assert r.headers["x-content-type-options"] == "nosniff"
        # a library written before this fix holds x.html: it is a download now, never a page
        cid = rep.added[0]
        with sqlite3.connect(own_lib / "nels.db") as conn:
            old = conn.execute("SELECT media_path FROM clips WHERE id=?", (cid,)).fetchone()[0]
            new = old.rsplit(".", 1)[0] + ".html"
            (own_lib / old).rename(own_lib / new)
            conn.execute("UPDATE clips SET media_path=? WHERE id=?", (new, cid))
        r = c.get(f"/media/{cid}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"].startswith("attachment")
        assert r.headers["content-security-policy"].startswith("sandbox") and HTML in r.content


# -- 3. the poison file ----------------------------------------------------------------------------------------------
def _assert_no_poison_stored(lib_dir: Path) -> None:
    with sqlite3.connect(lib_dir / "nels.db") as conn:
        for (blob,) in conn.execute("SELECT vec FROM vectors"):
            assert np.isfinite(np.frombuffer(blob, np.float32)).all()
        for (blob,) in conn.execute("SELECT probs FROM probs"):
            assert np.isfinite(np.frombuffer(blob, np.float32)).all()
        assert conn.execute("SELECT COUNT(*) FROM items WHERE status='pending'").fetchone()[0] == 0
        media = {r[0] for r in conn.execute("SELECT media_path FROM clips")}
    on_disk = {str(p.relative_to(lib_dir)) for p in (lib_dir / "media").rglob("*") if p.is_file()}
    assert on_disk == media  # no orphan media file


def test_poison_audio_fails_clearly_and_the_batch_goes_on(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    expected = {}
    for name, (data, reason) in poison_files().items():
        (src / name).write_bytes(data)
        expected[name] = reason
    for i, kind in enumerate(["a", "b", "c"]):  # valid audio around the poison, in name order
        (src / f"{kind}_ok.wav").write_bytes(pcm16_wav(noise(3.0, 30 + i)))
    (src / "z_ok.wav").write_bytes(float_wav(noise(3.0, 40)))  # valid float audio is fine
    lib = Library(tmp_path / "lib")
    for model in ("baseline", None):  # None: the library's model again; a re-run must not die on the poison
        rep = ingest(lib, [str(src)], model=model, options=IngestOptions(progress=False))
        failed = {Path(u).name: e for u, e in lib.catalogue.failed_items(sorted(
            r[0] for r in lib.conn.execute("SELECT id FROM items")))}
        assert set(failed) == set(expected), failed
        for name, reason in expected.items():
            assert reason in failed[name], (name, failed[name])
    assert lib.stats()["clips"] == 4
    assert "digital silence" not in failed["nan_tail.wav"]
    lib.close()
    _assert_no_poison_stored(tmp_path / "lib")


def test_poison_audio_in_crawl_and_admin_jobs(tmp_path, http_server, monkeypatch, own_lib, sites):
    # a crawl (yt-dlp, through NELS_YTDLP_SEARCH on a local site) meets poison among good audio
    base, www, srv = http_server
    for name, (data, _) in poison_files().items():
        (www / name).write_bytes(data)
        srv.files.add(name)
    (www / "good.wav").write_bytes(pcm16_wav(noise(3.0, 50)))
    srv.files.add("good.wav")
    monkeypatch.setenv("NELS_YTDLP_SEARCH", base + "/search?q={query}&n={n}")
    lib = Library(tmp_path / "lib")
    for _ in range(2):  # and again: nothing re-crashes, nothing is added twice
        rep = crawl(lib, ["poison"], per_query=10, model="baseline",
                    options=IngestOptions(progress=False, rate_limit=1000))
        assert lib.stats()["clips"] == 1 and len(rep.failed) == 4, rep.to_dict()
    lib.close()
    _assert_no_poison_stored(tmp_path / "lib")
    # an admin ingest job of public URLs (127.0.0.2, marked public) holding poison: the job finishes
    internal, public = sites
    public.routes.update({"/huge.wav": audio(poison_files()["huge.wav"][0]), "/fine.wav": audio(pcm16_wav(noise(3.0, 51)))})
    with _client(own_lib) as c:
        r = c.post("/api/admin/ingest", json={"urls": [f"{public.url}/huge.wav", f"{public.url}/fine.wav"]},
                   headers=ADMIN)
        assert r.status_code == 202, r.text
        job = _wait_job(c, r.json()["id"])
    assert job["status"] == "done", job
    assert job["result"]["added"] == 1 and "absurd amplitude" in job["result"]["failed"][0]["error"]


def _wait_job(c, job_id, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = c.get(f"/api/admin/jobs/{job_id}", headers=ADMIN).json()
        if j["status"] in ("done", "failed"):
            return j
        time.sleep(0.05)  # polling the job's state (readiness), not waiting on a clock
    raise AssertionError(f"job {job_id} did not finish: {j}")


# -- 4. NaN audio as a query ----------------------------------------------------------------------------------------
def test_non_finite_query_audio_is_a_422_with_a_reason(weblib):
    with _client(weblib) as c:
        for name, (data, reason) in poison_files().items():
            r = c.post("/api/search", files={"audio": (name, data, "audio/wav")})
            assert r.status_code == 422, (name, r.status_code, r.text)
            assert reason in r.json()["error"]
    lib = Library(weblib)
    with pytest.raises(QueryError, match="non-finite"):
        lib.search(audio=np.full(16000, np.nan, np.float32))


# -- 5. the spectrogram cache -------------------------------------------------------------------------------------
def test_spectrogram_spans_are_clamped_and_the_cache_is_bounded(own_lib):
    with sqlite3.connect(own_lib / "nels.db") as conn:
        cid, duration = conn.execute("SELECT id, duration FROM clips ORDER BY id LIMIT 1").fetchone()
        spans = conn.execute("SELECT start, end FROM segments WHERE clip_id=? ORDER BY start", (cid,)).fetchall()
    cache = own_lib / "cache" / "spectrograms"
    with _client(own_lib) as c:
        for i in range(150):  # 150 distinct spans: drawn each time, never cached
            r = c.get(f"/api/spectrogram/{cid}.png", params={"start": i / 1000, "end": 1 + i / 997})
            assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
        assert len(list(cache.glob("*.png"))) == 1  # the clip's spectrogram, outlines drawn on it
        for a, b in spans:  # the site's own requests (a segment) are cached
            assert c.get(f"/api/spectrogram/{cid}.png", params={"start": a, "end": b}).status_code == 200
        assert len(list(cache.glob("*.png"))) == 1 + len(spans)
        r = c.get(f"/api/spectrogram/{cid}.png", params={"start": 0, "end": 1e308})  # clamped to the clip
        assert r.status_code == 200
        for params in ({"start": 1e308, "end": 2e308}, {"start": "inf", "end": 1}, {"start": "nan", "end": 1},
                       {"start": duration + 1, "end": duration + 2}, {"start": 2, "end": 1}):
            r = c.get(f"/api/spectrogram/{cid}.png", params=params)
            assert 400 <= r.status_code < 500 and r.json()["error"], (params, r.status_code, r.text)


def test_the_spectrogram_cache_forgets_the_least_recently_used(tmp_path):
    import os

    from nels.web.routes.clips import SpectrogramCache

    cache = SpectrogramCache(tmp_path, max_files=3, max_bytes=10_000)
    for i in range(3):
        cache.put(f"{i}.png", b"x" * 100)
        os.utime(tmp_path / f"{i}.png", (i, i))  # 0 oldest
    assert cache.get("0.png") is not None  # a hit makes 0 the newest
    cache.put("3.png", b"x" * 100)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["0.png", "2.png", "3.png"]
    cache.put("big.png", b"x" * 9_950)  # over the byte cap: older files go, the new one stays
    assert [p.name for p in tmp_path.glob("*.png")] == ["big.png"]


# -- 7. huge ids, infinite numbers, bad URLs ----------------------------------------------------------------------
@pytest.mark.parametrize("method,path,body", [
    ("GET", "/media/99999999999999999999999", None),
    ("GET", "/media/9223372036854775808", None),
    ("GET", "/api/clips/99999999999999999999999", None),
    ("GET", "/api/spectrogram/99999999999999999999999.png", None),
    ("GET", "/api/admin/jobs/99999999999999999999999", None),
    ("POST", "/api/feedback", {"query": "x", "clip_id": 2 ** 70, "relevant": True}),
    ("POST", "/api/feedback", {"query": "x", "clip_id": 1, "segment_id": 2 ** 64, "relevant": True}),
    ("GET", "/api/search?q=rain&min_duration=inf", None),
    ("GET", "/api/search?q=rain&max_duration=nan", None),
    ("POST", "/api/admin/ingest", {"urls": ["http://example.org:99999/a.wav"]}),
    ("POST", "/api/admin/ingest", {"urls": ["http://[::1"]}),
    ("POST", "/api/admin/ingest", {"urls": ["http://[2002:7f00:1::]/a.wav"]}),
    ("POST", "/api/admin/ingest", {"urls": ["http://100.64.0.1/latest/meta-data"]}),
    ("POST", "/api/admin/crawl", '{"queries": ["x"], "max_duration": 1e999}'),
    ("POST", "/api/admin/ingest", '{"urls": ["https://example.org/a.wav"], "max_duration": NaN}'),
])
def test_out_of_range_input_is_a_4xx_json_reason(weblib, method, path, body):
    with _client(weblib) as c:
        if isinstance(body, str):  # JSON the client library would not write (1e999, NaN)
            r = c.request(method, path, content=body, headers={**ADMIN, "content-type": "application/json"})
        else:
            r = c.request(method, path, json=body, headers=ADMIN)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json") and r.json()["error"]


@pytest.mark.parametrize("start,end", [("1e308", None), ("inf", None), ("0", "inf"), ("nan", "1"), ("0", "1e308"),
                                       ("5", "2")])
def test_query_spans_out_of_range_are_4xx(weblib, start, end):
    data = {"start": start} | ({"end": end} if end is not None else {})
    with _client(weblib) as c:
        r = c.post("/api/search", files={"audio": ("q.wav", wav_bytes(synth_sounds()["chirp"]), "audio/wav")},
                   data=data)
        assert 400 <= r.status_code < 500 and r.json()["error"], (data, r.status_code, r.text)


# -- 11. what anonymous users see ---------------------------------------------------------------------------------
def test_anonymous_users_see_no_local_paths_or_failures(own_lib, tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVE")
    lib = Library(own_lib)
    ingest(lib, [str(tmp_path / "broken.wav")], options=IngestOptions(progress=False))
    lib.close()
    with sqlite3.connect(own_lib / "nels.db") as conn:
        secret = str(Path(conn.execute("SELECT source_uri FROM clips LIMIT 1").fetchone()[0]).parent)
    assert secret.startswith("/")  # the folder the library's local files came from
    with _client(own_lib) as c:
        anon = c.get("/api/stats").json()
        assert "library" not in anon and "failures" not in anon and anon["clips"] == 5
        admin = c.get("/api/stats", headers=ADMIN).json()
        assert admin["library"] == str(own_lib.resolve()) and "broken.wav" in admin["failures"][0]["uri"]
        assert c.get("/api/stats", headers={"Authorization": "Bearer wrong"}).json().keys() == anon.keys()
        body = c.get("/api/search", params={"q": "anything", "mode": "acoustic"})  # an error is fine, no path
        assert secret not in body.text
        r = c.post("/api/search", files={"audio": ("q.wav", wav_bytes(synth_sounds()["hum"]), "audio/wav")})
        assert r.status_code == 200 and r.json()["results"] and secret not in r.text
        assert r.json()["results"][0]["source"] == "hum.wav"
        cid = r.json()["results"][0]["clip_id"]
        clip = c.get(f"/api/clips/{cid}")
        assert secret not in clip.text and clip.json()["source_uri"] == "hum.wav"
        assert c.get(f"/api/clips/{cid}", headers=ADMIN).json()["source_uri"].startswith(secret)


def test_the_host_header_is_checked(weblib):
    with _client(weblib, allowed_hosts=["127.0.0.1", "localhost", "::1"]) as c:
        assert c.get("http://127.0.0.1/api/stats").status_code == 200
        assert c.get("http://localhost:8000/api/stats").status_code == 200
        assert c.get("http://[::1]:8000/api/stats").status_code == 200
        for host in ("attacker.example", "127.0.0.1.attacker.example", "localhost.evil", ""):
            r = c.get("/api/stats", headers={"Host": host})
            assert r.status_code == 400 and "host not allowed" in r.json()["error"], host
    from nels.web.server import allowed_hosts

    assert allowed_hosts("127.0.0.1", None)[:3] == ["127.0.0.1", "localhost", "::1"]
    assert allowed_hosts("192.168.1.5", None)[-1] == "192.168.1.5" and "0.0.0.0" not in allowed_hosts("0.0.0.0", None)
    assert allowed_hosts("0.0.0.0", "sounds.example.org, *.lan") == ["sounds.example.org", "*.lan"]


def test_nels_serve_answers_only_its_own_host_names(weblib):
    def get(url, host):
        req = urllib.request.Request(url + "/api/stats", headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    with Server(weblib) as srv:
        port = srv.port
        assert get(srv.url, f"127.0.0.1:{port}")[0] == 200 and get(srv.url, f"localhost:{port}")[0] == 200
        status, body = get(srv.url, f"rebound.attacker.example:{port}")
        assert status == 400 and "host not allowed" in body["error"]


# -- 12. feedback rate limit ------------------------------------------------------------------------------------------
def test_feedback_is_rate_limited_per_client(own_lib):
    from nels import config

    with sqlite3.connect(own_lib / "nels.db") as conn:
        cid = conn.execute("SELECT id FROM clips LIMIT 1").fetchone()[0]
    with _client(own_lib) as c:
        codes = [c.post("/api/feedback", json={"query": "flood", "clip_id": cid, "relevant": i % 2 == 0}).status_code
                 for i in range(config.FEEDBACK_BURST + 15)]
        assert codes[:config.FEEDBACK_BURST] == [200] * config.FEEDBACK_BURST and 429 in codes
        r = c.post("/api/feedback", json={"query": "flood", "clip_id": cid, "relevant": True})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "too many" in r.json()["error"]
    with sqlite3.connect(own_lib / "nels.db") as conn:
        stored = conn.execute("SELECT COUNT(*) FROM feedback WHERE query='flood'").fetchone()[0]
    assert stored <= config.FEEDBACK_BURST + 2  # what was refused was not stored


def test_the_rate_limit_refills_and_forgets_old_clients():
    from nels.web.state import ClientRateLimit

    rl = ClientRateLimit(per_minute=60, burst=2, max_clients=3)
    assert rl.take("a", now=0) == 0 and rl.take("a", now=0) == 0 and rl.take("a", now=0) > 0
    assert rl.take("a", now=1.0) == 0  # one token a second
    for i in range(10):
        rl.take(f"c{i}", now=2.0)
    assert len(rl.buckets) == 3
