"""Tool-use and retrieval agents (ConAgents, GenGround) over the one LLM client in `llm.py`."""
