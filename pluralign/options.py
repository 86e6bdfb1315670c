"""Reference pages of the config: every config group, its options and every field.

The documentation of a field lives once, next to the field, as the comment on its line
(or the comment lines just above it) in the config dataclass. This module reads those
comments back (with `ast` and `tokenize`), so `pluralign --help`, `pluralign options GROUP`
and the README's reference tables cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import pathlib
import re
import textwrap
import tokenize

CONF_DIR = pathlib.Path(__file__).parent / "conf"
# Groups as a user picks them on the command line, in the order --help lists them.
GROUPS = ("model", "data", "train", "eval", "experiment", "encoder", "hydra/launcher", "hydra/sweeper")
GROUP_HELP = {
    "model": "the reward model family (pluralign options model/NAME lists its fields)",
    "data": "built-in synthetic data, real data sets, your own tables or a dataset directory",
    "train": "optimiser, schedule, batch size, early stopping, tracking (pluralign options train)",
    "eval": "the few-shot protocol on unseen users (pluralign options eval)",
    "experiment": "whole jobs: a sweep with its settings and its expected result in the header",
    "encoder": "frozen text encoder of `pluralign embed` (pluralign embed encoder=hf ...)",
    "hydra/launcher": "where sweep jobs run: submitit local processes or Slurm (pip install pluralign[sweep])",
    "hydra/sweeper": "Optuna hyper-parameter search (pip install pluralign[sweep])",
}


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    name: str
    type: str
    default: str
    doc: str


def _comments_by_line(source: str) -> dict[int, str]:
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    return comments


@functools.cache
def field_docs(cls) -> list[FieldDoc]:
    """The fields of a config dataclass with their type, default and comment."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = _comments_by_line(source)
    node = ast.parse(source).body[0]
    docs = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        parts, line = [], stmt.lineno - 1  # comment lines just above the field
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            parts.insert(0, comments.get(line, ""))
            line -= 1
        if stmt.end_lineno in comments:  # the comment on the field's (last) line
            parts.append(comments[stmt.end_lineno])
        docs[stmt.target.id] = " ".join(p for p in parts if p)
    out = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "???"
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append(FieldDoc(f.name, type_name, _show(default), docs.get(f.name, "")))
    return out


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files (never the internal `schema_*` entries)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def option_description(group: str, option: str, width: int = 110) -> str:
    """The first sentence of an option's header comment, cut to one line."""
    text = []
    for line in (CONF_DIR / group / f"{option}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        line = line.lstrip("#").strip()
        if line.startswith("@package"):
            continue
        if not line or (text and re.match(r"(pluralign |pip |\S+=\S)", line)):  # a blank line or a command
            break
        text.append(line)
    sentence = re.split(r"(?<!\bal)(?<!e\.g)\.(?:\s|$)|: pluralign ", " ".join(text))[0].strip()
    sentence = sentence.rstrip(":")
    return sentence if len(sentence) <= width else textwrap.shorten(sentence, width, placeholder=" …")


def groups_help(groups=GROUPS) -> str:
    """Every config group with its options and a one-line description each (for --help)."""
    lines = []
    for group in groups:
        lines.append(f"{group}: {GROUP_HELP[group]}")
        options = group_options(group)
        width = max(len(o) for o in options)
        for option in options:
            lines.append(f"    {option:<{width}}  {option_description(group, option)}")
        lines.append("")
    return "\n".join(lines).rstrip()


def schema_of(group: str, option: str | None):
    """The config dataclass that validates `group` (and `group/option`)."""
    from pluralign.config import SCHEMAS

    if option is None:
        return SCHEMAS.get((group, "schema"))
    import yaml

    defaults = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text()).get("defaults", [])
    for entry in defaults:
        if isinstance(entry, str) and entry.startswith("schema") and (group, entry) in SCHEMAS:
            return SCHEMAS[(group, entry)]
    return SCHEMAS.get((group, "schema"))


def options_page(spec: str) -> str:
    """`pluralign options GROUP[/OPTION]`: a group's options, or every field of one option."""
    spec = spec.replace("=", "/").strip("/")
    group = next((g for g in sorted(GROUPS, key=len, reverse=True) if spec == g or spec.startswith(g + "/")), None)
    if group is None:
        raise ValueError(f"unknown config group {spec!r}; groups: {', '.join(GROUPS)}")
    option = spec[len(group) + 1:]
    if option and option not in group_options(group):
        raise ValueError(f"no option {option!r} in group {group}; options: {', '.join(group_options(group))}")
    cls = schema_of(group, option or None)
    if not option and cls is None:
        return groups_help([group]) + f"\n\nFields of one option: pluralign options {group}/OPTION"
    lines = [f"{group}={option}: {option_description(group, option, width=400)}" if option else groups_help([group])]
    if cls is None:  # Hydra's own configs (launchers, sweepers): the file says it all
        return "\n".join([*lines, "", (CONF_DIR / group / f"{option}.yaml").read_text()])
    values = _yaml_values(group, option) if option else {}
    prefix = "" if group == "experiment" else f"{group.split('/')[-1]}."
    lines.append("")
    lines.append(f"Fields ({cls.__module__}.{cls.__name__}); override with {prefix}FIELD=VALUE:")
    for f in field_docs(cls):
        value = values.get(f.name, f.default)
        lines.append(f"  {prefix}{f.name} = {value}   [{f.type}]")
        if f.doc:
            lines += textwrap.wrap(f.doc, 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _yaml_values(group: str, option: str) -> dict:
    import yaml

    loaded = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text()) or {}
    return {k: _show(v) for k, v in loaded.items() if k != "defaults"}


def reference_table(cls, prefix: str) -> str:
    """A markdown table of a config dataclass's fields (the README's train.* / eval.* tables)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in field_docs(cls):
        doc = f.doc.replace("|", r"\|")  # a literal | inside a markdown cell
        rows.append(f"| `{prefix}{f.name}` | `{f.default}` | {doc} |")
    return "\n".join(rows)
