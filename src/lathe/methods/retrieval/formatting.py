"""Query formatting per model family (ToolRet spec, section 3), and document text.

Query-only mode gives the clean query (platform default); `legacy_empty_instruction=True`
reproduces the reference code, which formats an empty instruction instead.
Documents never get a prefix, except GritLM's `<|embed|>`.
"""

from __future__ import annotations

import json
from typing import Any

from lathe.platform.errors import LatheError

E5_MISTRAL_DEFAULT = "Given a web search query, retrieve relevant passages that answer the query"
NV_EMBED_DEFAULT = "Given a question, retrieve passages that answer the question"
MAX_WORDS = 2048

# family -> pooling (dense only). A family missing here is an error.
POOLING = {
    "generic": "cls", "gte": "cls", "bge": "cls", "e5": "mean", "e5-mistral": "last", "contriever": "mean",
    "all-minilm": "mean", "gtr-t5": "mean", "nv-embed": "mean", "gritlm": "mean", "tiny": "mean",
}
NO_NORMALIZE = {"gtr-t5", "contriever"}
FAMILIES = set(POOLING) | {"bm25", "reranker"}


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise LatheError(f"unknown model family {family!r}: add it to the pooling/format registry "
                         f"(known: {', '.join(sorted(FAMILIES))})")
    return family


def format_query(family: str, query: str, instruction: str | None = None, *,
                 legacy_empty_instruction: bool = False) -> str:
    """The text a retriever of `family` encodes. `instruction=None` means query-only mode."""
    check_family(family)
    if instruction is None:
        if not legacy_empty_instruction:
            return query
        instruction = ""
    if family == "bm25":
        return f"{instruction} {query}" if instruction else query
    if family == "e5":
        return f"Instruct: {instruction}\nquery: {query}"
    if family == "e5-mistral":
        return f"Instruct: {instruction or E5_MISTRAL_DEFAULT}\nQuery: {query}"
    if family == "nv-embed":
        return f"Instruct: {instruction or NV_EMBED_DEFAULT}\nQuery: {query}</s>"
    if family == "gritlm":
        return f"<|user|>\n{instruction}\n<|embed|>\n{query}"
    return f"Instruct: {instruction}\nQuery: {query}"


def truncate_words(text: str, max_words: int = MAX_WORDS) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


def document_text(family: str, documentation: str, doc: Any = None) -> str:
    """Dense encoders read the raw documentation; BM25 reads the string form of the parsed doc."""
    if family == "bm25":
        return truncate_words(str(doc if doc is not None else documentation))
    text = truncate_words(documentation if isinstance(documentation, str) else json.dumps(documentation))
    return "<|embed|>\n" + text if family == "gritlm" else text
