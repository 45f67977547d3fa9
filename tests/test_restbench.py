"""RestBench sandbox: routes, status codes, fault injection, tool docs and both published layouts."""

from __future__ import annotations

import json

import pytest

from lathe.data import restbench as rb
from lathe.platform.errors import LatheError


@pytest.fixture(scope="module")
def world():
    return rb.build_world(0)


def test_routes_answer_and_validate(world):
    sb = rb.ToolSandbox("tmdb", 0, world=world)
    person = next(iter(world["tmdb"]["people"].values()))
    r = sb.request("GET", "/search/person", {"query": person["name"]})
    assert r.status == 200 and r.body["results"][0]["id"] == person["id"]
    # the full published URL routes too, and a query string in the URL counts as parameters
    r2 = sb.request("GET", f"https://api.themoviedb.org/3/person/{person['id']}/movie_credits")
    assert r2.status == 200 and r2.body["id"] == person["id"]
    assert sb.request("GET", "/search/person?query=" + person["name"].split()[0]).status == 200
    assert sb.request("GET", "/search/person").status == 400
    assert "query" in sb.request("GET", "/search/person").body["status_message"]
    assert sb.request("GET", "/person/1").status == 404
    assert sb.request("GET", "/person/abc").status == 404
    assert sb.request("GET", "/no/such/route").status == 404
    assert sb.request("DELETE", "/search/person", {"query": "x"}).status == 405
    top = sb.request("GET", "/movie/top_rated")  # a literal route beats /movie/{movie_id}
    assert top.status == 200 and len(top.body["results"]) == 20
    assert top.body["results"][0]["vote_average"] >= top.body["results"][-1]["vote_average"]
    empty = next(m for m, k in world["tmdb"]["keywords"].items() if not k)
    assert sb.request("GET", f"/movie/{empty}/keywords").status == 204


def test_spotify_post_and_empty(world):
    sb = rb.ToolSandbox("spotify", 0, world=rb.build_world(0))
    pl = [p for p in sb.world["spotify"]["playlists"].values()]
    empty = next(p for p in pl if not p["tracks"])
    assert sb.request("GET", f"/playlists/{empty['id']}/tracks").status == 204
    tid = next(iter(sb.world["spotify"]["tracks"]))
    r = sb.request("POST", f"/playlists/{empty['id']}/tracks", {"uris": f"spotify:track:{tid}"})
    assert r.status == 200 and r.body["total"] == 1
    assert sb.request("GET", f"/playlists/{empty['id']}/tracks").body["items"][0]["track"]["id"] == tid
    assert sb.request("POST", f"/playlists/{empty['id']}/tracks").status == 400
    assert sb.request("GET", "/search", {"q": "a"}).status == 400  # type is required


def test_auth_and_fault_injection(world):
    sb = rb.ToolSandbox("tmdb", 0, token="t0k", world=world)
    assert sb.request("GET", "/movie/top_rated").status == 401
    assert sb.request("GET", "/movie/top_rated", headers={"Authorization": "Bearer t0k"}).status == 200
    faulty = rb.ToolSandbox("tmdb", 3, error_rate=0.5, world=world)
    codes = [faulty.request("GET", "/movie/top_rated").status for _ in range(200)]
    assert 60 < codes.count(500) < 140 and set(codes) == {200, 500}
    fault = next(r for r in (faulty.request("GET", "/movie/top_rated") for _ in range(50)) if r.status == 500)
    assert "injected" in fault.body["status_message"]
    slow = rb.ToolSandbox("tmdb", 0, latency_ms=30, world=world)
    import time

    t0 = time.perf_counter()
    slow.request("GET", "/movie/top_rated")
    assert time.perf_counter() - t0 >= 0.03
    with pytest.raises(LatheError, match="error_rate"):
        rb.ToolSandbox("tmdb", error_rate=2)


def test_synthetic_tasks_have_checkable_answers_and_gold_paths(world):
    for domain in rb.DOMAINS:
        tf = rb.generate(domain, 0, world)
        assert len(tf.tasks) >= 25 and tf.tools
        keys = {t.key for t in tf.tools}
        for task in tf.tasks:
            assert task.answer
            for m, p in task.gold_keys:  # every gold step is a documented tool
                assert any(m == km and rb.path_matches(kp, p) for km, kp in keys), (task.query, p)
        doc = tf.tools[0].to_json()
        assert doc["url"].startswith("GET https://") or doc["url"].startswith("POST https://")
        assert {"base_url", "url", "para", "usage", "description", "method", "result"} <= set(doc)


def test_loaders_read_both_published_layouts(tmp_path):
    tool = {"url": "https://api.themoviedb.org/3/search/person", "method": "GET", "description": "Search people",
            "para": [{"name": "query", "in": "query", "description": "name", "schema": {"type": "string"}}]}
    full = {"data": [{"query": "Who is in Dune?", "solution": ["GET https://api.themoviedb.org/3/search/person",
                                                                "GET https://api.themoviedb.org/3/person/{person_id}"],
                      "q_id": 7}], "tool": [tool]}
    bare = [{"query": "films of X", "solution": ["GET /search/person", "GET /person/{person_id}/movie_credits"]}]
    (tmp_path / "tmdb.json").write_text(json.dumps(full))
    (tmp_path / "restgpt_tmdb.json").write_text(json.dumps(bare))
    a = rb.load_tasks(tmp_path / "tmdb.json")
    b = rb.load_tasks(tmp_path / "restgpt_tmdb.json")
    assert a.layout == "data+tool" and a.tasks[0].q_id == "7" and a.tasks[0].answer is None
    assert a.tools[0].path == "/search/person" and a.tools[0].method == "GET"
    assert b.layout == "list" and b.tools == [] and b.tasks[0].q_id == "0"
    # full URL and bare path normalise to the same key
    assert a.tasks[0].gold_keys[0] == b.tasks[0].gold_keys[0] == ("GET", "/search/person")
    assert a.tasks[0].gold_keys[1] == ("GET", "/person/{}")
    assert a.tasks[0].domain == "tmdb"

    for bad, msg in [({"tasks": []}, "not a RestBench task file"),
                     ([{"query": "q", "solution": ["FETCH /x"]}], r"\[0\]: solution"),
                     ([{"solution": []}], r"\[0\]: expected an object"),
                     ({"data": [], "tool": [{"description": "no url"}]}, r"tool\[0\]: tool doc has no url")]:
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(LatheError, match=msg):
            rb.load_tasks(p)
    (tmp_path / "broken.json").write_text("{nope")
    with pytest.raises(LatheError, match="not JSON"):
        rb.load_tasks(tmp_path / "broken.json")


def test_candidates_include_gold(world):
    tf = rb.generate("tmdb", 0, world)
    t = tf.tasks[0]
    c = rb.candidate_tools(t, tf.tools, k=8, seed=1)
    assert len(c) == 8 and {x.key for x in rb.candidate_tools(t, tf.tools, mode="gold_only")} <= {x.key for x in c}
    assert len(rb.candidate_tools(t, tf.tools, mode="gold_only")) == len(t.solution)
