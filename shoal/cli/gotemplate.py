"""Go's text/template, the part of it docker's `--format` flags use, evaluated over Python values.

No maintained Python implementation of Go templates was found (the PyPI candidates are a pre-1.0 first
release, and bindings that need a Go toolchain); jinja2 differs in syntax and in the small semantics users
rely on (`<no value>`, Go's printing of maps). So this is a small parser and evaluator of Go's language:

- text, actions `{{pipeline}}`, comments `{{/* … */}}`, trim markers `{{- ` and ` -}}`;
- pipelines `cmd | cmd` (the value goes last into the next command), parentheses, variables (`$x := …`,
  `$x = …`, `$`), fields and field chains (`.A.B`, `$x.A`, `(…).A`), method calls with arguments
  (`.Label "k"`), string, raw string, character, number, bool and nil literals;
- `if`/`else if`/`else`, `range` (lists, maps in key order, ints; `$i, $v :=`; `else`; `break`, `continue`),
  `with`/`else with`/`else`, each with its own variable scope;
- Go's functions `and or not len index slice print printf println eq ne lt le gt ge html js urlquery`, and
  docker's `json split join title lower upper pad truncate` (templates/templates.go).

`define`, `template`, `block` and `call` are refused at parse time.

Values: a dict is a Go map (a missing key is Go's invalid value, printed `<no value>`; a field of JSON null is
an error), lists are slices, and a `GoValue` is a value of a Go type of its own (a struct with fields and
methods, a time): it says how it prints, encodes to JSON and compares. Errors carry Go's messages:
`template: :1: function "foo" not defined`, `template: :1:2: executing "" at <.Foo>: …`.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NoReturn
from urllib.parse import quote_plus


class TemplateError(Exception):
    """A template that does not parse, or fails while executing; the message is Go's."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Missing:
    """Go's invalid reflect.Value: what a map gives for a key it lacks, printed as `<no value>`."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class GoValue:
    """A value of a Go type with behaviour of its own: fields and methods reached by name, its `%v` text, its
    JSON encoding. Subclasses override what differs from a plain struct."""

    go_type = "struct"

    def go_member(self, name: str) -> Any:
        """The field's value, or a callable for a method taking arguments; KeyError when it has neither."""
        raise KeyError(name)

    def go_string(self) -> str:
        return "{}"

    def go_json(self) -> Any:
        """What encoding/json writes for it, as a value json.dumps can write."""
        return {}

    def go_json_text(self) -> str:
        return _json_dumps(self.go_json())

    def go_truth(self) -> bool:
        return True

    def go_comparable(self) -> Any:
        """What `eq` and `lt` compare it by."""
        return self.go_json()


# ---- printing, as Go's fmt does it ----------------------------------------------------------------------

def go_sprint(value: Any) -> str:
    """One value as fmt.Sprint prints it (%v): maps as `map[k:v]` in key order, slices as `[a b]`."""
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, GoValue):
        return value.go_string()
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: _sort_key(kv[0]))
        return "map[" + " ".join(f"{go_sprint(k)}:{go_sprint(v)}" for k, v in items) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_sprint(v) for v in value) + "]"
    return str(value)


def _sort_key(key: Any) -> tuple[int, Any]:
    return (0, key) if isinstance(key, int | float) and not isinstance(key, bool) else (1, str(key))


def go_float(value: float) -> str:
    """A float64 as %v prints it (strconv's shortest 'g'): the fewest digits that read back the same, with an
    exponent when it is below -4 or at least 6 ("1e+06", "1.5e-05", "123456.5")."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # the value is 0.DIGITS times ten to the power `point`
    prefix = "-" if sign else ""
    if point - 1 < -4 or point - 1 >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        power = point - 1
        return f"{prefix}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def go_type_name(value: Any) -> str:
    if value is MISSING or value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, GoValue):
        return value.go_type
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    return type(value).__name__


def go_quote(text: str) -> str:
    """strconv.Quote, near enough: double quotes, backslash escapes, non-ASCII kept."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                        "\v": "\\v"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def truth(value: Any) -> bool:
    """Go's isTrue: the zero value of its type (and nil, and no value) is false."""
    if value is MISSING or value is None:
        return False
    if isinstance(value, GoValue):
        return value.go_truth()
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return bool(value)


def _json_ready(value: Any) -> Any:
    if value is MISSING:
        return None
    if isinstance(value, GoValue):
        return value.go_json()
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _json_dumps(value: Any) -> str:
    # encoding/json always escapes these two; docker turns HTML escaping off.
    text = json.dumps(_json_ready(value), ensure_ascii=False, separators=(",", ":"))
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def go_json(value: Any) -> str:
    """docker's `json` function: encoding/json without HTML escaping, compact, no trailing newline."""
    if isinstance(value, GoValue):
        return value.go_json_text()
    return _json_dumps(value)


# ---- lexing ---------------------------------------------------------------------------------------------

_SPACES = " \t\r\n"
_NUMBER = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+"
                     r"|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYWORDS = {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"}
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
            "'": "'", '"': '"'}


@dataclass
class _Token:
    kind: str  # text left right space field dot var ident keyword bool nil number string char pipe ( ) , := =
    text: str
    pos: int
    value: Any = None


class _Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.tokens: list[_Token] = []

    def error(self, pos: int, message: str) -> NoReturn:
        raise TemplateError(f"template: :{_line_of(self.src, pos)}: {message}")

    def run(self) -> list[_Token]:
        src, pos, trim_next = self.src, 0, False
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if trim_next:
                text = text.lstrip(_SPACES)
            if start < 0:
                if text:
                    self.tokens.append(_Token("text", text, pos))
                break
            inner = start + 2
            if src.startswith("-", inner) and inner + 1 < len(src) and src[inner + 1] in _SPACES:
                text = text.rstrip(_SPACES)
                inner += 2
            if text:
                self.tokens.append(_Token("text", text, pos))
            if src.startswith("/*", inner):
                pos, trim_next = self._comment(start, inner)
                continue
            self.tokens.append(_Token("left", "{{", start))
            pos, trim_next = self._action(inner)
        self.tokens.append(_Token("eof", "", len(src)))
        return self.tokens

    def _comment(self, start: int, inner: int) -> tuple[int, bool]:
        close = self.src.find("*/", inner + 2)
        if close < 0:
            self.error(start, "unclosed comment")
        after = close + 2
        if self._right_trim_at(after):
            return after + 4, True
        if self.src.startswith("}}", after):
            return after + 2, False
        self.error(start, "comment ends before closing delimiter")

    def _right_trim_at(self, pos: int) -> bool:
        src = self.src
        return pos < len(src) and src[pos] in _SPACES and src.startswith("-}}", pos + 1)

    def _action(self, pos: int) -> tuple[int, bool]:
        src, start = self.src, pos
        while True:
            if self._right_trim_at(pos):
                self.tokens.append(_Token("right", "}}", pos + 2))
                return pos + 4, True
            if src.startswith("}}", pos):
                self.tokens.append(_Token("right", "}}", pos))
                return pos + 2, False
            if pos >= len(src):
                self.error(start, "unclosed action")
            ch = src[pos]
            if ch in _SPACES:
                end = pos
                while end < len(src) and src[end] in _SPACES and not self._right_trim_at(end):
                    end += 1
                if end == pos:  # a trim marker follows at once
                    continue
                self.tokens.append(_Token("space", src[pos:end], pos))
                pos = end
            elif src.startswith(":=", pos):
                self.tokens.append(_Token(":=", ":=", pos))
                pos += 2
            elif ch in "|(),=":
                self.tokens.append(_Token("pipe" if ch == "|" else ch, ch, pos))
                pos += 1
            elif ch == '"':
                pos = self._quoted(pos)
            elif ch == "`":
                end = src.find("`", pos + 1)
                if end < 0:
                    self.error(pos, "unterminated raw quoted string")
                self.tokens.append(_Token("string", src[pos:end + 1], pos, src[pos + 1:end]))
                pos = end + 1
            elif ch == "'":
                pos = self._char(pos)
            elif ch == "$":
                match = re.compile(r"\$[A-Za-z0-9_]*").match(src, pos)
                assert match is not None
                self.tokens.append(_Token("var", match.group(), pos))
                pos = match.end()
            elif ch == "." and pos + 1 < len(src) and (src[pos + 1].isalpha() or src[pos + 1] == "_"):
                match = _WORD.match(src, pos + 1)
                assert match is not None
                self.tokens.append(_Token("field", "." + match.group(), pos, match.group()))
                pos = match.end()
            elif ch.isdigit() or (ch in "+-." and pos + 1 < len(src) and (src[pos + 1].isdigit() or
                                                                           src[pos + 1] == ".")):
                pos = self._number(pos)
            elif ch == ".":
                self.tokens.append(_Token("dot", ".", pos))
                pos += 1
            elif ch.isalpha() or ch == "_":
                match = _WORD.match(src, pos)
                assert match is not None
                word = match.group()
                kind = ("keyword" if word in _KEYWORDS else "bool" if word in ("true", "false")
                        else "nil" if word == "nil" else "ident")
                self.tokens.append(_Token(kind, word, pos, word == "true" if kind == "bool" else None))
                pos = match.end()
            else:
                self.error(pos, f"bad character U+{ord(ch):04X} {ch!r}")

    def _number(self, pos: int) -> int:
        match = _NUMBER.match(self.src, pos)
        if match is None or (match.end() < len(self.src) and (self.src[match.end()].isalnum())):
            end = pos
            while end < len(self.src) and (self.src[end].isalnum() or self.src[end] in "._+-"):
                end += 1
            self.error(pos, f"bad number syntax: {self.src[pos:end]!r}")
        text = match.group()
        clean = text.replace("_", "")
        value: int | float
        try:
            if re.fullmatch(r"[+-]?0[0-7]+", clean):
                value = int(clean, 8)
            elif re.fullmatch(r"[+-]?(?:0[xXoObB][0-9a-fA-F]+|\d+)", clean):
                value = int(clean, 0)
            else:
                value = float(clean)
        except ValueError:
            self.error(pos, f"bad number syntax: {text!r}")
        self.tokens.append(_Token("number", text, pos, value))
        return match.end()

    def _quoted(self, pos: int) -> int:
        src, i, out = self.src, pos + 1, []
        while True:
            if i >= len(src) or src[i] == "\n":
                self.error(pos, "unterminated quoted string")
            ch = src[i]
            if ch == '"':
                break
            if ch == "\\":
                decoded, i = self._escape(i, pos)
                out.append(decoded)
                continue
            out.append(ch)
            i += 1
        self.tokens.append(_Token("string", src[pos:i + 1], pos, "".join(out)))
        return i + 1

    def _escape(self, i: int, start: int) -> tuple[str, int]:
        src = self.src
        kind = src[i + 1] if i + 1 < len(src) else ""
        if kind in _ESCAPES:
            return _ESCAPES[kind], i + 2
        sizes = {"x": 2, "u": 4, "U": 8}
        if kind in sizes:
            digits = src[i + 2:i + 2 + sizes[kind]]
            if len(digits) == sizes[kind] and all(c in "0123456789abcdefABCDEF" for c in digits):
                return chr(int(digits, 16)), i + 2 + sizes[kind]
        if kind and kind in "01234567":
            digits = src[i + 1:i + 4]
            if len(digits) == 3 and all(c in "01234567" for c in digits):
                return chr(int(digits, 8)), i + 4
        self.error(start, "invalid syntax in quoted string")

    def _char(self, pos: int) -> int:
        src = self.src
        if src.startswith("\\", pos + 1):
            value, end = self._escape(pos + 1, pos)
        else:
            value, end = src[pos + 1:pos + 2], pos + 2
        if not value or not src.startswith("'", end):
            self.error(pos, "unterminated character constant")
        self.tokens.append(_Token("char", src[pos:end + 1], pos, ord(value)))
        return end + 1


def _line_of(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


# ---- the parse tree -------------------------------------------------------------------------------------

@dataclass
class _Node:
    pos: int
    text: str  # its source, for error messages


@dataclass
class _Text(_Node):
    pass


@dataclass
class _Field(_Node):
    names: list[str]


@dataclass
class _Variable(_Node):
    name: str
    names: list[str]  # fields after it: $x.A.B


@dataclass
class _Chain(_Node):
    node: _Node
    names: list[str]


@dataclass
class _Dot(_Node):
    pass


@dataclass
class _Nil(_Node):
    pass


@dataclass
class _Literal(_Node):
    value: Any  # a bool, number (a character is its code point) or string


@dataclass
class _Ident(_Node):
    name: str


@dataclass
class _Command(_Node):
    args: list[_Node]


@dataclass
class _Pipe(_Node):
    decls: list[str]
    is_assign: bool
    commands: list[_Command]


@dataclass
class _Action(_Node):
    pipe: _Pipe


@dataclass
class _Control(_Node):
    keyword: str  # if range with
    pipe: _Pipe
    body: list[_Node]
    otherwise: list[_Node] | None


@dataclass
class _BreakNode(_Node):
    pass


@dataclass
class _ContinueNode(_Node):
    pass


# ---- parsing --------------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, src: str, functions: dict[str, _Function]) -> None:
        self.src = src
        self.tokens = _Lexer(src).run()
        self.i = 0
        self.functions = functions
        self.variables: list[str] = ["$"]
        self.range_depth = 0

    def error(self, message: str, token: _Token | None = None) -> NoReturn:
        at = token or self.peek()
        raise TemplateError(f"template: :{_line_of(self.src, at.pos)}: {message}")

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def peek_non_space(self) -> _Token:
        j = self.i
        while self.tokens[j].kind == "space":
            j += 1
        return self.tokens[j]

    def next_non_space(self) -> _Token:
        while self.peek().kind == "space":
            self.i += 1
        return self.next()

    def parse(self) -> list[_Node]:
        nodes, stop = self.item_list(top=True)
        assert stop is None
        return nodes

    def item_list(self, top: bool = False) -> tuple[list[_Node], _Token | None]:
        """Nodes up to an `{{end}}` or `{{else…}}` (the keyword token is returned, the action left open)."""
        nodes: list[_Node] = []
        while True:
            token = self.next()
            if token.kind == "eof":
                if top:
                    return nodes, None
                self.error("unexpected EOF", token)
            if token.kind == "text":
                nodes.append(_Text(token.pos, token.text))
                continue
            keyword = self.peek_non_space()
            if keyword.kind == "keyword" and keyword.text in ("end", "else"):
                self.next_non_space()
                if top:
                    self.error(f"unexpected {{{{{keyword.text}}}}}", keyword)
                return nodes, keyword
            nodes.append(self.action(token))

    def action(self, left: _Token) -> _Node:
        token = self.peek_non_space()
        if token.kind == "keyword":
            self.next_non_space()
            if token.text in ("if", "range", "with"):
                return self.control(token, left)
            if token.text in ("break", "continue"):
                if self.range_depth == 0:
                    self.error(f"{{{{{token.text}}}}} outside {{{{range}}}}", token)
                self.expect_right(token.text)
                return _BreakNode(token.pos, "break") if token.text == "break" else _ContinueNode(token.pos, "continue")
            self.error(f"{{{{{token.text}}}}} is not supported by shoal's templates", token)
        pipe = self.pipeline("command", "right")
        return _Action(left.pos, pipe.text, pipe)

    def expect_right(self, context: str) -> None:
        token = self.next_non_space()
        if token.kind != "right":
            self.error(f"unexpected {self.describe(token)} in {context}", token)

    def control(self, keyword: _Token, left: _Token) -> _Node:
        mark = len(self.variables)
        if keyword.text == "range":
            self.range_depth += 1
        pipe = self.pipeline(keyword.text, "right", allow_two=keyword.text == "range")
        body, stop = self.item_list()
        otherwise: list[_Node] | None = None
        assert stop is not None
        if keyword.text == "range":
            self.range_depth -= 1
        if stop.text == "else":
            following = self.peek_non_space()
            if following.kind == "keyword" and following.text in ("if", "with") and keyword.text == following.text:
                # {{else if …}} is an if inside the else branch, closed by the same {{end}}.
                self.next_non_space()
                otherwise = [self.control(following, stop)]
            else:
                self.expect_right("else")
                otherwise, stop = self.item_list()
                assert stop is not None
                if stop.text != "end":
                    self.error("expected end; found {{else}}", stop)
                self.expect_right("end")
        else:
            self.expect_right("end")
        del self.variables[mark:]
        # Go places the node at its pipeline, and names it by its whole text in errors.
        text = self.src[left.pos:self.tokens[self.i - 1].pos + 2]
        return _Control(pipe.pos, text, keyword.text, pipe, body, otherwise)

    def pipeline(self, context: str, closing: str, allow_two: bool = False) -> _Pipe:
        start = self.peek_non_space()
        decls: list[str] = []
        is_assign = False
        if start.kind == "var":
            save = self.i
            self.next_non_space()
            after = self.peek_non_space()
            if after.kind in (":=", "=") or (after.kind == "," and allow_two):
                names = [start.text]
                if after.kind == ",":
                    self.next_non_space()
                    second = self.next_non_space()
                    if second.kind != "var":
                        self.error(f"unexpected {self.describe(second)} in {context}", second)
                    names.append(second.text)
                    after = self.peek_non_space()
                    if after.kind != ":=":
                        self.error(f"unexpected {self.describe(after)} in {context}", after)
                self.next_non_space()
                is_assign = after.kind == "="
                for name in names:
                    if is_assign and name not in self.variables:
                        self.error(f'undefined variable "{name}"', start)
                decls = names
            else:
                self.i = save
        commands: list[_Command] = []
        while True:
            token = self.peek_non_space()
            if token.kind == closing:
                self.next_non_space()
                break
            if commands and token.kind == "pipe":
                self.next_non_space()
            elif commands:
                self.error(f"unexpected {self.describe(token)} in {context}", token)
            commands.append(self.command(context, closing))
        if not commands:
            self.error(f"missing value for {context}", start)
        for number, command in enumerate(commands[1:], 2):
            if isinstance(command.args[0], _Literal | _Dot | _Nil):
                self.error(f"non executable command in pipeline stage {number}", start)
        if not is_assign:
            self.variables.extend(decls)
        end = self.tokens[self.i - 1].pos
        return _Pipe(start.pos, self.src[start.pos:end].strip(), decls, is_assign, commands)

    def command(self, context: str, closing: str) -> _Command:
        args: list[_Node] = []
        while True:
            token = self.peek_non_space()
            if token.kind in ("pipe", closing, "eof") or (token.kind == "right" and closing == ")"):
                break
            if args and self.peek().kind != "space":
                self.error(f"unexpected {self.describe(token)} in operand", token)
            args.append(self.operand(context))
        if not args:
            self.error("missing value for command" if token.kind != "eof" else "unclosed action", token)
        first, last = args[0], args[-1]
        return _Command(first.pos, self.src[first.pos:last.pos + len(last.text)], args)

    def operand(self, context: str) -> _Node:
        node = self.term(context)
        names: list[str] = []
        while self.peek().kind == "field":
            names.append(self.next().value)
        if not names:
            return node
        end = self.tokens[self.i - 1]
        text = self.src[node.pos:end.pos + len(end.text)]
        if isinstance(node, _Field):
            return _Field(node.pos, text, node.names + names)
        if isinstance(node, _Variable):
            return _Variable(node.pos, text, node.name, node.names + names)
        if isinstance(node, _Literal | _Nil | _Dot):
            self.error(f'unexpected . after term "{node.text}"')
        return _Chain(node.pos, text, node, names)

    def term(self, context: str) -> _Node:
        token = self.next_non_space()
        if token.kind == "ident":
            if token.text not in self.functions:
                self.error(f'function "{token.text}" not defined', token)
            return _Ident(token.pos, token.text, token.text)
        if token.kind == "dot":
            return _Dot(token.pos, ".")
        if token.kind == "nil":
            return _Nil(token.pos, "nil")
        if token.kind == "var":
            if token.text not in self.variables:
                self.error(f'undefined variable "{token.text}"', token)
            return _Variable(token.pos, token.text, token.text, [])
        if token.kind == "field":
            return _Field(token.pos, token.text, [token.value])
        if token.kind in ("bool", "number", "string", "char"):
            return _Literal(token.pos, token.text, token.value)
        if token.kind == "(":
            pipe = self.pipeline("parenthesized pipeline", ")")
            end = self.tokens[self.i - 1]
            pipe.pos, pipe.text = token.pos, self.src[token.pos:end.pos + 1]
            return pipe
        self.error(f"unexpected {self.describe(token)} in {context}", token)

    @staticmethod
    def describe(token: _Token) -> str:
        if token.kind == "right":
            return '"}}"'
        if token.kind == "eof":
            return "EOF"
        return f"{token.text!r}" if token.kind in ("string", "char") else f'"{token.text}"'


# ---- functions ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Function:
    call: Callable[..., Any]
    params: tuple[str, ...]  # "any", "string", "int" per fixed parameter
    variadic: str | None = None  # the type of further arguments, if it takes any


class _CallError(Exception):
    """A function's own error, reported as `error calling NAME: …`."""


def _not(value: Any) -> bool:
    return not truth(value)


def _len(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list | tuple | dict):
        return len(value)
    raise _CallError(f"len of type {go_type_name(value)}")


def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if item is MISSING or item is None:
            if isinstance(key, str):
                # A nil map[string]string (labels) gives "" for any key, as docker's typed documents do.
                return ""
            raise _CallError("index of untyped nil")
        if isinstance(item, dict):
            if key in item:
                item = item[key]
            elif all(isinstance(v, str) for v in item.values()):
                item = ""  # the zero value of a map of strings
            else:
                item = MISSING
        elif isinstance(item, list | tuple | str):
            if not isinstance(key, int) or isinstance(key, bool):
                raise _CallError(f"cannot index slice/array with type {go_type_name(key)}")
            if not 0 <= key < len(item):
                raise _CallError(f"index out of range: {key}")
            item = item[key] if not isinstance(item, str) else item.encode()[key]
        else:
            raise _CallError(f"can't index item of type {go_type_name(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if not isinstance(item, str | list | tuple):
        raise _CallError(f"can't slice item of type {go_type_name(item)}")
    if len(indexes) > 3 or (len(indexes) == 3 and isinstance(item, str)):
        raise _CallError(f"too many slice indexes: {len(indexes)}")
    bounds = [int(i) for i in indexes[:2]]
    start = bounds[0] if bounds else 0
    end = bounds[1] if len(bounds) > 1 else len(item)
    if not 0 <= start <= end <= len(item):
        raise _CallError(f"index out of range: {end if end > len(item) else start}")
    return item[start:end]


def _sprint(*args: Any) -> str:
    out = []
    previous_string = False
    for number, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if number > 0 and not is_string and not previous_string:
            out.append(" ")
        out.append(go_sprint(_value_or_nil(arg)))
        previous_string = is_string
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(go_sprint(_value_or_nil(a)) for a in args) + "\n"


def _value_or_nil(value: Any) -> Any:
    return None if value is MISSING else value


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?([a-zA-Z%])")


def go_sprintf(form: str, *args: Any) -> str:
    """fmt.Sprintf for the verbs templates use: %v %s %q %d %t %f %e %g %x %X %o %b %c and %%."""
    out: list[str] = []
    pos = 0
    used = 0
    for match in _VERB.finditer(form):
        out.append(form[pos:match.start()])
        pos = match.end()
        flags, width, precision, verb = match.groups()
        if verb == "%":
            out.append("%")
            continue
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = _value_or_nil(args[used])
        used += 1
        out.append(_pad(_format_verb(verb, arg, precision), flags, width, verb))
    out.append(form[pos:])
    if used < len(args):
        extra = ", ".join(f"{go_type_name(a)}={go_sprint(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_verb(verb: str, arg: Any, precision: str | None) -> str:
    is_int = isinstance(arg, int) and not isinstance(arg, bool)
    is_number = is_int or isinstance(arg, float)
    if verb in "vs":
        text = go_sprint(arg)
        return text[:int(precision or 0)] if precision is not None else text
    if verb == "q" and isinstance(arg, str):
        return go_quote(arg)
    if verb == "t" and isinstance(arg, bool):
        return "true" if arg else "false"
    if verb == "d" and is_int:
        return str(arg)
    if verb in "xXob" and is_int:
        return format(arg, verb)
    if verb in "xX" and isinstance(arg, str):
        return format(int.from_bytes(arg.encode()), verb) if arg else ""
    if verb == "c" and is_int:
        return chr(arg)
    if verb in "feEgG" and is_number:
        if verb in "gG" and precision is None:
            text = go_float(float(arg))
            return text.upper() if verb == "G" else text
        return format(float(arg), f".{int(precision) if precision is not None else 6}{verb}")
    return f"%!{verb}({go_type_name(arg)}={go_sprint(arg)})"


def _pad(text: str, flags: str, width: str | None, verb: str) -> str:
    if "+" in flags and verb in "dfeEgG" and not text.startswith("-"):
        text = "+" + text
    if not width or len(text) >= int(width):
        return text
    if "-" in flags:
        return text.ljust(int(width))
    if "0" in flags and verb in "dfeEgGxXob":
        sign = text[0] if text[:1] in "+-" else ""
        return sign + text[len(sign):].rjust(int(width) - len(sign), "0")
    return text.rjust(int(width))


def _comparable(value: Any) -> Any:
    value = _value_or_nil(value)
    if isinstance(value, GoValue):
        return value.go_comparable()
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise _CallError("missing argument for comparison")
    left = _comparable(first)
    if _kind(left) == "other":
        raise _CallError("invalid type for comparison")
    for other in others:
        right = _comparable(other)
        if _kind(right) == "other":
            raise _CallError("invalid type for comparison")
        if _kind(left) != _kind(right) and "nil" not in (_kind(left), _kind(right)):
            raise _CallError("incompatible types for comparison")
        if left == right:
            return True
    return False


def _ne(left: Any, right: Any) -> bool:
    return not _eq(left, right)


def _ordered(left: Any, right: Any) -> tuple[Any, Any]:
    a, b = _comparable(left), _comparable(right)
    if _kind(a) not in ("number", "string") or _kind(b) not in ("number", "string"):
        raise _CallError("invalid type for comparison")
    if _kind(a) != _kind(b):
        raise _CallError("incompatible types for comparison")
    return a, b


def _lt(left: Any, right: Any) -> bool:
    a, b = _ordered(left, right)
    return bool(a < b)


def _le(left: Any, right: Any) -> bool:
    a, b = _ordered(left, right)
    return bool(a <= b)


def _gt(left: Any, right: Any) -> bool:
    return not _le(left, right)


def _ge(left: Any, right: Any) -> bool:
    return not _lt(left, right)


def _html(*args: Any) -> str:
    text = args[0] if len(args) == 1 and isinstance(args[0], str) else _sprint(*args)
    return html.escape(text).replace("&#x27;", "&#39;").replace("&quot;", "&#34;").replace("\0", "\ufffd")


def _js(*args: Any) -> str:
    text = args[0] if len(args) == 1 and isinstance(args[0], str) else _sprint(*args)
    out = []
    for ch in text:
        if ch in "\\'\"":
            out.append("\\" + ch)
        elif ch in "<>&=" or ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _urlquery(*args: Any) -> str:
    text = args[0] if len(args) == 1 and isinstance(args[0], str) else _sprint(*args)
    return quote_plus(text, safe="")


def _split(text: str, separator: str) -> list[str]:
    if separator == "":
        return list(text)
    return text.split(separator)


def _join(items: Any, separator: str) -> str:
    if items is None or items is MISSING:
        return ""
    if isinstance(items, list | tuple):
        return separator.join(go_sprint(i) for i in items)
    if isinstance(items, dict):
        return separator.join(sorted(go_sprint(v) for v in items.values()))
    raise _CallError(f"expected slice, got {go_type_name(items)}")


def _title(text: str) -> str:
    """strings.Title: the first letter of each word upper case; a word starts after any other character."""
    out, previous = [], " "
    for ch in text:
        out.append(ch.upper() if not (previous.isalnum() or previous == "_") else ch)
        previous = ch
    return "".join(out)


def _pad_with_space(text: str, prefix: int, suffix: int) -> str:
    return text if text == "" else " " * prefix + text + " " * suffix


def _truncate(text: str, length: int) -> str:
    return text if len(text) < length else text[:length]


def _first(value: Any, *_: Any) -> Any:
    return value


GO_FUNCTIONS: dict[str, _Function] = {
    "and": _Function(lambda *a: a, ("any",), "any"),  # evaluated lazily by the executor
    "or": _Function(lambda *a: a, ("any",), "any"),
    "not": _Function(_not, ("any",)),
    "len": _Function(_len, ("any",)),
    "index": _Function(_index, ("any",), "any"),
    "slice": _Function(_slice, ("any",), "int"),
    "print": _Function(_sprint, (), "any"),
    "printf": _Function(go_sprintf, ("string",), "any"),
    "println": _Function(_sprintln, (), "any"),
    "eq": _Function(_eq, ("any",), "any"),
    "ne": _Function(_ne, ("any", "any")),
    "lt": _Function(_lt, ("any", "any")),
    "le": _Function(_le, ("any", "any")),
    "gt": _Function(_gt, ("any", "any")),
    "ge": _Function(_ge, ("any", "any")),
    "html": _Function(_html, (), "any"),
    "js": _Function(_js, (), "any"),
    "urlquery": _Function(_urlquery, (), "any"),
}

# docker's templates.basicFunctions.
DOCKER_FUNCTIONS: dict[str, _Function] = {
    **GO_FUNCTIONS,
    "json": _Function(go_json, ("any",)),
    "split": _Function(_split, ("string", "string")),
    "join": _Function(_join, ("any", "string")),
    "title": _Function(_title, ("string",)),
    "lower": _Function(str.lower, ("string",)),
    "upper": _Function(str.upper, ("string",)),
    "pad": _Function(_pad_with_space, ("string", "int", "int")),
    "truncate": _Function(_truncate, ("string", "int")),
}

# docker's templates.HeaderFunctions: a table's header row keeps its column names as they are.
HEADER_FUNCTIONS: dict[str, _Function] = {
    **DOCKER_FUNCTIONS,
    "json": _Function(_first, ("string",)),
    "split": _Function(_first, ("string", "string")),
    "join": _Function(_first, ("string", "string")),
    "title": _Function(_first, ("string",)),
    "lower": _Function(_first, ("string",)),
    "upper": _Function(_first, ("string",)),
    "truncate": _Function(_first, ("string", "int")),
}


# ---- execution ------------------------------------------------------------------------------------------

class _BreakLoop(Exception):
    """{{break}}: leaves the innermost range."""


class _ContinueLoop(Exception):
    """{{continue}}: goes on with the innermost range's next element."""


@dataclass
class _State:
    src: str
    functions: dict[str, _Function]
    out: list[str]
    variables: list[tuple[str, Any]] = field(default_factory=list)

    def fail(self, node: _Node, message: str) -> NoReturn:
        line_start = self.src.rfind("\n", 0, node.pos) + 1
        context = node.text if len(node.text) <= 20 else node.text[:20] + "..."
        raise TemplateError(f"template: :{_line_of(self.src, node.pos)}:{node.pos - line_start}: "
                            f'executing "" at <{context}>: {message}')

    # -- walking

    def walk(self, dot: Any, nodes: Sequence[_Node]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipeline(dot, node.pipe)
                if not node.pipe.decls:
                    self.out.append(go_sprint(value))
            elif isinstance(node, _Control):
                self.control(dot, node)
            elif isinstance(node, _BreakNode):
                raise _BreakLoop
            elif isinstance(node, _ContinueNode):
                raise _ContinueLoop

    def control(self, dot: Any, node: _Control) -> None:
        mark = len(self.variables)
        try:
            value = self.pipeline(dot, node.pipe)
            if node.keyword == "range":
                self.range(dot, node, value)
            elif truth(value):
                self.walk(value if node.keyword == "with" else dot, node.body)
            elif node.otherwise is not None:
                self.walk(dot, node.otherwise)
        finally:
            del self.variables[mark:]

    def range(self, dot: Any, node: _Control, value: Any) -> None:
        items: Iterator[tuple[Any, Any]]
        if value is MISSING or value is None:
            items = iter(())
        elif isinstance(value, list | tuple):
            items = iter(enumerate(value))
        elif isinstance(value, dict):
            items = iter(sorted(value.items(), key=lambda kv: _sort_key(kv[0])))
        elif isinstance(value, int) and not isinstance(value, bool):
            items = iter((i, i) for i in range(value))
        else:
            self.fail(node, f"range can't iterate over {go_sprint(value)}")
        mark = len(self.variables)
        ran = False
        for key, element in items:
            ran = True
            decls = node.pipe.decls
            if decls:
                self.variables[mark - 1] = (decls[-1], element)
            if len(decls) > 1:
                self.variables[mark - 2] = (decls[0], key)
            try:
                self.walk(element, node.body)
            except _ContinueLoop:
                pass
            except _BreakLoop:
                break
            finally:
                del self.variables[mark:]
        if not ran and node.otherwise is not None:
            self.walk(dot, node.otherwise)

    # -- evaluation

    def pipeline(self, dot: Any, pipe: _Pipe) -> Any:
        value: Any = _NO_FINAL
        for command in pipe.commands:
            value = self.command(dot, command, value)
            if value is None:
                value = MISSING  # an empty interface is dug into: nil becomes Go's invalid value
        for name in pipe.decls:
            if pipe.is_assign:
                for i in range(len(self.variables) - 1, -1, -1):
                    if self.variables[i][0] == name:
                        self.variables[i] = (name, value)
                        break
            else:
                self.variables.append((name, value))
        return value

    def command(self, dot: Any, command: _Command, final: Any) -> Any:
        first = command.args[0]
        if isinstance(first, _Field):
            return self.field_chain(dot, dot, first, first.names, command.args, final)
        if isinstance(first, _Chain):
            receiver = self.argument(dot, first.node)
            return self.field_chain(dot, receiver, first, first.names, command.args, final)
        if isinstance(first, _Variable):
            value = self.variable(first)
            if not first.names:
                self.not_a_function(command, final)
                return value
            return self.field_chain(dot, value, first, first.names, command.args, final)
        if isinstance(first, _Ident):
            return self.call_function(dot, first, command.args[1:], final, command)
        self.not_a_function(command, final)
        if isinstance(first, _Pipe):
            return self.pipeline(dot, first)
        if isinstance(first, _Dot):
            return dot
        if isinstance(first, _Literal):
            return first.value
        self.fail(first, "nil is not a command")

    def not_a_function(self, command: _Command, final: Any) -> None:
        if len(command.args) > 1 or final is not _NO_FINAL:
            self.fail(command.args[0], f"can't give argument to non-function {command.args[0].text}")

    def variable(self, node: _Variable) -> Any:
        for name, value in reversed(self.variables):
            if name == node.name:
                return value
        self.fail(node, f"undefined variable: {node.name}")

    def field_chain(self, dot: Any, receiver: Any, node: _Node, names: list[str], args: list[_Node],
                    final: Any) -> Any:
        for name in names[:-1]:
            receiver = self.field(dot, receiver, node, name, [], _NO_FINAL)
        return self.field(dot, receiver, node, names[-1], args[1:], final)

    def field(self, dot: Any, receiver: Any, node: _Node, name: str, args: list[_Node], final: Any) -> Any:
        if receiver is MISSING:
            return MISSING
        if receiver is None:
            self.fail(node, f"nil pointer evaluating interface {{}}.{name}")
        has_args = bool(args) or final is not _NO_FINAL
        if isinstance(receiver, GoValue):
            try:
                member = receiver.go_member(name)
            except KeyError:
                self.fail(node, f"can't evaluate field {name} in type {receiver.go_type}")
            if callable(member):
                values = [self.argument(dot, a) for a in args]
                if final is not _NO_FINAL:
                    values.append(final)
                try:
                    return member(*values)
                except _CallError as exc:
                    self.fail(node, f"error calling {name}: {exc}")
                except TypeError:
                    self.fail(node, f"wrong number of args for {name}")
            if has_args:
                self.fail(node, f"{name} has arguments but cannot be invoked as function")
            return member
        if isinstance(receiver, dict):
            if has_args:
                self.fail(node, f"{name} is not a method but has arguments")
            return receiver.get(name, MISSING)
        self.fail(node, f"can't evaluate field {name} in type {go_type_name(receiver)}")

    def argument(self, dot: Any, node: _Node) -> Any:
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Nil):
            return None
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Field):
            return self.field_chain(dot, dot, node, node.names, [node], _NO_FINAL)
        if isinstance(node, _Variable):
            value = self.variable(node)
            return self.field_chain(dot, value, node, node.names, [node], _NO_FINAL) if node.names else value
        if isinstance(node, _Pipe):
            return self.pipeline(dot, node)
        if isinstance(node, _Ident):
            return self.call_function(dot, node, [], _NO_FINAL, node)
        if isinstance(node, _Chain):
            receiver = self.argument(dot, node.node)
            return self.field_chain(dot, receiver, node, node.names, [node], _NO_FINAL)
        self.fail(node, f"can't handle {node.text}")

    def call_function(self, dot: Any, ident: _Ident, args: list[_Node], final: Any, at: _Node) -> Any:
        function = self.functions[ident.name]
        count = len(args) + (final is not _NO_FINAL)
        fixed = len(function.params)
        if function.variadic is None and count != fixed:
            self.fail(ident, f"wrong number of args for {ident.name}: want {fixed} got {count}")
        if count < fixed:
            self.fail(ident, f"wrong number of args for {ident.name}: want at least {fixed} got {count}")
        if ident.name in ("and", "or"):
            return self.and_or(dot, ident.name, args, final)
        values = []
        for number, arg in enumerate(args):
            kind = function.params[number] if number < fixed else function.variadic
            values.append(self.typed(arg, self.argument(dot, arg), kind or "any"))
        if final is not _NO_FINAL:
            kind = function.params[count - 1] if count - 1 < fixed else function.variadic
            values.append(self.typed(at, final, kind or "any"))
        try:
            return function.call(*values)
        except _CallError as exc:
            self.fail(at, f"error calling {ident.name}: {exc}")

    def and_or(self, dot: Any, name: str, args: list[_Node], final: Any) -> Any:
        value: Any = MISSING
        for arg in args:
            value = self.argument(dot, arg)
            if truth(value) != (name == "and"):
                return value
        if final is not _NO_FINAL:
            value = final
        return value

    def typed(self, node: _Node, value: Any, kind: str) -> Any:
        if kind == "any":
            return value
        if value is MISSING or value is None:
            self.fail(node, f"invalid value; expected {kind}")
        good = isinstance(value, str) if kind == "string" else (isinstance(value, int)
                                                                 and not isinstance(value, bool))
        if not good:
            if isinstance(node, _Literal):
                self.fail(node, f"expected {'integer' if kind == 'int' else kind}; found {node.text}")
            self.fail(node, f"wrong type for value; expected {kind}; got {go_type_name(value)}")
        return value


class _NoFinal:
    """No value piped in from a previous command."""


_NO_FINAL: Any = _NoFinal()


class Template:
    """A parsed template: `Template(text).execute(data)` gives the text, or raises TemplateError."""

    def __init__(self, text: str, functions: dict[str, _Function] | None = None) -> None:
        self.text = text
        self.functions = functions or DOCKER_FUNCTIONS
        self.root = _Parser(text, self.functions).parse()

    def execute(self, data: Any, functions: dict[str, _Function] | None = None) -> str:
        state = _State(self.text, functions or self.functions, [], [("$", data)])
        state.walk(data, self.root)
        return "".join(state.out)

    def execute_partial(self, data: Any, functions: dict[str, _Function] | None = None) -> str:
        """The text written before any error, as Go's Execute leaves it in its writer (docker ignores the error
        of a table's header row)."""
        state = _State(self.text, functions or self.functions, [], [("$", data)])
        with contextlib.suppress(TemplateError):
            state.walk(data, self.root)
        return "".join(state.out)
