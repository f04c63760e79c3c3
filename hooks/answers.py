"""Jinja extension for cookiecutter.json: derive the slug, check the answers before any output.

cookiecutter.json loads it through ``_extensions`` (``hooks.answers.AnswersExtension``);
cookiecutter and cruft put the template directory on ``sys.path`` while they render. It adds:

- the ``slug`` filter, which derives ``project_slug`` from ``project_name``: German umlauts
  and ß are transliterated (``Kundenrückgrat`` -> ``kundenrueckgrat``), other accents
  stripped, anything else but letters and digits becomes ``-``;
- the ``checked_answers`` filter, rendered by the ``__checked_answers`` key after the last
  question: the pre-gen hook's checks run on the answers before anything is written. A
  refusal prints one ``ERROR:`` line per problem on stderr and raises ``InvalidAnswers``,
  which the ``cookiecutter`` command reports in one line and exit status 1, without the
  traceback that a failing hook script gets from cookiecutter's logger;
- answers given on the command line (``key=value``) are taken literally: cookiecutter would
  render ``{{ x }}`` in one as Jinja and stop with an undefined-variable dump or a traceback.

The pre-gen hook still runs the same checks, for contexts that skip the prompts (``--replay``,
``generate_files`` called directly).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from cookiecutter.exceptions import FailedHookException
from jinja2 import Environment
from jinja2.ext import Extension

TEMPLATE = Path(__file__).resolve().parent.parent
GERMAN = {"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss", "ẞ": "SS"}
APOSTROPHES = re.compile("['\u2019]")
NOT_ALNUM = re.compile(r"[\W_]+")
JINJA = re.compile(r"\{\{|\{%|\{#")


class InvalidAnswers(FailedHookException):
    """Answers refused before generation; the problems are already printed on stderr."""


def transliterate(value: str) -> str:
    """German umlauts and ß spelled out, other accents dropped; other characters kept."""
    for char, spelled in GERMAN.items():
        value = value.replace(char, spelled)
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def slug(value: str) -> str:
    """'Kundenrückgrat' -> 'kundenrueckgrat', "O'Brien's Ledger" -> 'obriens-ledger'.

    Letters without an ASCII spelling stay, so that the check refuses the slug and asks for
    one rather than a name silently losing letters.
    """
    words = APOSTROPHES.sub("", transliterate(value)).lower()
    return NOT_ALNUM.sub("-", words).strip("-")


def _pre_gen_checks() -> ModuleType:
    """hooks/pre_gen_project.py as a module: the one place the checks are written."""
    path = Path(__file__).resolve().parent / "pre_gen_project.py"
    spec = importlib.util.spec_from_file_location("_backbone_template_checks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refuse(problems: list[str]) -> InvalidAnswers:
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    return InvalidAnswers(f"{len(problems)} invalid answer(s): nothing was generated.")


def checked_answers(answers: Mapping[str, Any]) -> str:
    """Render as '' when every answer is valid; otherwise print the problems, the command
    that asks nothing with the answers given (to edit, not to type them all again), and stop."""
    problems: list[str] = _pre_gen_checks().problems_in(dict(answers))
    if problems:
        print(f"To try again without the questions, fix and run:\n  {retry_command(answers)}")
        raise refuse(problems)
    return ""


def retry_command(answers: Mapping[str, Any]) -> str:
    """``cookiecutter <template> --no-input`` with each answer that is not its default; a
    derived default (a template, such as ``project_slug``'s) is rendered from the answers."""
    render = Environment()
    render.filters["slug"] = slug
    given = []
    for key, default in _defaults().items():
        if key.startswith("_") or not isinstance(default, str) or key not in answers:
            continue
        value = str(answers[key])
        if JINJA.search(default):
            default = render.from_string(default).render(cookiecutter=answers)
        if value != default:
            given.append(f"{key}={shlex.quote(value)}")
    return " ".join(["cookiecutter", shlex.quote(str(TEMPLATE)), "--no-input", *given])


def _defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    return defaults


def _answer_being_rendered() -> tuple[str, str] | None:
    """(key, raw value) while cookiecutter's prompt_for_config renders a string answer."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "prompt_for_config" and code.co_filename.endswith("prompt.py"):
            key, raw = frame.f_locals.get("key"), frame.f_locals.get("raw")
            if isinstance(key, str) and isinstance(raw, str):
                return key, raw
            return None
        frame = frame.f_back
    return None


class AnswersExtension(Extension):
    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.literals: list[str] = []
        self.defaults = _defaults()
        environment.filters["slug"] = slug
        environment.filters["checked_answers"] = checked_answers
        environment.globals["_literal_answer"] = self.literals.__getitem__

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        """An answer that is not the template's own default is text, not Jinja."""
        if name is not None or filename is not None or not JINJA.search(source):
            return source
        answer = _answer_being_rendered()
        if answer is None or answer[1] != source or self.defaults.get(answer[0]) == source:
            return source
        self.literals.append(source)
        return "{{ _literal_answer(" + str(len(self.literals) - 1) + ") }}"
