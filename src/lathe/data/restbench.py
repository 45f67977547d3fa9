"""RestBench: a seeded TMDB-like / Spotify-like tool sandbox, its tool docs and tasks, and loaders.

Published task files load unchanged, in both layouts:
  - `{"data": [{"query", "solution": ["GET <url>", ...], "q_id"}], "tool": [<tool doc>, ...]}`
    (ConAgents' release: TMDB 100 tasks / 54 tools, Spotify 57 / 40);
  - a bare list `[{"query", "solution"}]` (RestGPT's release).
A solution item carries a full URL (`GET https://api.themoviedb.org/3/search/person`) or a bare
path (`GET /search/person`); both normalise to (method, path template).

Tool docs follow RestBench: `base_url`, `url` ("GET <base_url>/movie/{movie_id}/keywords"), `para`
(OpenAPI-style name/in/description/schema), `usage`, `description`, `method`, `result`.

`ToolSandbox(domain, seed)` answers requests in-process (the Serve app in
`lathe.serve.sandbox_app` wraps it): 200 / 204 empty / 400 missing parameter / 404 unknown id or
route / 405 wrong method / 401 without a configured bearer token, plus `error_rate` (500 with an
error body) and `latency_ms` fault injection.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from lathe.platform.errors import LatheError

DOMAINS = ("tmdb", "spotify")
BASE_URLS = {"tmdb": "https://api.themoviedb.org/3", "spotify": "https://api.spotify.com/v1"}
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")

# --------------------------------------------------------------------------------------------
# Calls: "GET https://host/3/movie/{movie_id}" <-> (method, "/movie/{}")


def split_call(text: str) -> tuple[str, str]:
    """'GET <url or path>' -> ('GET', '<url or path>'); ValueError when there is no method."""
    parts = str(text).strip().split(None, 1)
    if len(parts) != 2 or parts[0].upper() not in METHODS:
        raise ValueError(f"expected '<METHOD> <url>' with METHOD in {'/'.join(METHODS)}, got {text!r}")
    return parts[0].upper(), parts[1].strip()


def url_path(url: str, base_paths: tuple[str, ...] = ("/3", "/v1")) -> str:
    """The path of a URL or path, without query string, a known API version prefix or a trailing /."""
    u = urlparse(url)
    path = u.path if (u.scheme or u.netloc) else url.split("?", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    for bp in sorted(base_paths, key=len, reverse=True):
        if bp and bp != "/" and (path == bp or path.startswith(bp + "/")):
            path = path[len(bp):] or "/"
            break
    return path.rstrip("/") or "/"


def template_key(path: str) -> str:
    """Path variables normalised to {}: '/person/{person_id}/movie_credits' -> '/person/{}/movie_credits'."""
    return re.sub(r"\{[^}/]*\}", "{}", path)


def normalize_call(text: str) -> tuple[str, str]:
    method, url = split_call(text)
    return method, template_key(url_path(url))


def path_matches(template: str, path: str) -> bool:
    """Segment-wise match; a `{}` segment on either side matches any one segment."""
    a, b = template_key(template).strip("/").split("/"), template_key(path).strip("/").split("/")
    return len(a) == len(b) and all(x == y or x == "{}" or y == "{}" for x, y in zip(a, b))


# --------------------------------------------------------------------------------------------
# Tool docs


@dataclass
class ToolDoc:
    method: str
    path: str  # template, e.g. /movie/{movie_id}/credits (no base path)
    description: str
    para: list[dict] = field(default_factory=list)
    base_url: str = ""
    usage: str = ""
    result: Any = ""
    domain: str = ""

    @property
    def url(self) -> str:
        return f"{self.base_url}{self.path}"

    @property
    def call(self) -> str:
        return f"{self.method} {self.url}"

    @property
    def key(self) -> tuple[str, str]:
        return self.method, template_key(self.path)

    def required(self) -> list[str]:
        return [p["name"] for p in self.para if p.get("required") and p.get("in", "query") != "path"]

    def to_json(self) -> dict:
        return {"base_url": self.base_url, "url": self.call, "method": self.method, "description": self.description,
                "para": self.para, "usage": self.usage, "result": self.result}


def tool_from_json(d: Any, where: str) -> ToolDoc:
    if not isinstance(d, dict):
        raise LatheError(f"{where}: a tool doc must be an object")
    url = d.get("url") or d.get("api_url") or d.get("path")
    if not isinstance(url, str) or not url.strip():
        raise LatheError(f"{where}: tool doc has no url")
    url = url.strip()
    method = (d.get("method") or "").upper() or None
    if url.split(None, 1)[0].upper() in METHODS and " " in url:
        m, url = split_call(url)
        method = method or m
    method = method or "GET"
    if method not in METHODS:
        raise LatheError(f"{where}: method {method!r} is not one of {', '.join(METHODS)}")
    base = d.get("base_url") or ""
    if "<base_url>" in url:
        url = url.replace("<base_url>", base)
    u = urlparse(url)
    if not base and u.scheme:
        base = f"{u.scheme}://{u.netloc}"
    bases = tuple(p for p in {urlparse(base).path.rstrip("/"), "/3", "/v1"} if p)
    para = d.get("para", d.get("parameters", [])) or []
    if not isinstance(para, list):
        raise LatheError(f"{where}: para must be a list of parameters")
    return ToolDoc(method=method, path=url_path(url, bases), description=str(d.get("description", "")),
                   para=[p for p in para if isinstance(p, dict)], base_url=base.rstrip("/"),
                   usage=str(d.get("usage", "") or ""), result=d.get("result", ""), domain=str(d.get("domain", "")))


# --------------------------------------------------------------------------------------------
# Tasks and loaders


@dataclass
class Task:
    q_id: str
    query: str
    solution: list[str]  # as published: "GET <url or path>"
    answer: str | None = None  # synthetic only: the gold final value (auto judge)
    domain: str = ""
    plan: list[dict] | None = None  # synthetic only, not written: the gold steps (oracle teacher)

    @property
    def gold_keys(self) -> list[tuple[str, str]]:
        return [normalize_call(s) for s in self.solution]

    def to_json(self) -> dict:
        d = {"q_id": self.q_id, "query": self.query, "solution": list(self.solution)}
        if self.answer is not None:
            d["answer"] = self.answer
        return d


@dataclass
class TaskFile:
    tasks: list[Task]
    tools: list[ToolDoc]
    layout: str  # "data+tool" | "list"


def parse_tasks(obj: Any, source: str, domain: str = "") -> TaskFile:
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        rows, layout = obj["data"], "data+tool"
        tools = [tool_from_json(t, f"{source}: tool[{i}]") for i, t in enumerate(obj.get("tool") or [])]
    elif isinstance(obj, list):
        rows, layout, tools = obj, "list", []
    else:
        raise LatheError(f"{source}: not a RestBench task file: expected {{\"data\": [...], \"tool\": [...]}} "
                         "or a list of {query, solution}")
    tasks = []
    for i, r in enumerate(rows):
        where = f"{source}: data[{i}]" if layout == "data+tool" else f"{source}: [{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("query"), str) or not r["query"].strip():
            raise LatheError(f"{where}: expected an object with a non-empty 'query'")
        sol = r.get("solution")
        if not isinstance(sol, list) or not all(isinstance(s, str) for s in sol):
            raise LatheError(f"{where}: 'solution' must be a list of 'METHOD url' strings")
        for s in sol:
            try:
                split_call(s)
            except ValueError as e:
                raise LatheError(f"{where}: solution: {e}") from None
        ans = r.get("answer")
        tasks.append(Task(q_id=str(r.get("q_id", r.get("id", i))), query=r["query"].strip(), solution=sol,
                          answer=None if ans is None else str(ans), domain=domain))
    return TaskFile(tasks, tools, layout)


def load_tasks(path: str | Path, domain: str = "") -> TaskFile:
    """A published (or synthetic) RestBench task file, either layout."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except FileNotFoundError:
        raise LatheError(f"{p}: no such task file") from None
    except json.JSONDecodeError as e:
        raise LatheError(f"{p}: not JSON ({e.msg} at line {e.lineno})") from None
    return parse_tasks(obj, str(p), domain or _guess_domain(p.name))


def load_tools(path: str | Path) -> list[ToolDoc]:
    """Tool docs: a JSON list, or a task file's `tool` list."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise LatheError(f"{p}: cannot read tool docs ({e})") from None
    if isinstance(obj, dict) and "tool" in obj:
        obj = obj["tool"]
    if not isinstance(obj, list):
        raise LatheError(f"{p}: expected a list of tool docs")
    return [tool_from_json(t, f"{p}: [{i}]") for i, t in enumerate(obj)]


def _guess_domain(name: str) -> str:
    return next((d for d in DOMAINS if d in name.lower()), "")


def candidate_tools(task: Task, tools: list[ToolDoc], k: int = 20, seed: int = 0,
                    mode: str = "default") -> list[ToolDoc]:
    """Gold tools plus random others of the same set, shuffled (`mode='gold_only'`: gold only)."""
    gold = [t for t in tools if any(t.method == m and path_matches(t.path, p) for m, p in task.gold_keys)]
    if mode == "gold_only":
        return gold
    rng = random.Random(f"{seed}:{task.q_id}")
    rest = [t for t in tools if t not in gold]
    rng.shuffle(rest)
    out = gold + rest[: max(0, k - len(gold))]
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------------------------
# The synthetic world

_SYL = ["ka", "lo", "mi", "ra", "ven", "dor", "sa", "tel", "ni", "bru", "qua", "zen", "fi", "mo", "rin", "tha",
        "gal", "ore", "pix", "lun", "cor", "vy", "del", "ash"]
_WORDS = ["Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Winter", "Iron", "Paper", "Electric",
          "Midnight", "Northern", "Glass", "Wild", "Lost", "Burning", "Quiet", "Velvet", "Hollow", "Bright"]
_NOUNS = ["River", "Empire", "Garden", "Signal", "Harbor", "Machine", "Kingdom", "Echo", "Orbit", "Storm",
          "Lantern", "Mirror", "Voyage", "Fortress", "Canyon", "Circus", "Frontier", "Tide", "Engine", "Meadow"]
_GENRES = ["Action", "Comedy", "Drama", "Horror", "Science Fiction", "Romance", "Thriller", "Animation"]
_MUSIC = ["indie pop", "synthwave", "jazz", "folk", "techno", "hip hop", "ambient", "rock"]
_CITIES = ["Lyon", "Osaka", "Quito", "Bergen", "Tunis", "Perth", "Leeds", "Cusco"]


def _name(rng: random.Random, used: set) -> str:
    while True:
        n = (rng.choice(_SYL) + rng.choice(_SYL)).capitalize() + " " + (rng.choice(_SYL) + rng.choice(_SYL) +
                                                                       rng.choice(_SYL)).capitalize()
        if n not in used:
            used.add(n)
            return n


def _title(rng: random.Random, used: set) -> str:
    while True:
        t = f"The {rng.choice(_WORDS)} {rng.choice(_NOUNS)}"
        if rng.random() < 0.4:
            t += f" {rng.choice(['II', 'Returns', 'Rising', 'of ' + rng.choice(_CITIES)])}"
        if t not in used:
            used.add(t)
            return t


def _blurb(rng: random.Random, words: int) -> str:
    pool = [w.lower() for w in _WORDS + _NOUNS] + ["a", "the", "of", "and", "who", "finds", "must", "across"]
    return " ".join(rng.choice(pool) for _ in range(words)).capitalize() + "."


def build_world(seed: int = 0, size: str = "small") -> dict:
    """The seeded databases of both domains (plain dicts, JSON-serialisable)."""
    n_people, n_movies = (40, 60) if size == "small" else (150, 300)
    rng = random.Random(seed)
    used: set = set()
    people = {}
    for i in range(n_people):
        pid = 1000 + i * 7 + rng.randrange(7)
        dept = "Directing" if i % 5 == 0 else "Acting"
        people[pid] = {"id": pid, "name": _name(rng, used), "known_for_department": dept,
                       "birthday": f"19{rng.randrange(40, 99)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 28):02d}",
                       "place_of_birth": rng.choice(_CITIES), "popularity": round(rng.uniform(1, 90), 3),
                       "biography": _blurb(rng, 40)}
    directors = [p for p in people.values() if p["known_for_department"] == "Directing"]
    actors = [p for p in people.values() if p["known_for_department"] == "Acting"]
    movies, credits, keywords = {}, {}, {}
    titles: set = set()
    kw_names = [f"{w.lower()} {n.lower()}" for w in _WORDS[:6] for n in _NOUNS[:5]]
    for i in range(n_movies):
        mid = 500 + i * 11 + rng.randrange(11)
        movies[mid] = {"id": mid, "title": _title(rng, titles), "release_date":
                       f"{rng.randrange(1980, 2024)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 28):02d}",
                       "vote_average": round(rng.uniform(4.0, 9.5), 1), "vote_count": rng.randrange(50, 20000),
                       "genres": [{"id": 10 + g, "name": _GENRES[g]} for g in sorted(rng.sample(range(8), 2))],
                       "runtime": rng.randrange(80, 180), "budget": rng.randrange(1, 200) * 1_000_000,
                       "overview": _blurb(rng, 30), "belongs_to_collection": None,
                       "popularity": round(rng.uniform(1, 120), 3)}
        cast = rng.sample(actors, rng.randrange(3, 7))
        director = rng.choice(directors)
        credits[mid] = {"cast": [{"id": a["id"], "character": _name(rng, used).split()[0] + " " +
                                  rng.choice(["Vale", "Stone", "Marsh", "Grey"]), "order": o}
                                 for o, a in enumerate(cast)],
                        "crew": [{"id": director["id"], "job": "Director", "department": "Directing"}]}
        keywords[mid] = [{"id": 9000 + j, "name": kw_names[j]} for j in rng.sample(range(len(kw_names)),
                                                                                   rng.choice([0, 2, 3]))]
    collections = {}
    mids = list(movies)
    rng.shuffle(mids)
    for c in range(8):
        parts = mids[c * 3: c * 3 + rng.randrange(2, 4)]
        cid = 80000 + c * 13
        name = f"The {movies[parts[0]]['title'].split()[1]} {movies[parts[0]]['title'].split()[2]} Collection"
        collections[cid] = {"id": cid, "name": name, "overview": _blurb(rng, 15), "parts": parts}
        for m in parts:
            movies[m]["belongs_to_collection"] = {"id": cid, "name": name}

    # spotify
    artists, albums, tracks, playlists = {}, {}, {}, {}
    anames: set = set()
    for i in range(24):
        aid = f"ar{rng.randrange(16**6):06x}"
        artists[aid] = {"id": aid, "name": _name(rng, anames).split()[1] + rng.choice(["", " Band", " Trio"]),
                        "genres": rng.sample(_MUSIC, 2), "popularity": rng.randrange(10, 100),
                        "followers": {"total": rng.randrange(100, 2_000_000)}, "type": "artist"}
    alnames: set = set()
    for aid in artists:
        for _ in range(rng.randrange(1, 4)):
            alid = f"al{rng.randrange(16**6):06x}"
            albums[alid] = {"id": alid, "name": _title(rng, alnames).replace("The ", "", 1), "artist_id": aid,
                            "release_date": f"{rng.randrange(1990, 2024)}-{rng.randrange(1, 13):02d}-01",
                            "album_type": rng.choice(["album", "album", "single"]), "tracks": [], "type": "album"}
            for n in range(rng.randrange(4, 12)):
                tid = f"tr{rng.randrange(16**8):08x}"
                tracks[tid] = {"id": tid, "name": f"{rng.choice(_WORDS)} {rng.choice(_NOUNS)} {n + 1}",
                               "album_id": alid, "artist_ids": [aid], "duration_ms": rng.randrange(120_000, 420_000),
                               "popularity": rng.randrange(0, 100), "track_number": n + 1, "explicit": rng.random() < .2,
                               "type": "track"}
                albums[alid]["tracks"].append(tid)
    tids = list(tracks)
    pnames: set = set()
    for i in range(10):
        pid = f"pl{rng.randrange(16**6):06x}"
        playlists[pid] = {"id": pid, "name": f"{rng.choice(_WORDS)} {rng.choice(['Mix', 'Hits', 'Vibes', 'Radio'])}",
                          "owner": {"id": f"user{i}", "display_name": _name(rng, pnames).split()[0]},
                          "description": _blurb(rng, 8), "public": rng.random() < .7,
                          "tracks": rng.sample(tids, 0 if i == 9 else rng.randrange(3, 15)), "type": "playlist"}
        while sum(p["name"] == playlists[pid]["name"] for p in playlists.values()) > 1:
            playlists[pid]["name"] += " " + str(i)
    player = {"is_playing": True, "item": rng.choice(tids), "progress_ms": rng.randrange(1000, 100000),
              "device": {"id": "dev0", "name": "Kitchen speaker", "type": "Speaker", "volume_percent": 60},
              "shuffle_state": False, "repeat_state": "off", "queue": []}
    return {"tmdb": {"people": people, "movies": movies, "credits": credits, "keywords": keywords,
                     "collections": collections},
            "spotify": {"artists": artists, "albums": albums, "tracks": tracks, "playlists": playlists,
                        "player": player, "user": {"id": "user0", "display_name": "sandbox user"}}}


# --------------------------------------------------------------------------------------------
# Routes


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Route:
    method: str
    path: str
    description: str
    params: list[tuple[str, str, bool, str, str]]  # (name, in, required, type, description)
    handler: Callable[..., Any]

    def __post_init__(self):
        self.regex = re.compile("^" + re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path)) + "$")

    def doc(self, domain: str, usage: str = "", result: Any = "") -> ToolDoc:
        para = [{"name": n, "in": where, "description": d, "required": req, "schema": {"type": t}}
                for n, where, req, t, d in self.params]
        return ToolDoc(self.method, self.path, self.description, para, BASE_URLS[domain], usage, result, domain)


def _get(table: dict, key: Any, what: str):
    k = key
    if isinstance(next(iter(table), None), int):
        try:
            k = int(key)
        except (TypeError, ValueError):
            raise HTTPError(404, f"The resource you requested could not be found: {what} {key!r}") from None
    if k not in table:
        raise HTTPError(404, f"The resource you requested could not be found: {what} {key!r}")
    return table[k]


def _int(v: Any, name: str) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise HTTPError(400, f"{name}: must be an integer (got {v!r})") from None


def _search(items, query: str, key: str = "name"):
    q = query.strip().lower()
    hits = [x for x in items if q in x[key].lower()]
    hits.sort(key=lambda x: (x[key].lower() != q, -x.get("popularity", 0)))
    return hits


def _page(results: list, params: dict, size: int = 20) -> dict:
    try:
        page = max(1, int(params.get("page", 1)))
    except ValueError:
        raise HTTPError(400, "page: must be an integer") from None
    chunk = results[(page - 1) * size: page * size]
    return {"page": page, "results": chunk, "total_results": len(results),
            "total_pages": max(1, -(-len(results) // size))}


def _tmdb_routes(w: dict) -> list[Route]:
    P, M, C = w["people"], w["movies"], w["credits"]

    def movie_summary(m):
        return {k: m[k] for k in ("id", "title", "release_date", "vote_average", "overview", "popularity")} | \
               {"genre_ids": [g["id"] for g in m["genres"]]}

    def person_summary(p):
        known = [movie_summary(M[mid]) for mid, c in C.items() if any(x["id"] == p["id"] for x in c["cast"] + c["crew"])]
        return {k: p[k] for k in ("id", "name", "known_for_department", "popularity")} | {"known_for": known[:3]}

    def search_person(q, **_):
        return _page([person_summary(p) for p in _search(P.values(), q["query"])], q)

    def search_movie(q, **_):
        return _page([movie_summary(m) for m in _search(M.values(), q["query"], "title")], q)

    def search_collection(q, **_):
        return _page([{"id": c["id"], "name": c["name"]} for c in _search(w["collections"].values(), q["query"])], q)

    def person(q, person_id):
        return dict(_get(P, person_id, "person"))

    def person_credits(q, person_id):
        p = _get(P, person_id, "person")
        cast = [movie_summary(M[mid]) | {"character": x["character"], "credit_id": f"c{mid}{p['id']}"}
                for mid, c in C.items() for x in c["cast"] if x["id"] == p["id"]]
        crew = [movie_summary(M[mid]) | {"job": x["job"], "department": x["department"]}
                for mid, c in C.items() for x in c["crew"] if x["id"] == p["id"]]
        cast.sort(key=lambda m: m["release_date"], reverse=True)
        crew.sort(key=lambda m: m["release_date"], reverse=True)
        return {"id": p["id"], "cast": cast, "crew": crew}

    def movie(q, movie_id):
        return dict(_get(M, movie_id, "movie"))

    def movie_credits(q, movie_id):
        m = _get(M, movie_id, "movie")
        c = C[m["id"]]
        return {"id": m["id"],
                "cast": [{"id": x["id"], "name": P[x["id"]]["name"], "character": x["character"], "order": x["order"],
                          "known_for_department": "Acting", "popularity": P[x["id"]]["popularity"]} for x in c["cast"]],
                "crew": [{"id": x["id"], "name": P[x["id"]]["name"], "job": x["job"], "department": x["department"]}
                         for x in c["crew"]]}

    def movie_keywords(q, movie_id):
        m = _get(M, movie_id, "movie")
        kws = w["keywords"][m["id"]]
        return {"id": m["id"], "keywords": kws} if kws else None

    def similar(q, movie_id):
        m = _get(M, movie_id, "movie")
        g = {x["id"] for x in m["genres"]}
        sim = [movie_summary(o) for o in M.values() if o["id"] != m["id"] and g & {x["id"] for x in o["genres"]}]
        return _page(sim, q)

    def collection(q, collection_id):
        c = _get(w["collections"], collection_id, "collection")
        return {"id": c["id"], "name": c["name"], "overview": c["overview"], "parts": [movie_summary(M[m]) for m in c["parts"]]}

    def top_rated(q, **_):
        return _page([movie_summary(m) for m in sorted(M.values(), key=lambda m: -m["vote_average"])], q)

    def popular(q, **_):
        return _page([movie_summary(m) for m in sorted(M.values(), key=lambda m: -m["popularity"])], q)

    def person_popular(q, **_):
        return _page([person_summary(p) for p in sorted(P.values(), key=lambda p: -p["popularity"])], q)

    qp = ("query", "query", True, "string", "text to search for")
    pg = ("page", "query", False, "integer", "page of results (20 per page)")
    pid = ("person_id", "path", True, "integer", "id of the person")
    mid = ("movie_id", "path", True, "integer", "id of the movie")
    return [
        Route("GET", "/search/person", "Search for people by name.", [qp, pg], search_person),
        Route("GET", "/search/movie", "Search for movies by their title.", [qp, pg], search_movie),
        Route("GET", "/search/collection", "Search for collections by name.", [qp, pg], search_collection),
        Route("GET", "/person/{person_id}", "Get the primary person details by id (birthday, place of birth, biography).",
              [pid], person),
        Route("GET", "/person/{person_id}/movie_credits",
              "Get the movie credits (cast and crew) of a person, newest first.", [pid], person_credits),
        Route("GET", "/movie/{movie_id}", "Get the primary details of a movie (release date, runtime, budget, "
              "genres, rating, collection).", [mid], movie),
        Route("GET", "/movie/{movie_id}/credits", "Get the cast and crew (e.g. the director) of a movie.", [mid],
              movie_credits),
        Route("GET", "/movie/{movie_id}/keywords", "Get the keywords of a movie.", [mid], movie_keywords),
        Route("GET", "/movie/{movie_id}/similar", "Get movies similar to a movie (sharing a genre).", [mid, pg], similar),
        Route("GET", "/collection/{collection_id}", "Get the details and the movies (parts) of a collection.",
              [("collection_id", "path", True, "integer", "id of the collection")], collection),
        Route("GET", "/movie/top_rated", "Get the top rated movies, best first.", [pg], top_rated),
        Route("GET", "/movie/popular", "Get the most popular movies.", [pg], popular),
        Route("GET", "/person/popular", "Get the most popular people.", [pg], person_popular),
    ]


def _spotify_routes(w: dict, lock: threading.Lock) -> list[Route]:
    A, AL, T, PL = w["artists"], w["albums"], w["tracks"], w["playlists"]

    def track_obj(t):
        al = AL[t["album_id"]]
        return {k: t[k] for k in ("id", "name", "duration_ms", "popularity", "track_number", "explicit", "type")} | {
            "uri": f"spotify:track:{t['id']}",
            "artists": [{"id": a, "name": A[a]["name"], "type": "artist"} for a in t["artist_ids"]],
            "album": {"id": al["id"], "name": al["name"], "release_date": al["release_date"], "type": "album"}}

    def album_obj(al, full=False):
        d = {k: al[k] for k in ("id", "name", "release_date", "album_type", "type")} | {
            "artists": [{"id": al["artist_id"], "name": A[al["artist_id"]]["name"]}], "total_tracks": len(al["tracks"])}
        if full:
            d["tracks"] = {"items": [track_obj(T[t]) for t in al["tracks"]], "total": len(al["tracks"])}
        return d

    def playlist_obj(p, full=False):
        d = {k: p[k] for k in ("id", "name", "owner", "description", "public", "type")} | {
            "tracks": {"total": len(p["tracks"])}}
        if full:
            d["tracks"] = {"items": [{"track": track_obj(T[t])} for t in p["tracks"]], "total": len(p["tracks"])}
        return d

    def search(q, **_):
        types = [t.strip() for t in q.get("type", "").split(",") if t.strip()]
        if not types:
            raise HTTPError(400, "Missing required parameter 'type'")
        bad = [t for t in types if t not in ("artist", "album", "track", "playlist")]
        if bad:
            raise HTTPError(400, f"type: unknown {bad[0]!r} (artist, album, track, playlist)")
        out = {}
        src = {"artist": (A, lambda x: x), "album": (AL, album_obj), "track": (T, track_obj), "playlist": (PL, playlist_obj)}
        for t in types:
            table, fn = src[t]
            items = [fn(x) for x in _search(table.values(), q["q"])][: _int(q.get("limit", 20), "limit")]
            out[t + "s"] = {"items": items, "total": len(items)}
        return out

    def artist(q, id):
        return dict(_get(A, id, "artist"))

    def artist_albums(q, id):
        a = _get(A, id, "artist")
        items = [album_obj(al) for al in AL.values() if al["artist_id"] == a["id"]]
        return {"items": items, "total": len(items)}

    def top_tracks(q, id):
        a = _get(A, id, "artist")
        ts = sorted((t for t in T.values() if a["id"] in t["artist_ids"]), key=lambda t: -t["popularity"])[:10]
        return {"tracks": [track_obj(t) for t in ts]}

    def album(q, id):
        return album_obj(_get(AL, id, "album"), full=True)

    def album_tracks(q, id):
        al = _get(AL, id, "album")
        return {"items": [track_obj(T[t]) for t in al["tracks"]], "total": len(al["tracks"])}

    def track(q, id):
        return track_obj(_get(T, id, "track"))

    def playlist(q, playlist_id):
        return playlist_obj(_get(PL, playlist_id, "playlist"), full=True)

    def playlist_tracks(q, playlist_id):
        p = _get(PL, playlist_id, "playlist")
        if not p["tracks"]:
            return None
        return {"items": [{"track": track_obj(T[t])} for t in p["tracks"]], "total": len(p["tracks"])}

    def add_tracks(q, playlist_id):
        p = _get(PL, playlist_id, "playlist")
        uris = q.get("uris")
        uris = uris.split(",") if isinstance(uris, str) else uris
        if not uris:
            raise HTTPError(400, "Missing required parameter 'uris'")
        ids = [u.rsplit(":", 1)[-1] for u in uris]
        for i in ids:
            _get(T, i, "track")
        with lock:
            p["tracks"].extend(ids)
        return {"snapshot_id": f"snap{len(p['tracks'])}", "total": len(p["tracks"])}

    def me_playlists(q, **_):
        items = [playlist_obj(p) for p in PL.values()]
        return {"items": items, "total": len(items)}

    def player(q, **_):
        s = w["player"]
        if not s["item"]:
            return None
        return {k: s[k] for k in ("is_playing", "progress_ms", "device", "shuffle_state", "repeat_state")} | {
            "item": track_obj(T[s["item"]])}

    def queue(q, **_):
        uri = q["uri"]
        _get(T, uri.rsplit(":", 1)[-1], "track")
        with lock:
            w["player"]["queue"].append(uri.rsplit(":", 1)[-1])
        return None

    idp = ("id", "path", True, "string", "the Spotify id")
    plp = ("playlist_id", "path", True, "string", "id of the playlist")
    return [
        Route("GET", "/search", "Search artists, albums, tracks or playlists by name.",
              [("q", "query", True, "string", "search text"),
               ("type", "query", True, "string", "comma-separated: artist, album, track, playlist"),
               ("limit", "query", False, "integer", "at most this many items per type")], search),
        Route("GET", "/artists/{id}", "Get an artist (genres, popularity, followers).", [idp], artist),
        Route("GET", "/artists/{id}/albums", "Get the albums of an artist.", [idp], artist_albums),
        Route("GET", "/artists/{id}/top-tracks", "Get an artist's top tracks, most popular first.", [idp], top_tracks),
        Route("GET", "/albums/{id}", "Get an album with its tracks.", [idp], album),
        Route("GET", "/albums/{id}/tracks", "Get the tracks of an album.", [idp], album_tracks),
        Route("GET", "/tracks/{id}", "Get a track (its album, artists, duration).", [idp], track),
        Route("GET", "/playlists/{playlist_id}", "Get a playlist with its tracks.", [plp], playlist),
        Route("GET", "/playlists/{playlist_id}/tracks", "Get the tracks of a playlist.", [plp], playlist_tracks),
        Route("POST", "/playlists/{playlist_id}/tracks", "Add tracks to a playlist.",
              [plp, ("uris", "query", True, "string", "comma-separated track URIs (spotify:track:<id>)")], add_tracks),
        Route("GET", "/me/playlists", "Get the current user's playlists.", [], me_playlists),
        Route("GET", "/me/player", "Get the playback state and the currently playing track.", [], player),
        Route("POST", "/me/player/queue", "Add a track to the playback queue.",
              [("uri", "query", True, "string", "track URI (spotify:track:<id>)")], queue),
    ]


@dataclass
class Response:
    status: int
    body: Any  # JSON value, or None for 204

    def text(self) -> str:
        return "" if self.body is None else json.dumps(self.body)


class ToolSandbox:
    """One domain's REST API over the seeded world, in-process. Thread-safe for reads; writes lock."""

    def __init__(self, domain: str = "tmdb", seed: int = 0, error_rate: float = 0.0, latency_ms: float = 0.0,
                 token: str | None = None, size: str = "small", world: dict | None = None):
        if domain not in DOMAINS:
            raise LatheError(f"domain: expected one of {', '.join(DOMAINS)} (got {domain!r})")
        if not 0 <= error_rate <= 1:
            raise LatheError("error_rate: must be within [0, 1]")
        self.domain, self.seed, self.error_rate, self.latency_ms, self.token = domain, seed, error_rate, latency_ms, token
        self.world = world or build_world(seed, size)
        self._lock = threading.Lock()
        self._rng = random.Random(f"faults:{seed}")
        db = self.world[domain]
        self.routes = _tmdb_routes(db) if domain == "tmdb" else _spotify_routes(db, self._lock)
        self.base_url = BASE_URLS[domain]
        self.calls: list[tuple[str, str, int]] = []

    def tools(self) -> list[ToolDoc]:
        return [r.doc(self.domain, usage=_usage(r, self.domain)) for r in self.routes]

    def match(self, method: str, path: str) -> tuple[Route, dict] | None:
        path = url_path(path, (urlparse(self.base_url).path,))
        allowed = None
        for r in sorted(self.routes, key=lambda r: r.path.count("{")):  # literal segments win: /movie/top_rated
            m = r.regex.match(path)
            if m:
                if r.method == method.upper():
                    return r, m.groupdict()
                allowed = r
        if allowed is not None:
            raise HTTPError(405, f"method {method.upper()} is not allowed on {path} (use {allowed.method})")
        return None

    def request(self, method: str, url: str, params: dict | None = None, headers: dict | None = None) -> Response:
        resp = self._request(method, url, dict(params or {}), {k.lower(): v for k, v in (headers or {}).items()})
        with self._lock:
            self.calls.append((method.upper(), url, resp.status))
        return resp

    def _request(self, method, url, params, headers) -> Response:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            return _err(401, "Invalid API key: you must be granted a valid key.")
        if self.error_rate:
            with self._lock:
                fault = self._rng.random() < self.error_rate
            if fault:
                return _err(500, "Internal error: the server failed to handle the request (injected fault).")
        try:
            found = self.match(method, url)
            if found is None:
                return _err(404, f"The resource you requested could not be found: no route {method.upper()} "
                                 f"{url_path(url)}")
            route, path_vars = found
            q = dict(params)
            q.update(_query_of(url))
            for name, where, req, typ, _ in route.params:
                if where == "query" and req and (q.get(name) in (None, "")):
                    return _err(400, f"Missing required parameter '{name}'")
            body = route.handler(q, **path_vars)
        except HTTPError as e:
            return _err(e.status, e.message)
        if body is None:  # an empty resource
            return Response(204, None)
        return Response(200, body)


def _query_of(url: str) -> dict:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(urlparse(url).query)) if "?" in url else {}


def _err(status: int, message: str) -> Response:
    return Response(status, {"status_code": status, "status_message": message, "success": False})


def _usage(r: Route, domain: str) -> str:
    ex = {"query": "Jane Doe", "page": "1", "q": "Midnight", "type": "artist", "uris": "spotify:track:tr00000000",
          "uri": "spotify:track:tr00000000", "limit": "5"}
    path = re.sub(r"\{([^}]+)\}", lambda m: "1032" if domain == "tmdb" else "ar0a1b2c", r.path)
    qs = "&".join(f"{n}={ex.get(n, 'x')}" for n, where, req, *_ in r.params if where == "query" and req)
    return f"{r.method} {BASE_URLS[domain]}{path}" + (f"?{qs}" if qs else "")


# --------------------------------------------------------------------------------------------
# Synthetic tasks (gold solution paths + checkable answers)


def _t(domain: str, *calls: str) -> list[str]:
    return [f"{c.split()[0]} {BASE_URLS[domain]}{c.split()[1]}" for c in calls]


def _step(domain: str, thought: str, call: str, path: str, params: dict, instructions: str, code: str) -> dict:
    """One gold step: the template call, the concrete request, and extraction code over its response
    (`code` prints the observation; the oracle teacher runs it in the sandboxed interpreter)."""
    method, tmpl = call.split()
    return {"thought": thought, "call": f"{method} {BASE_URLS[domain]}{tmpl}", "method": method,
            "url": f"{BASE_URLS[domain]}{path}", "params": params, "output_instructions": instructions, "code": code}


def _search_movie(title: str, mid: int) -> dict:
    return _step("tmdb", f"search for the movie **{title}** to get its id", "GET /search/movie", "/search/movie",
                 {"query": title}, f"the id of the movie {title}",
                 'r = response["results"][0]\nprint("the id of the movie " + r["title"] + " is (" + str(r["id"]) + ")")')


def _search_person(name: str) -> dict:
    return _step("tmdb", f"search for the person **{name}** to get the id", "GET /search/person", "/search/person",
                 {"query": name}, f"the id of the person {name}",
                 'r = response["results"][0]\nprint("the id of the person " + r["name"] + " is (" + str(r["id"]) + ")")')


def _tmdb_tasks(w: dict, rng: random.Random) -> list[tuple[str, list[str], str, list[dict]]]:
    P, M, C = w["people"], w["movies"], w["credits"]
    out = []
    movies = list(M.values())
    rng.shuffle(movies)
    director_code = ('d = [c for c in response["crew"] if c["job"] == "Director"][0]\n'
                     'print("the director of the movie (" + str(response["id"]) + ") is " + d["name"] + " (" + '
                     'str(d["id"]) + ")")')
    for m in movies[:12]:
        d = P[C[m["id"]]["crew"][0]["id"]]
        out.append((f"Who directed the movie {m['title']}?",
                    _t("tmdb", "GET /search/movie", "GET /movie/{movie_id}/credits"), d["name"],
                    [_search_movie(m["title"], m["id"]),
                     _step("tmdb", f"get the credits of the movie ({m['id']}) and find the Director",
                           "GET /movie/{movie_id}/credits", f"/movie/{m['id']}/credits", {},
                           "the name of the crew member whose job is Director", director_code)]))
    for m in movies[12:20]:
        d = P[C[m["id"]]["crew"][0]["id"]]
        out.append((f"What is the birthday of the director of {m['title']}?",
                    _t("tmdb", "GET /search/movie", "GET /movie/{movie_id}/credits", "GET /person/{person_id}"),
                    d["birthday"],
                    [_search_movie(m["title"], m["id"]),
                     _step("tmdb", f"get the credits of the movie ({m['id']}) and find the Director",
                           "GET /movie/{movie_id}/credits", f"/movie/{m['id']}/credits", {},
                           "the name and id of the crew member whose job is Director", director_code),
                     _step("tmdb", f"get the details of the person ({d['id']}) to read the birthday",
                           "GET /person/{person_id}", f"/person/{d['id']}", {}, "the birthday of the person",
                           'print("the birthday of the person (" + str(response["id"]) + ") is " + response["birthday"])')]))
    actors = [p for p in P.values() if p["known_for_department"] == "Acting"]
    rng.shuffle(actors)
    for p in actors[:12]:
        films = sorted((M[mid] for mid, c in C.items() if any(x["id"] == p["id"] for x in c["cast"])),
                       key=lambda m: m["release_date"], reverse=True)
        if films:
            out.append((f"What is the most recent movie that {p['name']} acted in?",
                        _t("tmdb", "GET /search/person", "GET /person/{person_id}/movie_credits"), films[0]["title"],
                        [_search_person(p["name"]),
                         _step("tmdb", f"get the movie credits of the person ({p['id']}) and take the newest movie",
                               "GET /person/{person_id}/movie_credits", f"/person/{p['id']}/movie_credits", {},
                               "the title of the most recent movie in cast",
                               'print("the most recent movie of the person (" + str(response["id"]) + ") is " + '
                               'response["cast"][0]["title"])')]))
    for p in actors[12:18]:
        films = [(M[mid], x) for mid, c in C.items() for x in c["cast"] if x["id"] == p["id"]]
        if films:
            m, x = films[0]
            out.append((f"Which character did {p['name']} play in {m['title']}?",
                        _t("tmdb", "GET /search/person", "GET /person/{person_id}/movie_credits"), x["character"],
                        [_search_person(p["name"]),
                         _step("tmdb", f"get the movie credits of the person ({p['id']}) and find {m['title']}",
                               "GET /person/{person_id}/movie_credits", f"/person/{p['id']}/movie_credits", {},
                               f"the character played in {m['title']}",
                               f'm = [c for c in response["cast"] if c["title"] == {json.dumps(m["title"])}][0]\n'
                               'print("the person (" + str(response["id"]) + ") played " + m["character"])')]))
    for c in list(w["collections"].values())[:6]:
        m = M[c["parts"][0]]
        out.append((f"How many movies are in the collection that {m['title']} belongs to?",
                    _t("tmdb", "GET /search/movie", "GET /movie/{movie_id}", "GET /collection/{collection_id}"),
                    str(len(c["parts"])),
                    [_search_movie(m["title"], m["id"]),
                     _step("tmdb", f"get the details of the movie ({m['id']}) to find its collection",
                           "GET /movie/{movie_id}", f"/movie/{m['id']}", {}, "the id of the collection",
                           'print("the movie (" + str(response["id"]) + ") belongs to the collection (" + '
                           'str(response["belongs_to_collection"]["id"]) + ")")'),
                     _step("tmdb", f"get the collection ({c['id']}) and count its movies",
                           "GET /collection/{collection_id}", f"/collection/{c['id']}", {},
                           "the number of movies (parts) in the collection",
                           'print("the collection (" + str(response["id"]) + ") has " + str(len(response["parts"])) + '
                           '" movies")')]))
    best = max(M.values(), key=lambda m: m["vote_average"])
    out.append(("What is the title of the top rated movie?", _t("tmdb", "GET /movie/top_rated"), best["title"],
                [_step("tmdb", "get the top rated movies and take the first", "GET /movie/top_rated",
                       "/movie/top_rated", {}, "the title of the first movie",
                       'print("the top rated movie is " + response["results"][0]["title"])')]))
    for m in movies[20:26]:
        out.append((f"What is the runtime in minutes of {m['title']}?",
                    _t("tmdb", "GET /search/movie", "GET /movie/{movie_id}"), str(m["runtime"]),
                    [_search_movie(m["title"], m["id"]),
                     _step("tmdb", f"get the details of the movie ({m['id']}) to read the runtime", "GET /movie/{movie_id}",
                           f"/movie/{m['id']}", {}, "the runtime in minutes",
                           'print("the runtime of the movie (" + str(response["id"]) + ") is " + str(response["runtime"]) '
                           '+ " minutes")')]))
    return out


def _search_sp(kind: str, name: str) -> dict:
    return _step("spotify", f"search for the {kind} **{name}** to get its id", "GET /search", "/search",
                 {"q": name, "type": kind}, f"the id of the {kind} {name}",
                 f'r = response["{kind}s"]["items"][0]\nprint("the id of the {kind} " + r["name"] + " is (" + r["id"] + ")")')


def _spotify_tasks(w: dict, rng: random.Random) -> list[tuple[str, list[str], str, list[dict]]]:
    A, AL, T, PL = w["artists"], w["albums"], w["tracks"], w["playlists"]
    out = []
    arts = list(A.values())
    rng.shuffle(arts)
    for a in arts[:10]:
        top = max((t for t in T.values() if a["id"] in t["artist_ids"]), key=lambda t: t["popularity"])
        out.append((f"What is the most popular track by {a['name']}?",
                    _t("spotify", "GET /search", "GET /artists/{id}/top-tracks"), top["name"],
                    [_search_sp("artist", a["name"]),
                     _step("spotify", f"get the top tracks of the artist ({a['id']}) and take the first",
                           "GET /artists/{id}/top-tracks", f"/artists/{a['id']}/top-tracks", {},
                           "the name of the most popular track",
                           'print("the most popular track of the artist is " + response["tracks"][0]["name"])')]))
    albs = list(AL.values())
    rng.shuffle(albs)
    for al in albs[:8]:
        out.append((f"How many tracks are on the album {al['name']}?",
                    _t("spotify", "GET /search", "GET /albums/{id}/tracks"), str(len(al["tracks"])),
                    [_search_sp("album", al["name"]),
                     _step("spotify", f"get the tracks of the album ({al['id']}) and count them",
                           "GET /albums/{id}/tracks", f"/albums/{al['id']}/tracks", {}, "the number of tracks",
                           'print("the album has " + str(response["total"]) + " tracks")')]))
    for al in albs[8:14]:
        out.append((f"What is the first genre of the artist of the album {al['name']}?",
                    _t("spotify", "GET /search", "GET /albums/{id}", "GET /artists/{id}"),
                    A[al["artist_id"]]["genres"][0],
                    [_search_sp("album", al["name"]),
                     _step("spotify", f"get the album ({al['id']}) to find its artist", "GET /albums/{id}",
                           f"/albums/{al['id']}", {}, "the id of the artist",
                           'print("the artist of the album is (" + response["artists"][0]["id"] + ")")'),
                     _step("spotify", f"get the artist ({al['artist_id']}) and read the first genre",
                           "GET /artists/{id}", f"/artists/{al['artist_id']}", {}, "the first genre",
                           'print("the first genre of the artist is " + response["genres"][0])')]))
    for p in [p for p in PL.values() if p["tracks"]][:6]:
        out.append((f"What is the name of the first track in the playlist {p['name']}?",
                    _t("spotify", "GET /search", "GET /playlists/{playlist_id}/tracks"), T[p["tracks"][0]]["name"],
                    [_search_sp("playlist", p["name"]),
                     _step("spotify", f"get the tracks of the playlist ({p['id']}) and take the first",
                           "GET /playlists/{playlist_id}/tracks", f"/playlists/{p['id']}/tracks", {},
                           "the name of the first track",
                           'print("the first track of the playlist is " + response["items"][0]["track"]["name"])')]))
    out.append(("What is the name of the track that is playing now?", _t("spotify", "GET /me/player"),
                T[w["player"]["item"]]["name"],
                [_step("spotify", "get the playback state to find the current track", "GET /me/player", "/me/player",
                       {}, "the name of the track playing now",
                       'print("the track playing now is " + response["item"]["name"])')]))
    return out


def generate(domain: str = "tmdb", seed: int = 0, world: dict | None = None) -> TaskFile:
    """Synthetic tasks over the seeded world, in the published `data+tool` layout plus `answer`
    (and, in memory only, `plan`: the gold steps the oracle teacher follows)."""
    if domain not in DOMAINS:
        raise LatheError(f"domain: expected one of {', '.join(DOMAINS)} (got {domain!r})")
    world = world or build_world(seed)
    rng = random.Random(f"tasks:{domain}:{seed}")
    rows = (_tmdb_tasks if domain == "tmdb" else _spotify_tasks)(world[domain], rng)
    tasks = [Task(q_id=f"{domain}-{i}", query=q, solution=s, answer=a, domain=domain, plan=plan)
             for i, (q, s, a, plan) in enumerate(rows)]
    return TaskFile(tasks, ToolSandbox(domain, seed, world=world).tools(), "data+tool")


def write_tasks(tf: TaskFile, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"data": [t.to_json() for t in tf.tasks], "tool": [t.to_json() for t in tf.tools]},
                            indent=1))
    return p


def split_tasks(tasks: list[Task], held_out: float = 0.3, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """(train, held-out) with a seeded shuffle."""
    idx = list(range(len(tasks)))
    random.Random(f"split:{seed}").shuffle(idx)
    n = max(1, int(round(len(tasks) * held_out)))
    return [tasks[i] for i in sorted(idx[n:])], [tasks[i] for i in sorted(idx[:n])]
