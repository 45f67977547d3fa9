"""Sandboxed Python for the observing agent's extraction code: never `exec` in the caller's process.

`run_code(code, response)` starts `python -I` in an empty temp dir with an empty environment. The
child, before running the code: caps its address space (`memory_mb`) and CPU time, forbids file
writes (RLIMIT_FSIZE 0), installs an audit hook that refuses file opens, sockets, subprocesses and
new imports, and runs the code with builtins whose `__import__` admits only the allow-list
(`json`, `re`, `math`, `collections`). The variable `response` is preloaded. The parent kills the
child after `timeout_s` wall seconds. Returns `(ok, stdout, error)`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile

ALLOWED_IMPORTS = ("json", "re", "math", "collections")

_CHILD = r'''
import sys, json, io, resource, builtins
job = json.loads(sys.stdin.read())
mem = job["memory_mb"] * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
cpu = max(1, int(job["timeout_s"]) + 1)
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
import re, math, collections, collections.abc
allowed = set(job["allowed"])
real_import = builtins.__import__
def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level or name.split(".")[0] not in allowed:
        raise ImportError(f"import of {name!r} is not allowed (allowed: {', '.join(sorted(allowed))})")
    return real_import(name, globals, locals, fromlist, level)
BLOCK = ("open", "socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "os.fork", "os.posix_spawn",
         "os.remove", "os.rename", "os.mkdir", "shutil.", "ctypes.", "import", "urllib.", "http.")
def audit(event, args):
    if event == "import" and args and str(args[0]).split(".")[0] in allowed:
        return
    if event in ("open", "import") or event.startswith(BLOCK):
        raise PermissionError(f"sandbox: {event} is not allowed")
safe_builtins = {k: getattr(builtins, k) for k in dir(builtins)
                 if k not in ("open", "exec", "eval", "compile", "input", "breakpoint", "help", "exit", "quit")}
safe_builtins["__import__"] = guarded_import
scope = {"__builtins__": safe_builtins, "response": job["response"], "json": json, "re": re, "math": math,
         "collections": collections, "__name__": "__sandbox__"}
out = io.StringIO()
real_stdout = sys.stdout
code = compile(job["code"], "<extraction>", "exec")
sys.addaudithook(audit)
sys.stdout = out
try:
    exec(code, scope)
    result = {"ok": True, "stdout": out.getvalue(), "error": None}
except BaseException as e:
    result = {"ok": False, "stdout": out.getvalue(), "error": f"{type(e).__name__}: {e}"}
sys.stdout = real_stdout
real_stdout.write(json.dumps(result))
real_stdout.flush()
'''


def check_imports(code: str) -> str | None:
    """A clear error for a syntax error or an import outside the allow-list, before spawning."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return f"SyntaxError: {e.msg} (line {e.lineno})"
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if not node.level else ["."]
        for n in names:
            if n.split(".")[0] not in ALLOWED_IMPORTS:
                return f"ImportError: import of {n!r} is not allowed (allowed: {', '.join(ALLOWED_IMPORTS)})"
    return None


def run_code(code: str, response, timeout_s: float = 5.0, memory_mb: int = 512) -> tuple[bool, str, str | None]:
    """Run `code` with `response` preloaded; (ok, printed text, error text or None)."""
    err = check_imports(code)
    if err:
        return False, "", err
    job = json.dumps({"code": code, "response": response, "timeout_s": timeout_s, "memory_mb": memory_mb,
                      "allowed": list(ALLOWED_IMPORTS)})
    with tempfile.TemporaryDirectory(prefix="lathe-sandbox-") as cwd:
        try:
            p = subprocess.run([sys.executable, "-I", "-S", "-c", _CHILD], input=job, capture_output=True,
                               text=True, timeout=timeout_s, cwd=cwd, env={})
        except subprocess.TimeoutExpired:
            return False, "", f"TimeoutError: the code ran longer than {timeout_s:g} s"
    if p.returncode != 0 or not p.stdout:
        tail = (p.stderr or "").strip().splitlines()[-1:] or [f"exit status {p.returncode}"]
        if p.returncode in (-9, -24) or "MemoryError" in (p.stderr or ""):
            return False, "", f"MemoryError: the code exceeded {memory_mb} MB or its CPU time"
        return False, "", f"the interpreter failed: {tail[0]}"
    try:
        res = json.loads(p.stdout)
    except json.JSONDecodeError:
        return False, "", "the interpreter returned no result"
    return bool(res["ok"]), res["stdout"], res["error"]
