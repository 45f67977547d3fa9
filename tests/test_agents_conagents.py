"""ConAgents' loop with ScriptedLLM over the in-process sandbox, the ReAct baseline, and the metrics."""

from __future__ import annotations

import json
import re

import pytest

from lathe.data import restbench as rb
from lathe.eval import agents as ev
from lathe.methods.agents.conagents import (EMPTY_OBSERVATION, ConAgents, ConAgentsConfig, parse_grounding,
                                            react_run, schema_outline)
from lathe.methods.agents.llm import ScriptedLLM

TMDB = "https://api.themoviedb.org/3"


@pytest.fixture(scope="module")
def env():
    world = rb.build_world(0)
    tf = rb.generate("tmdb", 0, world)
    return world, tf


def _task(tf, prefix):
    return next(t for t in tf.tasks if t.query.startswith(prefix))


def _pid_of(world, name):
    return next(p["id"] for p in world["tmdb"]["people"].values() if p["name"] == name)


def _scripted_two_step(world, task, code="print(response['cast'][0]['title'])"):
    name = re.search(r"acted in\?|that (.+) acted in", task.query).group(1)
    pid = _pid_of(world, name)

    def ground(msgs):
        n = msgs[-1]["content"].split("Query:")[-1].count("API Selection:")
        if n == 0:
            return f"search for the person **{name}**\nAPI Selection: GET {TMDB}/search/person"
        if n == 1:
            return (f"get the movie credits of the person ({pid})\n"
                    f"API Selection: GET {TMDB}/person/{{person_id}}/movie_credits\nExecution Result: hallucinated")
        return f"Final Answer: {task.answer}"

    def execute(msgs):
        if "/search/person" in msgs[-1]["content"].split("\n")[1]:
            return json.dumps({"url": f"{TMDB}/search/person", "params": {"query": name},
                               "output_instructions": "the id of the person", "description": "search"})
        return json.dumps({"url": f"{TMDB}/person/{pid}/movie_credits", "params": {},
                           "output_instructions": "the title of the newest movie in cast", "description": "credits"})

    return ScriptedLLM([(r"^Review the", '{"pass": true, "feedback": ""}'),
                        (r"^Tool documentation", execute),
                        (r"^Write Python code", code),
                        (r"^Extract the requested values", f"the id of the person {name} is ({pid})"),
                        (r"Candidate tools", ground)])


def test_scripted_policy_solves_two_step_task_and_metrics_score_it(env):
    world, tf = env
    task = _task(tf, "What is the most recent movie")
    sb = rb.ToolSandbox("tmdb", 0, world=world)
    llm = _scripted_two_step(world, task)
    events = []
    agent = ConAgents(llm, rb.candidate_tools(task, tf.tools, seed=0), lambda m, u, p: sb.request(m, u, p),
                      ConAgentsConfig(long_response_tokens=200), domain="tmdb", on_step=events.append)
    traj = agent.run(task.query)
    assert traj["finished"] and traj["answer"] == task.answer
    assert [s["status"] for s in traj["steps"]] == [200, 200]
    assert traj["steps"][1]["code_path"] and task.answer in traj["steps"][1]["observation"]
    assert [e["type"] for e in events] == ["step", "step", "final"]
    # the transcript carried the first observation into the second grounding call
    third = [r for r in llm.log if r["tag"] == "grounding"][2]["messages"][-1]["content"]
    assert "Executed Result: the id of the person" in third and "hallucinated" not in third
    scores = ev.score_conagents([task], [traj], path_metric="restgpt")
    assert scores["success"] == 100.0 and scores["path"] == 100.0 and scores["restgpt_path"] == 100.0
    tags = {r["tag"] for r in llm.log}
    assert tags == {"grounding", "execution", "observing", "review"}


def test_grounding_parsing_retries_and_forced_continuation(env):
    world, tf = env
    assert parse_grounding("I know it.\nfinal answer: X Y") == ("final", None, "X Y")
    assert parse_grounding("Thought: find it\nAPI Selection: GET /a") == ("step", "find it", "GET /a")
    task = _task(tf, "What is the title of the top rated")
    sb = rb.ToolSandbox("tmdb", 0, world=world)
    best = max(world["tmdb"]["movies"].values(), key=lambda m: m["vote_average"])

    def ground(msgs):
        c = msgs[-1]["content"]
        if c.rstrip().endswith("only.") and "API Selection: \n" in c:
            return f"GET {TMDB}/movie/top_rated\nThought: junk"
        if "Executed Result" in c.split("Query:")[-1]:
            return f"Final Answer: {best['title']}"
        return "look at the top rated list\nand nothing else"  # no API Selection: retried

    llm = ScriptedLLM([(r"^Tool documentation", json.dumps({"url": f"{TMDB}/movie/top_rated", "params": {},
                                                             "output_instructions": "first title"})),
                       (r"^Extract", f"the top rated movie is **{best['title']}**"),
                       (r"Candidate tools|only\.", ground)])
    agent = ConAgents(llm, tf.tools, lambda m, u, p: sb.request(m, u, p), ConAgentsConfig(protocol="adaptive"))
    traj = agent.run(task.query)
    g = [r for r in llm.log if r["tag"] == "grounding"]
    assert len(g) == 4 + 1 + 1  # 4 attempts, the forced continuation, then the final answer
    assert g[4]["messages"][-1]["content"].rstrip().endswith("only.") and g[4]["stop"] == ["Thought: "]
    assert traj["steps"][0]["thought"] == "look at the top rated list"
    assert traj["answer"] == best["title"] and traj["calls"][0]["status"] == 200


def test_unfilled_variable_is_never_sent_and_step_fails_after_three(env):
    world, tf = env
    sb = rb.ToolSandbox("tmdb", 0, world=world)
    llm = ScriptedLLM([(r"^Tool documentation", json.dumps({"url": f"{TMDB}/movie/{{movie_id}}/credits", "params": {}})),
                       (r"^Extract", "nothing"),
                       (r"Candidate tools", ["get credits\nAPI Selection: GET " + TMDB + "/movie/{movie_id}/credits",
                                             "Final Answer: unknown"])])
    agent = ConAgents(llm, tf.tools, lambda m, u, p: sb.request(m, u, p), ConAgentsConfig(protocol="adaptive"))
    traj = agent.run("Who directed it?")
    assert sb.calls == [] and traj["calls"] == []
    step = traj["steps"][0]
    assert step["exec_failed"] and step["attempts"] == 3
    ex = [r for r in llm.log if r["tag"] == "execution"]
    assert len(ex) == 3 and "{movie_id}" in ex[1]["messages"][-1]["content"].split("Previous attempts failed:")[1]


def test_204_and_500_feedback(env):
    world, tf = env
    empty = next(m for m, k in world["tmdb"]["keywords"].items() if not k)
    sb = rb.ToolSandbox("tmdb", 0, world=world)
    llm = ScriptedLLM([(r"^Tool documentation", json.dumps({"url": f"{TMDB}/movie/{empty}/keywords", "params": {}})),
                       (r"Candidate tools", ["keywords\nAPI Selection: GET " + TMDB + "/movie/{movie_id}/keywords",
                                             "Final Answer: none"])])
    traj = ConAgents(llm, tf.tools, lambda m, u, p: sb.request(m, u, p), ConAgentsConfig(protocol="adaptive")).run("kw?")
    assert traj["steps"][0]["observation"] == EMPTY_OBSERVATION and traj["steps"][0]["status"] == 204

    bad = rb.ToolSandbox("tmdb", 0, world=world, error_rate=1.0)
    llm2 = ScriptedLLM([(r"^Tool documentation", json.dumps({"url": f"{TMDB}/movie/top_rated", "params": {}})),
                        (r"Candidate tools", ["top\nAPI Selection: GET " + TMDB + "/movie/top_rated", "Final Answer: x"])])
    traj2 = ConAgents(llm2, tf.tools, lambda m, u, p: bad.request(m, u, p), ConAgentsConfig(protocol="adaptive")).run("q")
    s = traj2["steps"][0]
    assert s["exec_failed"] and len(bad.calls) == 3 and "500" in s["feedback"][0] and "injected fault" in s["feedback"][0]
    retry_prompt = [r for r in llm2.log if r["tag"] == "execution"][1]["messages"][-1]["content"]
    assert "injected fault" in retry_prompt
    # automatic-only protocol: no revision on environment feedback
    bad2 = rb.ToolSandbox("tmdb", 0, world=world, error_rate=1.0)
    llm3 = ScriptedLLM([(r"^Review", '{"pass": true}'),
                        (r"^Tool documentation", json.dumps({"url": f"{TMDB}/movie/top_rated", "params": {}})),
                        (r"Candidate tools", ["top\nAPI Selection: GET " + TMDB + "/movie/top_rated", "Final Answer: x"])])
    ConAgents(llm3, tf.tools, lambda m, u, p: bad2.request(m, u, p), ConAgentsConfig(protocol="automatic")).run("q")
    assert len(bad2.calls) == 1


def test_long_response_code_path_retries_then_falls_back(env):
    world, tf = env
    sb = rb.ToolSandbox("tmdb", 0, world=world)
    llm = ScriptedLLM([(r"^Tool documentation", json.dumps({"url": f"{TMDB}/movie/top_rated", "params": {},
                                                             "output_instructions": "first title"})),
                       (r"^Write Python code", ["import os\nprint(os.listdir('/'))", "while True:\n    pass",
                                                "print(response['nope'])"]),
                       (r"^Extract", "fallback observation"),
                       (r"Candidate tools", ["top\nAPI Selection: GET " + TMDB + "/movie/top_rated", "Final Answer: x"])])
    cfg = ConAgentsConfig(protocol="adaptive", long_response_tokens=100, interpreter_timeout_s=1.0)
    traj = ConAgents(llm, tf.tools, lambda m, u, p: sb.request(m, u, p), cfg).run("q")
    s = traj["steps"][0]
    assert s["code_path"] and s["observation"] == "fallback observation"
    errs = [f for f in s["feedback"] if f.startswith("extraction code")]
    assert "not allowed" in errs[0] and "Timeout" in errs[1] and "KeyError" in errs[2]
    code_calls = [r for r in llm.log if r["tag"] == "observing" and r["temperature"] == 0.5]
    assert len(code_calls) == 3 and "not allowed" in code_calls[1]["messages"][-1]["content"]
    outline = schema_outline({"results": [{"id": 1, "t": "a"}, {"id": 2}], "page": 1})
    assert outline == "response: dict\n  results: list[2]\n    results[0]: dict\n      id: int\n      t: str\n  page: int"


def test_review_feedback_loops_back_to_grounding(env):
    world, tf = env
    sb = rb.ToolSandbox("tmdb", 0, world=world)
    llm = ScriptedLLM([(r"^Review the step", ['{"pass": false, "feedback": "name the list"}', '{"pass": true}']),
                       (r"^Review the request", '{"pass": true}'),
                       (r"^Tool documentation", json.dumps({"url": f"{TMDB}/movie/popular", "params": {}})),
                       (r"^Extract", "obs"),
                       (r"^Write Python", "print(response['results'][0]['title'])"),
                       (r"^Revise the last step", "popular list\nAPI Selection: GET " + TMDB + "/movie/popular"),
                       (r"Candidate tools", ["vague\nAPI Selection: GET " + TMDB + "/movie/popular", "Final Answer: y"])])
    traj = ConAgents(llm, tf.tools, lambda m, u, p: sb.request(m, u, p), ConAgentsConfig()).run("q")
    reviews = traj["steps"][0]["reviews"]
    assert [r["pass"] for r in reviews if r["on"] == "step"] == [False, True]
    assert traj["steps"][0]["thought"] == "popular list"


def test_react_baseline_and_metric_values(env):
    world, tf = env
    task = _task(tf, "What is the title of the top rated")
    sb = rb.ToolSandbox("tmdb", 0, world=world)
    llm = ScriptedLLM([(r".*", lambda m: ("Thought: list\nAction: GET " + TMDB + "/movie/top_rated\nAction Input: {}"
                                          if "Observation:" not in m[-1]["content"]
                                          else "Final Answer: " + json.loads(
                                              m[-1]["content"].split("Observation: ")[1][:0] or "{}").get("x", task.answer)))])
    traj = react_run(llm, tf.tools, lambda m, u, p: sb.request(m, u, p), task.query)
    assert traj["finished"] and ev.score_conagents([task], [traj])["success"] == 100.0
    a, b, c = (f"GET {TMDB}/search/person", f"GET {TMDB}/person/{{person_id}}", f"GET {TMDB}/movie/top_rated")
    assert ev.path_rate([a, b], [{"method": "GET", "url": f"{TMDB}/search/person"},
                                 {"method": "GET", "url": f"{TMDB}/movie/top_rated"}]) == 0.5
    assert ev.path_rate([a, b], ["GET /search/person", "GET /person/77"]) == 1.0
    assert ev.restgpt_path([a, b], ["GET /person/77", "GET /search/person"]) == 0.0  # order matters there
    assert ev.path_rate([a, b], ["GET /person/77", "GET /search/person"]) == 1.0
    assert ev.path_rate_contains([a, b], [a, c]) == 0.5
    assert ev.cover_em("The answer is Paris, France", ["paris"]) == 1.0
    assert round(ev.f1_score("Paris", ["Paris France"]), 3) == 0.667
    assert ev.f1_score("Rome", ["Paris"]) == 0.0
