"""RFC 6901 JSON Pointers, compiled once into token tuples so that reading and writing never parse text.

Writes are copy-on-write: a container is changed in place only when this call created it (its id is in
``owned``); any other container (part of the input document) is shallow-copied first and the copy is
linked into its parent. The input is therefore never modified, and only the containers on the written
path are copied. Ids are a sound identity here: every container this call did not make belongs to the
input or the spec, both alive for the whole call, so an id in ``owned`` can only name one of ours.
"""

from __future__ import annotations

from typing import Final

# A token is (key, index): ``index`` is the array position the key names, or NOT_INDEX / APPEND.
Token = tuple[str, int]
Tokens = tuple[Token, ...]

NOT_INDEX: Final = -1
APPEND: Final = -2
# Longer digit strings cannot index a real array and would make int() slow; they stay plain keys.
_MAX_INDEX_DIGITS: Final = 18


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


class PointerSyntaxError(ValueError):
    pass


class WriteError(Exception):
    """A write met something it cannot go through; ``detail`` says what, for a TransformError."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def compile_pointer(text: str) -> Tokens:
    """``"/a~1b/0"`` -> ``(("a/b", NOT_INDEX), ("0", 0))``; raises PointerSyntaxError saying why not."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise PointerSyntaxError(f'{quote(text)} is not a JSON Pointer: it must be "" or start with "/"')
    tokens: list[Token] = []
    for raw in text[1:].split("/"):
        tokens.append(_token(_unescape(raw, text)))
    return tuple(tokens)


def _unescape(raw: str, text: str) -> str:
    if "~" not in raw:
        return raw
    pos = raw.find("~")
    while pos != -1:
        if raw[pos + 1 : pos + 2] not in ("0", "1"):
            bad = raw[pos : pos + 2]
            raise PointerSyntaxError(
                f'invalid escape {quote(bad)} in JSON Pointer {quote(text)} (use ~0 for "~" and ~1 for "/")'
            )
        pos = raw.find("~", pos + 2)
    # Order matters (RFC 6901 section 4): "~01" is the key "~1", not "/".
    return raw.replace("~1", "/").replace("~0", "~")


def _token(key: str) -> Token:
    if key == "-":
        return (key, APPEND)
    if key.isascii() and key.isdigit() and len(key) <= _MAX_INDEX_DIGITS and (key == "0" or key[0] != "0"):
        return (key, int(key))
    return (key, NOT_INDEX)


def escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def render(tokens: Tokens) -> str:
    return "".join("/" + escape(key) for key, _ in tokens)


def quote(text: str) -> str:
    """A string in double quotes with JSON escaping, for messages."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def resolve(document: object, tokens: Tokens) -> object:
    """The value at ``tokens``, or MISSING when any step does not exist (including through a scalar)."""
    node = document
    for key, index in tokens:
        if isinstance(node, dict):
            node = node.get(key, MISSING)
            if node is MISSING:
                return MISSING
        elif isinstance(node, list):
            if 0 <= index < len(node):
                node = node[index]
            else:
                return MISSING
        else:
            return MISSING
    return node


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def _own(container: dict[str, object] | list[object], owned: set[int]) -> dict[str, object] | list[object]:
    copy: dict[str, object] | list[object] = (
        dict(container) if isinstance(container, dict) else list(container)
    )
    owned.add(id(copy))
    return copy


def _step(node: object, key: str, index: int, tokens: Tokens, depth: int, owned: set[int]) -> object:
    """The child container at (key, index) of ``node``, created or copied so that it may be changed."""
    if isinstance(node, dict):
        child = node.get(key, MISSING)
        if child is MISSING:
            new: dict[str, object] = {}
            owned.add(id(new))
            node[key] = new
            return new
        if isinstance(child, (dict, list)):
            if id(child) not in owned:
                child = node[key] = _own(child, owned)
            return child
        raise WriteError(
            f"cannot write into {render(tokens[: depth + 1])}: it holds {_article(type_name(child))}"
        )
    if isinstance(node, list):
        if index == APPEND:
            new = {}
            owned.add(id(new))
            node.append(new)
            return new
        if 0 <= index < len(node):
            child = node[index]
            if isinstance(child, (dict, list)):
                if id(child) not in owned:
                    child = node[index] = _own(child, owned)
                return child
            raise WriteError(
                f"cannot write into {render(tokens[: depth + 1])}: it holds {_article(type_name(child))}"
            )
        raise WriteError(_bad_index(tokens, depth, node))
    raise WriteError(
        f"cannot write into {render(tokens[:depth]) or '(whole document)'}: "
        f"it holds {_article(type_name(node))}"
    )


def _bad_index(tokens: Tokens, depth: int, node: list[object]) -> str:
    where = render(tokens[:depth]) or "the document"
    key = tokens[depth][0]
    return f"{where} is an array of {len(node)} and {quote(key)} is not an index into it"


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def write(root: object, tokens: Tokens, value: object, owned: set[int]) -> None:
    """Set ``value`` at ``tokens`` (non-empty) below ``root``, which the caller owns.

    Missing intermediate steps become objects, as docs/transforms.md promises. In arrays a step may name an
    existing index, or ``-`` to append; the last step may also name the next free index.
    """
    node = root
    last = len(tokens) - 1
    for depth in range(last):
        key, index = tokens[depth]
        node = _step(node, key, index, tokens, depth, owned)
    key, index = tokens[last]
    if isinstance(node, dict):
        node[key] = value
    elif isinstance(node, list):
        if 0 <= index < len(node):
            node[index] = value
        elif index == APPEND or index == len(node):
            node.append(value)
        else:
            raise WriteError(_bad_index(tokens, last, node))
    else:
        raise WriteError(
            f"cannot write into {render(tokens[:last]) or '(whole document)'}: "
            f"it holds {_article(type_name(node))}"
        )


def delete(root: object, tokens: Tokens, owned: set[int]) -> None:
    """Remove the value at ``tokens`` (non-empty) below ``root``; a path that does not exist is no error."""
    parent = resolve(root, tokens[:-1])
    key, index = tokens[-1]
    if isinstance(parent, dict):
        if key not in parent:
            return
    elif isinstance(parent, list):
        if not 0 <= index < len(parent):
            return
    else:
        return
    # The path exists, so every step below is a container and _step only copies, never creates.
    node = root
    for depth in range(len(tokens) - 1):
        step_key, step_index = tokens[depth]
        node = _step(node, step_key, step_index, tokens, depth, owned)
    if isinstance(node, dict):
        del node[key]
    elif isinstance(node, list):
        del node[index]
