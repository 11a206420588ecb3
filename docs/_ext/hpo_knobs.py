"""Sphinx directives that draw the spec's tables from the code, so the docs cannot drift from it.

``.. hpo-spec-section:: train`` is a table of every key of that section of a study spec: its
name, type and default read from the frozen dataclass in :mod:`hpo.spec.schema`, its allowed
values from ``CHOICES``, and what it means from the class docstring (````key``: meaning``) or else
the comments beside (and above) the field in the source. A key described in neither takes its
meaning from the directive's content, one ``key: meaning`` line each. A key with neither, or a line naming a key that does not exist, is an
error, so a new field cannot reach the docs unexplained (CI builds them with ``-W``).
``.. hpo-space-knobs::`` is the table of tunable ``[space]`` knobs of the default model, with each
knob's rule, from :mod:`hpo.spec.knobs`.

Example (in a .rst page)::

    .. hpo-spec-section:: pretrain

       epochs: language-model epochs; 0: no pretraining
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive

from hpo.spec.knobs import knobs as space_knobs
from hpo.spec import schema


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comments in the class source: the lines of comments right above it, then
    the one at the end of its line."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above = []
            line = node.lineno - 1
            while line in comments and line not in code_lines:
                above.insert(0, comments[line])
                line -= 1
            beside = [comments[node.lineno]] if node.lineno in code_lines and node.lineno in comments else []
            out[node.target.id] = " ".join(above + beside)
    return out


def docstring_meanings(cls: type) -> dict[str, str]:
    """Field name -> what the class docstring says of it, as ````name``: meaning`` (up to the next
    such entry or the paragraph's end), its reST markup reduced to plain text."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for paragraph in re.split(r"\n\s*\n", doc):
        text = " ".join(paragraph.split())
        for match in re.finditer(r"``(\w+)``: (.*?)(?=\s``\w+``: |$)", text):
            if match.group(1) in names:
                out[match.group(1)] = _plain(match.group(2))
    return out


def _plain(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # :mod:`x` -> x
    return text.replace("``", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _table(headers: list[str], rows: list[list[nodes.Node]], widths: list[int]) -> nodes.table:
    table = nodes.table(classes=["hpo-knobs"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    head += _row([nodes.paragraph(text=h) for h in headers])
    body = nodes.tbody()
    group += body
    for cells in rows:
        body += _row(cells)
    return table


def _row(cells: list[nodes.Node]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        entry += cell if isinstance(cell, nodes.paragraph) else nodes.paragraph("", "", cell)
        row += entry
    return row


class SpecSection(Directive):
    """``.. hpo-spec-section:: NAME``: every key of the spec section NAME (``[NAME]`` in TOML)."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        section = self.arguments[0]
        cls = schema.SECTIONS.get(section)
        if cls is None:
            raise self.error(f"hpo-spec-section: unknown section {section!r} (known: {', '.join(schema.SECTIONS)})")
        comments = field_comments(cls)
        documented = docstring_meanings(cls)
        fields = dataclasses.fields(cls)
        given = self._given_meanings({f.name for f in fields})
        hints = {f.name: str(f.type) for f in fields}
        rows = []
        for f in fields:
            # The class docstring says most; else the comment beside the field; then the page's line.
            code = documented.get(f.name) or comments.get(f.name, "")
            meaning = " ".join(m for m in (code, given.get(f.name, "")) if m)
            if not meaning:
                raise self.error(f"hpo-spec-section {section}: {section}.{f.name} is described neither in "
                                 f"{cls.__module__}.{cls.__name__} (docstring or comment) nor by a "
                                 f"'{f.name}: meaning' line here")
            allowed = schema.CHOICES.get(f"{section}.{f.name}")
            if allowed:
                meaning = f"one of {', '.join(allowed)}" + (f". {meaning}" if meaning else "")
            rows.append([nodes.literal(text=f"{section}.{f.name}"), nodes.Text(hints[f.name]),
                         nodes.literal(text=_default(f)), nodes.Text(meaning)])
        return [_table(["key", "type", "default", "meaning"], rows, [22, 10, 12, 56])]

    def _given_meanings(self, known: set[str]) -> dict[str, str]:
        given = {}
        for line in self.content:
            key, sep, meaning = line.partition(":")
            key = key.strip()
            if not line.strip():
                continue
            if not sep or key not in known:
                raise self.error(f"hpo-spec-section {self.arguments[0]}: {line!r} is not 'key: meaning' "
                                 f"for a key of the section ({', '.join(sorted(known))})")
            given[key] = meaning.strip()
        return given


class SpaceKnobs(Directive):
    """``.. hpo-space-knobs::``: the ``[space]`` knobs of the default model and their rules."""

    def run(self) -> list[nodes.Node]:
        table = space_knobs(schema.LAYER_GROUPS)
        rows = []
        lower = [name for name in table if name.startswith("lr_") and name not in ("lr_head", "lr_div")]
        for knob in table.values():
            kind = "true or false" if knob.boolean else "whole number" if knob.integer else "number"
            if knob.name in lower:
                need = "required, unless space.lr_div is given"
            elif knob.name == "lr_div":
                need = f"optional, instead of {', '.join(lower)}"
            else:
                need = "required" if knob.required else "optional"
            rows.append([nodes.literal(text=f"space.{knob.name}"), nodes.Text(f"{kind}, {need}"), nodes.Text(knob.rule)])
        return [_table(["knob", "takes", "rule"], rows, [20, 34, 46])]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("hpo-spec-section", SpecSection)
    app.add_directive("hpo-space-knobs", SpaceKnobs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
