"""Test doubles shared by the LEGO tests."""

from __future__ import annotations

import json


class ReplayLLM:
    """Replays replies in order (the last repeats) and records every prompt it was given."""

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def chat(self, messages, stop=None, temperature=0.0, max_tokens=None, json_mode=False, seed=None, **kw):
        self.prompts.append(messages)
        i = min(len(self.prompts) - 1, len(self.replies) - 1)
        r = self.replies[i]
        return r(messages) if callable(r) else r


def act(name, args=None):
    return json.dumps({"action": name, "action_input": {} if args is None else args})


def final(text):
    return json.dumps({"action": "Final Answer", "action_input": text})
