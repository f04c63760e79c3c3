"""`cruft update` carries an engine change into a baked service, and leaves the team's code be.

The template is a git repository of its own here (a clone of this one's HEAD), so the test can
commit a change to it: a service is baked from the clone, kept in git with a team's edit to its
domain, and updated after an engine file changed in the template. cruft exits 0 and says
"Good work!" even when ``git apply -3`` leaves conflicts, so every check of a clean update is
made here: no unmerged path, no conflict marker, no ``.rej`` file, and nothing changed but
the engine file and ``.cruft.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parent.parent
ENGINE_FILE = "src/backbone/topics.py"  # relative to a baked project
TEMPLATE_ENGINE_FILE = "{{cookiecutter.project_slug}}/" + ENGINE_FILE
# What a working copy of the template may hold that is no part of it (copied without git).
NOT_TEMPLATE = (".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")
CONFLICT_MARKERS = ("<<<<<<< ", ">>>>>>> ")


@pytest.fixture
def git_env(tmp_path: Path) -> dict[str, str]:
    """git with an identity and none of this machine's user or system configuration."""
    empty = tmp_path / "gitconfig"
    empty.write_text("")
    return {
        **os.environ,
        "GIT_CONFIG_GLOBAL": str(empty),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Template Test",
        "GIT_AUTHOR_EMAIL": "template-test@example.com",
        "GIT_COMMITTER_NAME": "Template Test",
        "GIT_COMMITTER_EMAIL": "template-test@example.com",
    }


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def git(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = run(["git", *args], cwd, env)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def commit_all(repo: Path, env: dict[str, str], message: str) -> str:
    git(repo, env, "add", "-A")
    git(repo, env, "commit", "-q", "-m", message)
    return git(repo, env, "rev-parse", "HEAD").strip()


@dataclass
class Setup:
    template: Path  # the template's git repository
    project: Path  # a service baked from it, in a git repository of its own
    package: str
    env: dict[str, str]


@pytest.fixture
def setup(tmp_path: Path, git_env: dict[str, str], cookiecutter_config: Path) -> Setup:
    template = tmp_path / "template"
    if (ROOT / ".git").exists():
        git(tmp_path, git_env, "clone", "-q", str(ROOT), str(template))
    else:  # a template without its history: its files as one commit
        shutil.copytree(ROOT, template, ignore=shutil.ignore_patterns(*NOT_TEMPLATE))
        git(template, git_env, "init", "-q")
        commit_all(template, git_env, "the template")
    baked_from = git(template, git_env, "rev-parse", "HEAD").strip()

    project = Path(
        cookiecutter(
            str(template),
            no_input=True,
            output_dir=str(tmp_path / "out"),
            config_file=str(cookiecutter_config),
        )
    )
    state = json.loads((project / ".cruft.json").read_text())
    assert (state["template"], state["commit"]) == (str(template), baked_from), state
    git(project, git_env, "init", "-q")
    commit_all(project, git_env, "Baked")
    package = state["context"]["cookiecutter"]["package_name"]
    return Setup(template, project, package, git_env)


def team_owned(setup: Setup) -> dict[str, bytes]:
    """The files a team edits: its domain, the wiring and the command line."""
    src = setup.project / "src" / setup.package
    paths = [*sorted((src / "domain").glob("*")), src / "app.py", src / "cli.py"]
    return {str(p.relative_to(setup.project)): p.read_bytes() for p in paths if p.is_file()}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new, 1))


def change_engine_in_template(setup: Setup, line: str) -> str:
    """Append ``line`` to an engine file of the template and commit it: the new commit."""
    path = setup.template / TEMPLATE_ENGINE_FILE
    path.write_text(path.read_text() + line + "\n")
    return commit_all(setup.template, setup.env, f"Engine: {line}")


def cruft_update(setup: Setup) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "cruft", "update", "--skip-apply-ask"]
    return run(args, setup.project, setup.env)


def changed_paths(setup: Setup) -> set[str]:
    """Paths git sees as changed, staged or not, or untracked."""
    status = git(setup.project, setup.env, "status", "--porcelain", "--untracked-files=all")
    return {line[3:] for line in status.splitlines() if line.strip()}


def update_problems(setup: Setup, done: subprocess.CompletedProcess[str]) -> list[str]:
    """Why the update is not clean; empty when it applied without a conflict."""
    output = done.stdout + done.stderr
    problems = []
    if done.returncode != 0:
        problems.append(f"cruft exited {done.returncode}")
    if "Good work!" not in done.stdout:
        problems.append("cruft did not report an update")
    for phrase in ("conflict", "Failed to apply", ".rej"):
        if phrase in output:
            problems.append(f"cruft said {phrase!r}")
    unmerged = git(setup.project, setup.env, "diff", "--name-only", "--diff-filter=U")
    problems += [f"unmerged: {path}" for path in unmerged.split()]
    rejects = [p for p in setup.project.rglob("*.rej") if ".git" not in p.parts]
    problems += [f"rejected hunks: {p.relative_to(setup.project)}" for p in rejects]
    for rel in sorted(changed_paths(setup)):
        path = setup.project / rel
        if path.is_file() and any(m in path.read_text() for m in CONFLICT_MARKERS):
            problems.append(f"conflict markers in {rel}")
    if problems:
        problems.append(f"cruft's output:\n{output}")
    return problems


def test_engine_change_applies_and_team_code_survives(setup: Setup) -> None:
    # the team's work: a rule changed in the domain and a handler note, committed
    domain = setup.project / "src" / setup.package / "domain"
    edit(domain / "aggregate.py", '("silver", 50_000)', '("silver", 40_000)')
    edit(domain / "handlers.py", "\n\n@handlers.on(", "\n\n# team: reviewed\n@handlers.on(")
    commit_all(setup.project, setup.env, "Team: silver from 400.00")
    before = team_owned(setup)
    assert b'("silver", 40_000)' in before[f"src/{setup.package}/domain/aggregate.py"]

    line = "# engine change shipped by the template"
    new_commit = change_engine_in_template(setup, line)
    done = cruft_update(setup)

    assert update_problems(setup, done) == []
    assert changed_paths(setup) == {ENGINE_FILE, ".cruft.json"}
    engine = (setup.project / ENGINE_FILE).read_bytes()
    assert engine == (setup.template / TEMPLATE_ENGINE_FILE).read_bytes()
    assert engine.decode().splitlines()[-1] == line
    assert team_owned(setup) == before, "the update changed files the team owns"
    state = json.loads((setup.project / ".cruft.json").read_text())
    assert state["commit"] == new_commit


def test_a_conflicting_update_is_caught(setup: Setup) -> None:
    """The checks above see a conflict that cruft itself reports as "Good work!"."""
    engine = setup.project / ENGINE_FILE
    engine.write_text(engine.read_text() + "# patched by the team\n")
    commit_all(setup.project, setup.env, "Team: patched the engine")
    change_engine_in_template(setup, "# patched by the template")
    done = cruft_update(setup)

    problems = update_problems(setup, done)
    assert f"unmerged: {ENGINE_FILE}" in problems, problems
    assert f"conflict markers in {ENGINE_FILE}" in problems, problems
