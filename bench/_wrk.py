"""wrk, driven from the benchmarks: a Lua script cycles through request paths (and bodies),
and its done() prints one JSON line that :func:`wrk` reads back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# wrk's done() prints one line with this prefix; latencies are in microseconds.
MARK = "WRKJSON "
LUA = """
local items = %(items)s
local method = %(method)s
local headers = %(headers)s
local threads = 0
local requests = {}
local at = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  for i, item in ipairs(items) do
    if method == "POST" then
      requests[i] = wrk.format(method, item[1], headers, item[2])
    else
      requests[i] = wrk.format(method, item[1], headers)
    end
  end
  -- threads start at different places of the cycle
  at = math.floor((id or 0) * #requests / 2)
end

function request()
  at = at %% #requests + 1
  return requests[at]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%(mark)s{\\"requests\\":%%d,\\"duration_us\\":%%d,\\"non2xx\\":%%d,"
      .. "\\"connect\\":%%d,\\"read\\":%%d,\\"write\\":%%d,\\"timeout\\":%%d,"
      .. "\\"p50_us\\":%%d,\\"p90_us\\":%%d,\\"p99_us\\":%%d,\\"max_us\\":%%d,"
      .. "\\"mean_us\\":%%.1f}\\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua one for these texts


def lua_script(items: list[tuple[str, str]], method: str, headers: dict[str, str]) -> str:
    rows = ",\n".join(f"{{{lua_string(path)}, {lua_string(body)}}}" for path, body in items)
    header_rows = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items())
    return LUA % {
        "items": "{\n" + rows + "\n}",
        "method": lua_string(method),
        "headers": "{" + header_rows + "}",
        "mark": MARK,
    }


def wrk(
    base: str,
    items: list[tuple[str, str]],
    *,
    connections: int,
    duration: float,
    scripts: Path,
    name: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Runs wrk over ``items`` (path, body) in a cycle; its done() figures plus rps."""
    if shutil.which("wrk") is None:
        raise SystemExit(
            "wrk is not installed: it is the load generator of this benchmark (a Python "
            "client tops out below the service). Install it: sudo apt-get install wrk"
        )
    script = scripts / f"{name}.lua"
    script.write_text(lua_script(items, method, headers or {}))
    command = [
        "wrk",
        "-t",
        str(min(2, connections)),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        base,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARK)]
    if not lines:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}{done.stderr}")
    found: dict[str, Any] = json.loads(lines[-1][len(MARK) :])
    found["rps"] = round(found["requests"] / (found["duration_us"] / 1e6), 1)
    found["socket_errors"] = sum(found[k] for k in ("connect", "read", "write", "timeout"))
    found["errors"] = found["non2xx"] + found["socket_errors"]
    print(
        f"{name}: c={connections} {found['rps']}/s p50 {found['p50_us'] / 1000:.2f} ms "
        f"p99 {found['p99_us'] / 1000:.2f} ms non-2xx {found['non2xx']} "
        f"socket errors {found['socket_errors']}",
        file=sys.stderr,
    )
    return found


def ms(us: float) -> float:
    return round(us / 1000, 2)
