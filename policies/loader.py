"""Load policy YAML and report every problem with file:line:column and a fix.

The YAML is composed once into nodes (which carry start marks) and once into
plain data; pydantic validates the data and each error's ``loc`` is walked
back through the node tree to the line and column a governance user sees in
their editor. Unknown keys, check types and actions get a "did you mean".
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from policies.models import CHECK_TYPES, PolicyDocument


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    file: str
    line: int
    column: int
    path: str
    message: str
    suggestion: str | None = None

    def __str__(self) -> str:
        hint = f" ({self.suggestion})" if self.suggestion else ""
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.column}: {where}{self.message}{hint}"


class PolicyLoadError(Exception):
    """One or more policy files are wrong; ``problems`` has every one of them."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} policy problem(s):\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    document: PolicyDocument
    source: str
    node: yaml.Node
    # file:line of each rule's `id`, for explain output and cross-file errors
    rule_lines: dict[str, int]


def _mark(node: yaml.Node | None) -> tuple[int, int]:
    if node is None:
        return 1, 1
    return node.start_mark.line + 1, node.start_mark.column + 1


def _mapping_get(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k, v
    return None


def _locate(root: yaml.Node, loc: tuple[Any, ...], *, want_key: bool) -> yaml.Node:
    """The node an error location points at; parts with no node (union tags) are skipped."""
    node = root
    last_key: yaml.Node | None = None
    for i, part in enumerate(loc):
        if part == "[key]":
            return last_key or node
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                node = node.value[part]
            continue
        found = _mapping_get(node, str(part))
        if found is None:
            continue
        last_key, value = found
        if want_key and i == len(loc) - 1:
            return last_key
        node = value
    return node


def _models_in(ann: Any) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(ann):
        out.extend(_models_in(arg))
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model that owns the last part of ``loc`` (for 'did you mean')."""
    current: list[type[BaseModel]] = [PolicyDocument]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for m in current:
            f = m.model_fields.get(str(part))
            if f is not None:
                nxt.extend(_models_in(f.annotation))
        if not nxt:
            tagged = [
                m for m in current if "type" in m.model_fields and part in typing.get_args(m.model_fields["type"].annotation)
            ]
            if not tagged:
                return None
            nxt = tagged
        current = nxt
    return current[0] if len(current) == 1 else None


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
    if close:
        return f"did you mean `{close[0]}`?"
    return f"expected one of: {', '.join(choices)}" if choices else None


def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in CHECK_TYPES or part == "[key]" or str(part).startswith("function-"):
            continue  # discriminated-union tags and validator wrappers are not in the YAML
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem_from_error(err: Any, source: str, root: yaml.Node, prefix: str) -> PolicyProblem:
    loc = tuple(err["loc"])
    etype = err["type"]
    msg = err["msg"]
    suggestion: str | None = None
    path = _loc_path(loc)
    node = _locate(root, loc, want_key=etype == "extra_forbidden")
    if etype == "extra_forbidden":
        owner = _model_at(loc)
        known = list(owner.model_fields) if owner else []
        msg = f"unknown key `{loc[-1]}`"
        suggestion = _did_you_mean(str(loc[-1]), known)
    elif etype == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = ctx.get("tag", "")
        msg = f"unknown check type `{tag}`"
        suggestion = _did_you_mean(tag, CHECK_TYPES)
        type_node = _mapping_get(node, "type")
        if type_node:
            node = type_node[1]
            path = f"{path}.type"
    elif etype == "union_tag_not_found":
        msg = "a check needs `type:`"
        suggestion = f"one of: {', '.join(CHECK_TYPES)}"
    elif etype == "literal_error":
        expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        got = err.get("input")
        what = "key" if loc and loc[-1] == "[key]" else "value"
        msg = f"unknown {what} `{got}`" if isinstance(got, str) else f"invalid {what} {got!r}"
        suggestion = _did_you_mean(str(got), expected)
    elif etype == "missing":
        msg = f"missing required key `{loc[-1]}`"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    line, col = _mark(node)
    full = f"{prefix}{path}" if path else prefix.rstrip(".")
    return PolicyProblem(source, line, col, full, msg, suggestion)


def _cascade(err: Any) -> bool:
    # pydantic also says "too short" for a list whose items were all invalid: noise
    return err["type"] == "too_short" and isinstance(err.get("input"), list | tuple) and len(err["input"]) > 0


def _duplicate_keys(node: yaml.Node, source: str, path: str, out: list[PolicyProblem]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value)
            here = f"{path}.{key}" if path else key
            if key in seen:
                line, col = _mark(k)
                out.append(
                    PolicyProblem(source, line, col, here, f"key `{key}` appears twice", "remove one; YAML keeps only the last")
                )
            seen.add(key)
            _duplicate_keys(v, source, here, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, source, f"{path}[{i}]", out)


def parse_text(text: str, source: str) -> tuple[list[LoadedDocument], list[PolicyProblem]]:
    """Parse one file's text (one or more ``---`` separated documents)."""
    problems: list[PolicyProblem] = []
    try:
        nodes = [n for n in yaml.compose_all(text, Loader=yaml.SafeLoader) if n is not None]
        datas = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        return [], [PolicyProblem(source, line, col, "", f"invalid YAML: {problem}", "check indentation and quoting")]
    if not nodes:
        return [], [PolicyProblem(source, 1, 1, "", "empty policy file", "a policy needs id, version, owner and rules")]
    docs: list[LoadedDocument] = []
    for i, (node, data) in enumerate(zip(nodes, datas, strict=True)):
        prefix = f"[document {i + 1}]." if len(nodes) > 1 else ""
        if not isinstance(data, dict):
            line, col = _mark(node)
            problems.append(PolicyProblem(source, line, col, "", "a policy document must be a YAML mapping", "start with `id: my-policy`"))
            continue
        before = len(problems)
        _duplicate_keys(node, source, "", problems)
        try:
            doc = PolicyDocument.model_validate(data)
        except ValidationError as exc:
            problems.extend(
                _problem_from_error(e, source, node, prefix) for e in exc.errors() if not _cascade(e)
            )
            continue
        if len(problems) > before:
            continue
        rule_lines: dict[str, int] = {}
        rules = _mapping_get(node, "rules")
        if rules and isinstance(rules[1], yaml.SequenceNode):
            for r_node, r in zip(rules[1].value, doc.rules, strict=False):
                id_node = _mapping_get(r_node, "id")
                rule_lines[r.id] = _mark(id_node[1] if id_node else r_node)[0]
        docs.append(LoadedDocument(doc, source, node, rule_lines))
    return docs, problems


def policy_files(paths: typing.Iterable[str | Path]) -> tuple[list[Path], list[PolicyProblem]]:
    """Expand files and directories (``*.yaml``/``*.yml``, recursively, sorted)."""
    files: list[Path] = []
    problems: list[PolicyProblem] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(sorted(q for q in path.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(PolicyProblem(str(path), 1, 1, "", "no such file or directory", "check `policies.paths` in the gateway config"))
    return files, problems
