"""After generation: drop the parts not chosen, record the template for ``cruft update``.

Runs with the generated project as its working directory. Cookiecutter renders this file
with Jinja first; the answers arrive as one JSON document (see pre_gen_project.py for why
the raw single-quoted string is safe).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# Single quotes on purpose: tojson output holds double quotes and never a single one.
# Pairs rather than the dict: tojson sorts a dict's keys, pairs keep cookiecutter.json's order.
PAIRS: list[list[Any]] = json.loads(r'{{ cookiecutter.items() | list | tojson }}')  # fmt: skip
ANSWERS: dict[str, Any] = dict(PAIRS)

PACKAGE = str(ANSWERS["package_name"])

# Files and directories that only the SQL read model uses, relative to the project root.
READ_MODEL_ONLY = [
    f"src/{PACKAGE}/readmodel.py",
    f"src/{PACKAGE}/readmodel",
    f"src/{PACKAGE}/migrations",
    "alembic.ini",
    "tests/test_readmodel.py",
]

# The hashed lock of the runtime dependencies (`make lock`): the template ships one per
# answer to include_read_model, and the project keeps the matching one as requirements.lock.
LOCK = "requirements.lock"
LOCK_WITHOUT_READ_MODEL = "requirements-no-read-model.lock"

# Context keys cookiecutter adds that describe this machine and run, not the project.
# __checked_answers (the check run by hooks/answers.py) is left out too, so that `cruft update`
# renders it afresh and checks the answers again.
RUNTIME_KEYS = ("_output_dir", "_repo_dir", "_checkout", "__checked_answers")
# Never touched by `cruft update`: local state of a working copy.
CRUFT_SKIP = [".git", "data", ".venv"]
# Remote template references as cookiecutter recognises them (repository.is_repo_url,
# builtin abbreviations gh:, gl:, bb:).
REMOTE = re.compile(r"((((git|hg)\+)?(git|ssh|file|https?):(//)?)|(\w+@[\w\.]+)|(gh|gl|bb):)")


def keep_matching_lock(project: Path) -> None:
    other = project / LOCK_WITHOUT_READ_MODEL
    if not other.exists():
        return
    if ANSWERS.get("include_read_model") == "no":
        other.replace(project / LOCK)
    else:
        other.unlink()


def remove_unchosen(project: Path) -> list[str]:
    keep_matching_lock(project)
    removed: list[str] = []
    if ANSWERS.get("include_read_model") == "no":
        for rel in READ_MODEL_ONLY:
            path = project / rel
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            removed.append(rel)
    return removed


def _has_cookiecutter_json(path: Path) -> bool:
    return (path / "cookiecutter.json").is_file()


def local_template_dir(template: str, repo_dir: str | None) -> Path | None:
    """The template's directory as an absolute path, or None if it cannot be found.

    Cookiecutter may have been given a relative path, and this script runs in the generated
    project, so the path is resolved against where cookiecutter ran the hook from: it
    runs hooks from inside the template dir (hooks.run_hook_from_repo_dir, work_in).
    """
    for raw in (repo_dir, template):
        if raw and Path(raw).is_absolute() and _has_cookiecutter_json(Path(raw)):
            return Path(raw).resolve()
    candidates: list[Path] = []
    proc_cwd = Path(f"/proc/{os.getppid()}/cwd")  # the cookiecutter process, on Linux
    with contextlib.suppress(OSError):
        candidates.append(proc_cwd.resolve(strict=True))
    if os.environ.get("PWD"):  # the shell's directory when cookiecutter was started
        candidates += [
            Path(os.environ["PWD"], raw).resolve() for raw in (repo_dir, template) if raw
        ]
    parts = Path(os.path.normpath(repo_dir or template)).parts
    # What a relative path says about the directory's own name: the parts after any "..".
    wanted = parts[len(parts) - parts[::-1].index("..") :] if ".." in parts else parts
    for candidate in candidates:
        if _has_cookiecutter_json(candidate) and (
            not wanted or candidate.parts[-len(wanted) :] == wanted
        ):
            return candidate
    return None


def _git(directory: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def template_source() -> tuple[str, str | None, str | None]:
    """(template location, commit or None, directory inside the repository or None)."""
    template = str(ANSWERS.get("_template", ""))
    repo_dir = ANSWERS.get("_repo_dir")
    local = local_template_dir(template, str(repo_dir) if repo_dir else None)
    remote = bool(REMOTE.match(template))
    if local is None:
        return template, None, None
    commit = _git(local, "rev-parse", "--verify", "HEAD")
    if remote:  # a clone under ~/.cookiecutters: keep the URL, take the clone's commit
        return template, commit, None
    top = _git(local, "rev-parse", "--show-toplevel")
    if commit is None or top is None:
        return str(local), None, None
    directory = os.path.relpath(local, Path(top).resolve())
    if directory == ".":
        return str(local), commit, None
    return str(Path(top).resolve()), commit, directory  # template in a subdirectory


def cruft_state() -> dict[str, Any]:
    """The state file `cruft` (2.16) writes after `cruft create`, same keys and order."""
    template, commit, directory = template_source()
    context = {key: value for key, value in ANSWERS.items() if key not in RUNTIME_KEYS}
    context["_template"] = template
    context["_commit"] = commit
    return {
        "template": template,
        "commit": commit,
        "checkout": ANSWERS.get("_checkout"),
        "context": {"cookiecutter": context},
        "directory": directory,
        "skip": CRUFT_SKIP,
        "template_version": ANSWERS.get("_template_version"),
    }


def write_cruft_file(project: Path) -> bool:
    if "_commit" in ANSWERS:
        # cruft itself is generating (create/update/diff): it writes .cruft.json, and one
        # written here would show up as a spurious difference between template versions.
        return False
    text = json.dumps(cruft_state(), ensure_ascii=False, indent=2, separators=(",", ": "))
    (project / ".cruft.json").write_text(text + "\n", encoding="utf-8")
    return True


# Caches a working copy of the template may hold (the template's tools import its engine).
CACHE_DIRS = ("__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")


def remove_caches(project: Path) -> None:
    for name in CACHE_DIRS:
        for path in sorted(project.rglob(name), reverse=True):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)


def main() -> int:
    project = Path.cwd()
    remove_caches(project)
    removed = remove_unchosen(project)
    if not write_cruft_file(project):
        return 0  # generated by cruft for a diff or an update: no advice to give
    slug = project.name
    lines = [
        "",
        f"Generated {ANSWERS.get('project_name')} in {project}",
    ]
    if removed:
        lines.append(f"Left out the read model: {', '.join(removed)}")
    lines += [
        "",
        "Next steps:",
        f"  cd {slug}",
        "  make setup    # .venv with the service and its dev tools",
        "  make demo     # a local Kafka and a few nodes, with sample events",
        "  make test     # the service's tests, against a real Kafka",
        "",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
