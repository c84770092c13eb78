"""Tokenizer of the rule expression language (see ``rules/README.md`` for the language).

Tokens carry their 1-based column so that every syntax error can point at the offending text.
Kinds: ``NUMBER`` (value int or float; an optional binary size suffix ``KiB MiB GiB TiB`` multiplies it
into bytes), ``STRING`` (single or double quotes, escapes ``\\\\ \\' \\" \\n \\t``), ``NAME``, the keywords
``and or not in true false null``, operators ``== != < <= > >= + - * / %`` and the punctuation
``( ) [ ] , .``, and a final ``EOF``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RuleSyntaxError

MAX_EXPRESSION_CHARS = 4000

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
_TWO_CHAR = {"==", "!=", "<=", ">="}
_ONE_CHAR = set("<>+-*/%()[],.")
# Spellings from other languages, answered with what this one uses.
_HINTS = {"&&": "use 'and'", "||": "use 'or'", "**": "there is no power operator",
          "=": "use '==' to compare", "!": "use 'not'", "&": "use 'and'", "|": "use 'or'"}
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str          # NUMBER STRING NAME KEYWORD OP EOF
    value: object      # the number, the decoded string, the name / keyword / operator text
    pos: int           # 1-based column of the first character
    text: str          # the source text of the token (for error messages)


def _is_name_start(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_name_char(c: str) -> bool:
    return _is_name_start(c) or ("0" <= c <= "9")


def _number(text: str, i: int) -> tuple[Token, int]:
    start = i
    n = len(text)

    def digits(j: int) -> int:
        while j < n and (text[j].isdigit() and text[j].isascii() or text[j] == "_"):
            j += 1
        return j

    i = digits(i)
    is_float = False
    if i + 1 < n and text[i] == "." and text[i + 1].isascii() and text[i + 1].isdigit():
        is_float = True
        i = digits(i + 1)
    if i < n and text[i] in "eE":
        j = i + 1
        if j < n and text[j] in "+-":
            j += 1
        if j < n and text[j].isascii() and text[j].isdigit():
            is_float = True
            i = digits(j)
    raw = text[start:i]
    if raw.endswith("_") or "__" in raw or "_." in raw or "._" in raw:
        raise RuleSyntaxError(f"malformed number {raw!r} at column {start + 1}", token=raw, pos=start + 1)
    try:
        value: int | float = float(raw.replace("_", "")) if is_float else int(raw.replace("_", ""))
    except ValueError:
        raise RuleSyntaxError(f"malformed number {raw!r} at column {start + 1}", token=raw, pos=start + 1) \
            from None
    if i < n and _is_name_start(text[i]):
        j = i
        while j < n and _is_name_char(text[j]):
            j += 1
        suffix = text[i:j]
        if suffix not in UNITS:
            raise RuleSyntaxError(f"unexpected {text[start:j]!r} at column {start + 1}: a number may only be "
                                  f"followed by a size unit ({', '.join(UNITS)})", token=text[start:j],
                                  pos=start + 1)
        value = value * UNITS[suffix]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        i = j
    return Token("NUMBER", value, start + 1, text[start:i]), i


def _string(text: str, i: int) -> tuple[Token, int]:
    quote = text[i]
    start = i
    i += 1
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == quote:
            return Token("STRING", "".join(out), start + 1, text[start:i + 1]), i + 1
        if c == "\\":
            if i + 1 < n and text[i + 1] in _ESCAPES:
                out.append(_ESCAPES[text[i + 1]])
                i += 2
                continue
            bad = text[i:i + 2]
            raise RuleSyntaxError(f"unknown escape {bad!r} at column {i + 1} (use \\\\ \\' \\\" \\n \\t)",
                                  token=bad, pos=i + 1)
        if c == "\n":
            break
        out.append(c)
        i += 1
    raise RuleSyntaxError(f"unterminated string starting at column {start + 1}", token=text[start:start + 10],
                          pos=start + 1)


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with an ``EOF`` token; :class:`RuleSyntaxError` on bad input."""
    if not isinstance(text, str):
        raise RuleSyntaxError(f"an expression must be text, got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise RuleSyntaxError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c.isascii() and c.isdigit():
            tok, i = _number(text, i)
            tokens.append(tok)
        elif c in "'\"":
            tok, i = _string(text, i)
            tokens.append(tok)
        elif _is_name_start(c):
            j = i + 1
            while j < n and _is_name_char(text[j]):
                j += 1
            word = text[i:j]
            tokens.append(Token("KEYWORD" if word in KEYWORDS else "NAME", word, i + 1, word))
            i = j
        elif text[i:i + 2] in _TWO_CHAR:
            tokens.append(Token("OP", text[i:i + 2], i + 1, text[i:i + 2]))
            i += 2
        elif text[i:i + 2] in _HINTS:
            bad = text[i:i + 2]
            raise RuleSyntaxError(f"unexpected {bad!r} at column {i + 1}: {_HINTS[bad]}", token=bad, pos=i + 1)
        elif c in _ONE_CHAR:
            tokens.append(Token("OP", c, i + 1, c))
            i += 1
        else:
            hint = f": {_HINTS[c]}" if c in _HINTS else ""
            raise RuleSyntaxError(f"unexpected character {c!r} at column {i + 1}{hint}", token=c, pos=i + 1)
    tokens.append(Token("EOF", None, n + 1, ""))
    return tokens
