# The generator of shmring_layout.h, the one C header of the segment layout, from _layout.py.
#
#   python -m shmring._layout_header            rewrite src/shmring/shmring_layout.h
#   python -m shmring._layout_header --check    exit 1 if the checked-in header is stale
#
# Rules: _layout.py is the only source. Every public integer constant of it becomes a
# `#define SHMRING_<NAME>`, in its order, under its section banners, with its comment (the
# comment on its line, and the comment block right above it); the word indices of each table
# (C_*, D_*, R_*, G_*, W_*, PIN_*) also become a struct whose members are named after them, and
# every member's offset is pinned by a `_Static_assert(offsetof(...))`, as is the fixed
# header's (taken from _layout's struct format), so that a compiler that lays a struct out
# otherwise refuses to build. The few values C needs that are no constant of _layout (the
# magic's length, a record's bytes, the segment file's path prefix) are derived here from
# _layout's and _segment's. The header is checked in: the C extension (_fastpath.h) and
# examples/c_reader include it, and tests/test_layout_header.py regenerates it and fails if
# the checked-in file differs. Nothing host-dependent goes in it (PAGE is sysconf's).
#
# Theory: C programs that share a layout with Python either take it at run time (the C
# extension used to receive ~50 word indices as keyword arguments) or keep a hand-written
# copy that drifts; a header generated from the one table and compiled with static
# assertions has neither cost (Aeron keeps its C layout the same way).

from __future__ import annotations

import ast
import io
import sys
import textwrap
import tokenize
from collections.abc import Iterator
from pathlib import Path

from . import _layout as L
from ._segment import MAX_NAME, PREFIX, SHM_DIR

HEADER = Path(__file__).with_name("shmring_layout.h")
WIDTH = 100
# Not for C: the host's page size (C asks sysconf), and Python's mask spelling of NONE.
SKIPPED = frozenset({"PAGE", "U64_MASK"})
# (prefix, struct name, words in the struct) of every table of u64 words.
TABLES = (
    ("C_", "control", L.CONTROL_WORDS),
    ("D_", "descriptor", L.D_META_BYTE_OFFSET // 8),
    ("R_", "reader", L.RECORD_WORDS),
    ("G_", "group", L.RECORD_WORDS),
    ("W_", "writer", L.RECORD_WORDS),
    ("PIN_", "pin_line", L.RECORD_WORDS),
)
# Table fields wider than one word: (C type, elements, words).
WIDE_FIELDS = {
    "D_SHAPE": ("uint64_t", L.MAX_NDIM, L.MAX_NDIM),
    "G_NAME": ("char", L.MAX_GROUP_NAME, L.MAX_GROUP_NAME // 8),
    "PIN_HELD": ("uint64_t", L.PINS_PER_LINE, L.PINS_PER_LINE),
}
# The fixed header's struct codes in C, and the member that runs of numbered fields become.
C_TYPES = {"H": "uint16_t", "I": "uint32_t", "Q": "uint64_t", "s": "char"}
C_SIZES = {"uint16_t": 2, "uint32_t": 4, "uint64_t": 8, "char": 1}
ARRAY_NAMES = {"s": "shape", "reserved": "reserved"}

PREAMBLE = """\
/* shmring_layout.h: the bytes of a shmring segment, format version {major}.{minor}, for C11.
 *
 * GENERATED from src/shmring/_layout.py by `python -m shmring._layout_header`: do not edit;
 * change _layout.py and run it again (tests/test_layout_header.py fails while this file is
 * stale). docs/FORMAT.md describes the same layout in prose and tables.
 *
 * Every constant of _layout.py is here as SHMRING_<its name>: the word indices of each
 * table (C_*: control block, D_*: descriptor, R_*, G_*, W_*: reader, group and writer
 * records) index the u64 words of that table; the structs below name the same words, and a
 * _Static_assert pins each member's offset, so a compiler that lays a struct out differently
 * refuses to build. Everything is little-endian; every mutable field is a u64 that shmring
 * processes access atomically (see FORMAT.md, "Memory ordering"): use __atomic loads and
 * stores on them.
 */
#ifndef SHMRING_LAYOUT_H
#define SHMRING_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the shmring format is little-endian (docs/FORMAT.md)"
#endif
"""


# _layout.skip_count in C, for every C reader of the format (the one rule it states in code).
SKIP_COUNT = """\
/* The frames a skip descriptor (D_FLAGS has SHMRING_DF_SKIP) stands for: the count in its
 * high bits, or one if that is 0 (skips written before format 2.2). */
static inline uint64_t shmring_skip_count(uint64_t flags) {
    uint64_t count = flags >> SHMRING_SKIP_COUNT_SHIFT;
    return count ? count : 1;
}
"""


def render() -> str:
    """The header's text."""
    parts = [PREAMBLE.format(major=L.VERSION_MAJOR, minor=L.VERSION_MINOR)]
    parts.append(_banner("format version and limits"))
    parts.extend(_constants())
    parts.append(_banner("derived here from _layout.py and _segment.py"))
    parts.append(_define("MAGIC_BYTES", len(L.MAGIC), "bytes of MAGIC (no NUL)"))
    parts.append(_define("RECORD_BYTES", L.RECORD_WORDS * 8, "each reader, group, writer record"))
    parts.append(_define("SHM_PREFIX", f"{SHM_DIR}/{PREFIX}".encode(), "+ the ring's name"))
    parts.append(_define("MAX_NAME", MAX_NAME, "characters of a ring's name"))
    parts.append(_fixed_header())
    parts.extend(_table(prefix, name, words) for prefix, name, words in TABLES)
    parts.append(_banner("rules on the words' values"))
    parts.append(SKIP_COUNT)
    parts.append("\n#endif\n")
    return "".join(parts)


def _assignments() -> list[tuple[str, list[str], str]]:
    """(name, the comment block right above it, the comment on its line) of each top-level
    assignment to a name in _layout.py, in source order."""
    source = Path(L.__file__).read_text()
    trailing: dict[int, str] = {}  # line -> the comment that ends it
    standalone: dict[int, str] = {}  # line -> a comment alone on its line
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            alone = not token.line[: token.start[1]].strip()
            (standalone if alone else trailing)[token.start[0]] = text
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            above: list[str] = []
            line = node.lineno - 1
            while line in standalone:
                above.insert(0, standalone[line])
                line -= 1
            comment = trailing.get(node.end_lineno or node.lineno, "")
            found.append((node.targets[0].id, above, comment))
    return found


def _constants() -> Iterator[str]:
    """Every public int or bytes constant of _layout, in source order, with its comments."""
    for name, above, comment in _assignments():
        value = getattr(L, name)
        if not name.isupper() or name.startswith("_") or name in SKIPPED:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, bytes)):
            continue
        for text in above:
            yield _banner(text.strip("- ")) if text.startswith("----") else _comment(text, "")
        yield _define(name, value, comment)


def _banner(title: str) -> str:
    text = f"/* ---- {title} "
    return f"\n{text}{'-' * max(3, WIDTH - len(text) - 3)} */\n"


def _comment(text: str, indent: str) -> str:
    """`text` as a C comment of its own (wrapped), each line starting with `indent`."""
    assert "*/" not in text, text
    lines = textwrap.wrap(text, WIDTH - len(indent) - 6)
    if len(lines) == 1:
        return f"{indent}/* {lines[0]} */\n"
    body = f"\n{indent} * ".join(lines)
    return f"{indent}/* {body}\n{indent} */\n"


def _with_comment(code: str, comment: str, indent: str = "") -> str:
    """A line of code and its comment: on the line if it fits, else above it."""
    if not comment:
        return f"{indent}{code}\n"
    assert "*/" not in comment, comment
    line = f"{indent}{code} /* {comment} */"
    return line + "\n" if len(line) <= WIDTH else _comment(comment, indent) + f"{indent}{code}\n"


def _define(name: str, value: int | bytes, comment: str) -> str:
    return _with_comment(f"#define SHMRING_{name} {_c_value(value)}", comment)


def _c_value(value: int | bytes) -> str:
    if isinstance(value, bytes):
        text = ""
        for index, byte in enumerate(value):
            if 0x20 <= byte < 0x7F and chr(byte) not in '"\\':
                after_escape = index and not 0x20 <= value[index - 1] < 0x7F
                split = after_escape and chr(byte) in "0123456789abcdefABCDEF"
                text += ('" "' if split else "") + chr(byte)
            else:
                text += f"\\x{byte:02x}"
        return f'"{text}"'
    if value < 0:
        raise ValueError(f"negative constant {value}: the layout has none")
    if value == (1 << 64) - 1:
        return "UINT64_MAX"
    if value < 1 << 31:
        return str(value)
    if value & (value - 1) == 0:
        return f"((uint64_t)1 << {value.bit_length() - 1})"
    return f"UINT64_C({value})"


def _struct(name: str, members: list[tuple[str, int, str, str]], size: int) -> str:
    """A struct of (C declaration, byte offset, member name or "" for padding, comment)
    members, each real member's offset asserted, and its size."""
    lines = [f"struct shmring_{name} {{\n"]
    lines += [_with_comment(declaration, comment, "    ") for declaration, _, _, comment in members]
    lines.append("};\n")
    for _, offset, member, _ in members:
        if member:
            check = f"offsetof(struct shmring_{name}, {member}) == {offset}"
            lines.append(f'_Static_assert({check}, "{member}");\n')
    lines.append(f'_Static_assert(sizeof(struct shmring_{name}) == {size}, "{name} size");\n')
    return "".join(lines)


def _fixed_header() -> str:
    """struct shmring_header, from _layout's struct format and field names."""
    fields = iter(L._FIXED_FIELDS)
    flat: list[tuple[str, str, int]] = []  # (field, C type, elements), one per field
    for count, code in _struct_codes(L._FIXED.format):
        if code == "s":
            flat.append((next(fields), "char", count))
        else:
            flat.extend((next(fields), C_TYPES[code], 1) for _ in range(count))
    members: list[tuple[str, int, str, str]] = []
    offset = index = 0
    while index < len(flat):
        field, ctype, elements = flat[index]
        base, run = field.rstrip("0123456789"), 1
        if base in ARRAY_NAMES:  # s0, s1, ...: one array
            while index + run < len(flat) and flat[index + run][0].rstrip("0123456789") == base:
                run += 1
            field, elements = ARRAY_NAMES[base], run
        members.append((f"{ctype} {_declarator(field, elements)};", offset, field, ""))
        offset += C_SIZES[ctype] * elements
        index += run
    if offset < L.CHECKSUM_OFFSET:
        size = L.CHECKSUM_OFFSET - offset
        members.append((f"uint8_t padding[{size}];", offset, "", ""))
    comment = "CRC-32 of bytes [0, CHECKSUM_OFFSET), zero-extended"
    members.append(("uint64_t checksum;", L.CHECKSUM_OFFSET, "checksum", comment))
    title = _banner(f"fixed header: bytes 0..{L.FIXED_HEADER_BYTES - 1}, written once at create")
    return title + _struct("header", members, L.FIXED_HEADER_BYTES)


def _struct_codes(fmt: str) -> Iterator[tuple[int, str]]:
    """(count, code) of each item of a struct format such as "<8s2HI"."""
    digits = ""
    for char in fmt.lstrip("<"):
        if char.isdigit():
            digits += char
        else:
            yield int(digits or "1"), char
            digits = ""


def _declarator(field: str, elements: int) -> str:
    return field if elements == 1 else f"{field}[{elements}]"


def _table(prefix: str, name: str, words: int) -> str:
    """The struct of one table of u64 words, members named after its word indices."""
    comments = {name: comment for name, _, comment in _assignments()}
    indices = sorted(
        (value, constant)
        for constant, value in vars(L).items()
        if constant.startswith(prefix) and not constant.endswith("_BYTE_OFFSET")
    )
    members: list[tuple[str, int, str, str]] = []
    word = 0
    for value, constant in indices:
        if value > word:
            members.append(_reserved(word, value))
        ctype, elements, width = WIDE_FIELDS.get(constant, ("uint64_t", 1, 1))
        member = constant[len(prefix) :].lower()
        where = f"word {value}" if width == 1 else f"words {value}-{value + width - 1}"
        comment = comments.get(constant, "")
        if "word" not in comment.partition(":")[0]:  # else it says which words already
            comment = f"{where}: {comment}" if comment else where
        members.append((f"{ctype} {_declarator(member, elements)};", value * 8, member, comment))
        word = value + width
    if word < words:
        members.append(_reserved(word, words))
    return _banner(f"{name} ({words * 8} bytes of u64 words)") + _struct(name, members, words * 8)


def _reserved(first: int, end: int) -> tuple[str, int, str, str]:
    count = end - first
    where = f"word {first}" if count == 1 else f"words {first}-{end - 1}"
    return (f"uint64_t {_declarator(f'reserved{first}', count)};", first * 8, "", where)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args == ["--check"]:
        if HEADER.read_text() != text:
            print(f"{HEADER} is stale: run python -m shmring._layout_header", file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python -m shmring._layout_header [--check]", file=sys.stderr)
        return 2
    HEADER.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
