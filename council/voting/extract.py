"""Reduce a member's free-text reply to a normalised answer that can be voted on.

An extractor maps a reply to a string, or to None when the member abstains (no answer could be found: a refusal,
an empty reply, a reply without a number for `number`...). Equal answers give equal strings, so the vote can
compare them as they are. Specs, as written in policies:

- `number`: the final numeric answer as the shortest exact decimal (`1234`, `-3.5`, `0.75`, `1/3`).
- `choice`: a multiple-choice letter A-J, as a capital.
- `text`: free text with markdown stripped, NFKC, case-folded, whitespace collapsed, edge punctuation dropped.
- `json:PATH`: a value inside the first JSON object/array of the reply (`json:answer`, `json:result.items.0.name`).
- `regex:PATTERN`: the first group (or whole match) of the last match of PATTERN.
- `auto`: `choice`, else `number`, else `text`; see `_auto` for the exact precedence.

Every kind but `regex` first drops `<think>...</think>` reasoning: drafts inside it are not the answer.
"""

from __future__ import annotations

import contextlib
import json
import re
import unicodedata
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from typing import Literal

from council.policy.extractors import KINDS, ExtractError, ExtractorSpec, parse_extractor_spec

__all__ = ["KINDS", "ExtractError", "Extractor", "Source", "answer_source", "canonical_tool_call", "extract",
           "extract_cut", "parse_extractor"]

# Where an extracted answer came from (see `answer_source`).
Source = Literal["marked", "whole", "read"]


class Extractor(ABC):
    """Maps a reply to its normalised answer, or None when the member abstains."""

    name: str

    @abstractmethod
    def __call__(self, text: str) -> str | None: ...

    def __repr__(self) -> str:
        return f"<Extractor {self.name}>"


# ---------------------------------------------------------------- shared helpers

_THINK_TAG = re.compile(r"<(/?)think(?:ing)?>", re.I)


def _strip_think(text: str) -> str:
    """Drop `<think>...</think>` reasoning, in one pass over the tags (a regex `.*?` per tag would be quadratic)."""
    kept: list[str] = []
    pos, inside = 0, False
    for tag in _THINK_TAG.finditer(text):
        closing = bool(tag[1])
        if not inside and not closing:
            kept.append(text[pos:tag.start()])
            inside = True
        elif not inside:
            # some chat templates put the opening tag in the prompt, so only the closing tag shows up
            kept = []
            pos = tag.end()
        elif closing:
            inside, pos = False, tag.end()
    if not inside:  # an unclosed block means the reply was cut off before any answer
        kept.append(text[pos:])
    return "".join(kept)


_REFUSAL = re.compile(
    r"^\W*(?:I'?m\s+(?:sorry|unable|not\s+able)|I\s+am\s+(?:sorry|unable|not\s+able)|sorry\b|I\s+apologi[sz]e"
    r"|I\s+(?:can\s?not|can'?t|won'?t|will\s+not|do\s+not|don'?t)\s+(?:help|answer|assist|provide|comply|do)"
    r"|as\s+an\s+AI\b|unfortunately,?\s+I\b)",
    re.I,
)

# "The answer is", "Answer:", "**Final Answer**", "the answer to part 2 is", "Answer (in dollars):", "####".
_ANSWER_TAIL = (r"(?:[*_\s]*(?:\([^)\n]{0,30}\)[*_\s]*)?"
                r"(?:(?:is|was|would\s+be|will\s+be|should\s+be|must\s+be|equals|comes\s+to)\b|[:=]))")
_ANSWER_MARKER = re.compile(
    rf"\#{{4}}|\bfinal\s+answer\b{_ANSWER_TAIL}?|\banswer\b(?:\s+(?:to|for|of)\b[^\n:=]{{0,80}}?)?{_ANSWER_TAIL}",
    re.I,
)
_ALNUM = re.compile(r"[^\W_]")


def _span_after(text: str, end: int) -> str:
    """The rest of the marker's line, or the next non-empty line when the marker ends its line (bounded: no copies
    of the whole rest of the reply, which made many markers quadratic)."""
    window = text[end:end + 600]
    line, _, after = window.partition("\n")
    if not _ALNUM.search(line):
        line = next((nxt for nxt in after.split("\n") if nxt.strip()), "")
    return line[:400]


def _marker_spans(text: str) -> list[str]:
    return [span for m in _ANSWER_MARKER.finditer(text) if (span := _span_after(text, m.end())).strip()]


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")


def _boxed(text: str) -> list[tuple[int, str]]:
    """(position, content) of every `\\boxed{...}`, nested braces matched (one pass over all braces, so that
    many unbalanced `\\boxed{` stay linear)."""
    starts = {m.end() - 1: m.start() for m in _BOXED.finditer(text)}
    if not starts:
        return []
    out, stack = [], []
    for brace in _BRACE.finditer(text):
        if brace[0] == "{":
            stack.append(brace.start())
        elif stack and (opening := stack.pop()) in starts:
            out.append((starts[opening], text[opening + 1:brace.start()]))
    return sorted(out)


def _boxed_contents(text: str) -> list[str]:
    return [content for _, content in _boxed(text)]


# ---------------------------------------------------------------- LaTeX and character cleanup for numbers

_FULLWIDTH = str.maketrans({**{chr(0xFF10 + i): str(i) for i in range(10)},
                            "．": ".", "，": ",", "－": "-", "＄": "$", "％": "%", "⁄": "/", "∕": "/", "\ufe63": "-"})
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|operatorname|mbox)\s*\{([^{}]*)\}")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-−]?[0-9][0-9.,]*)\s*\}\s*\{\s*([0-9][0-9.,]*)\s*\}"
                         r"|\\[dt]?frac\s*([0-9])\s*([0-9])")
_LATEX_THIN_IN_NUMBER = re.compile(r"(?<=[0-9])(?:\\[,!;: ]|~)(?=[0-9]{3}(?![0-9]))")
_LATEX_SUBS = (
    (re.compile(r"\{,\}"), ","), (re.compile(r"\\left\b|\\right\b"), ""), (re.compile(r"\\\$"), "$"),
    (re.compile(r"\\%"), "%"), (re.compile(r"\\times\b"), "×"), (re.compile(r"\\cdot\b"), "·"),
    (re.compile(r"\\div\b"), "÷"), (re.compile(r"\\approx\b"), "≈"), (re.compile(r"\^\s*\{?\\circ\}?"), "°"),
    (re.compile(r"\\[()\[\]]"), " "), (re.compile(r"\\[,!;: ]|~"), " "),
)


def _frac_sub(m: re.Match[str]) -> str:
    num, den = (m[1], m[2]) if m[1] is not None else (m[3], m[4])
    return f"{num.replace(',', '')}/{den.replace(',', '')}"


def _delatex(s: str) -> str:
    """Just enough LaTeX to read numbers: `\\frac{3}{4}` -> `3/4`, `1\\,234` -> `1234`, `\\text{km}` -> `km`."""
    s = s.translate(_FULLWIDTH)
    for _ in range(3):  # nested \text{\textbf{..}}
        s = _LATEX_TEXT.sub(r"\1", s)
    s = _LATEX_FRAC.sub(_frac_sub, s)
    s = _LATEX_THIN_IN_NUMBER.sub("", s)
    for pattern, repl in _LATEX_SUBS:
        s = pattern.sub(repl, s)
    return s


# ---------------------------------------------------------------- numbers

_MAX_DIGITS = 1000  # past this a plain decimal would be a memory bomb ("1e999999999"), so it stays scientific
_MINUS = frozenset("-\u2212")


def _number_pattern(ascii_space_groups: bool) -> re.Pattern[str]:
    # A plain space between digit groups ("1 234") is only trusted right after a marker or in \boxed{}: in running
    # text "2 500-gram bags" or "3 100m sprints" are two numbers. No-break and thin spaces group anywhere.
    space = "[ \u00a0\u202f\u2009]" if ascii_space_groups else "[\u00a0\u202f\u2009]"
    integer = (r"[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])"
               rf"|[0-9]{{1,3}}(?:{space}[0-9]{{3}})+(?![0-9]|-[^\W\d_])"
               r"|[0-9]+(?:_[0-9]{3})+(?![0-9])"
               r"|[0-9]+")
    return re.compile(
        r"(?<![\w./&])"  # not inside a word ("Q3", "H2O"), a version "1.2.3" or a date "12/25/2023"
        r"(?P<s1>[-+\u2212])?(?:[$€£¥₹]\s?)?(?P<s2>[-+\u2212])?"
        rf"(?P<num>(?:{integer})(?:\.[0-9]+)?|\.[0-9]+)"
        r"(?:(?P<exp>[eE][-+\u2212]?[0-9]{1,9})(?![0-9])"
        r"|\s?(?:[x×*·]|\\times|\\cdot)\s?10\s?\^\s?\{?\s?(?P<pow>[-+\u2212]?[0-9]{1,9})\s?\}?"
        r"|[ ]?/[ ]?(?P<den>[0-9]+(?:\.[0-9]+)?)(?![0-9/]))?"
    )


_NUMBER_SPAN = _number_pattern(ascii_space_groups=True)
_NUMBER_TEXT = _number_pattern(ascii_space_groups=False)


def _format_decimal(d: Decimal) -> str:
    """The shortest exact plain decimal: no trailing zeros, no exponent, no `-0`."""
    sign, digit_tuple, exp = d.as_tuple()
    assert isinstance(exp, int)
    coef = "".join(map(str, digit_tuple)).lstrip("0")
    if not coef:
        return "0"
    stripped = coef.rstrip("0")
    exp += len(coef) - len(stripped)
    coef, neg = stripped, "-" if sign else ""
    if len(coef) + abs(exp) > _MAX_DIGITS:
        mantissa = coef[0] + (f".{coef[1:]}" if len(coef) > 1 else "")
        return f"{neg}{mantissa}E{exp + len(coef) - 1:+d}"
    if exp >= 0:
        return f"{neg}{coef}{'0' * exp}"
    k = -exp
    if k >= len(coef):
        return f"{neg}0.{'0' * (k - len(coef))}{coef}"
    return f"{neg}{coef[:-k]}.{coef[-k:]}"


def _format_fraction(f: Fraction) -> str:
    """A terminating fraction as its exact decimal (`3/4` -> `0.75`); any other stays reduced (`2/6` -> `1/3`)."""
    rest, twos, fives = f.denominator, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{f.numerator}/{f.denominator}"
    k = max(twos, fives)
    scaled = f.numerator * (10**k // f.denominator)
    return _format_decimal(Decimal((1 if scaled < 0 else 0, tuple(map(int, str(abs(scaled)))), -k)))


def _token_value(m: re.Match[str]) -> str | None:
    """The canonical string of one matched number token, or None when it is not a usable number (`3/0`)."""
    num = re.sub(r"[,_ \u00a0\u202f\u2009]", "", m["num"])
    negative = (m["s1"] in _MINUS) != (m["s2"] in _MINUS)
    try:
        if m["den"] is not None:
            if len(num) + len(m["den"]) > _MAX_DIGITS:
                return None
            den = Fraction(Decimal(m["den"]))
            if den == 0:
                return None
            value = Fraction(Decimal(num)) / den
            return _format_fraction(-value if negative else value)
        power = m["exp"][1:] if m["exp"] else m["pow"]
        d = Decimal(f"{num}e{power.replace(chr(0x2212), '-')}") if power else Decimal(num)
    except (InvalidOperation, ValueError, OverflowError):
        return None
    return _format_decimal(d.copy_negate() if negative else d)  # unary minus would round to 28 digits


def _first_number(s: str) -> str | None:
    for m in _NUMBER_SPAN.finditer(s):
        if (value := _token_value(m)) is not None:
            return value
    return None


_EXPRESSION = re.compile(r"[\s0-9.,_$€£¥₹%()\[\]{}+\-−*/×÷·^xX]*")


def _after_equals(s: str) -> str:
    """`16 - 3 - 4 = 9 eggs` -> ` 9 eggs`: the result of a chain of arithmetic, not its first operand."""
    parts = re.split(r"[=≈]", s)
    i = 0
    while i < len(parts) - 1 and _EXPRESSION.fullmatch(parts[i]) and parts[i].count("(") == parts[i].count(")"):
        i += 1
    return parts[i]


_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)")


def _first_sentence(s: str) -> str:
    m = _SENTENCE_END.search(s)
    return s[:m.end()] if m else s


def _span_number(span: str) -> str | None:
    """The number of a marked answer or a \\boxed{} content: the first one, after any `expression =`."""
    return _first_number(_after_equals(_first_sentence(span)))


_DECORATION = re.compile(r"[*`]+|\\[()\[\]]|^\s*\$(?=.*\$\s*$)|\$\s*$")
_UNIT_TAIL = re.compile(r"\s?(?:%|°\s?[CFcf]?|[^\W\d_]+(?:/[^\W\d_]+)?\.?)?\s*[.!]?\s*")


def _essential_number(s: str) -> str | None:
    """The number when `s` is essentially just one: `$1,234.50`, `45%`, `12 km`, `x = 5`, `**-3**`; else None."""
    s = _DECORATION.sub("", _after_equals(_delatex(s).strip())).strip()
    m = _NUMBER_SPAN.match(s)
    if m is None or not _UNIT_TAIL.fullmatch(s, m.end()):
        return None
    return _token_value(m)


_LIST_LABEL_PREFIX = re.compile(r"(?:\b(?:step|part|case|question|problem|q)\s*|^[\s#*>-]*)$", re.I | re.M)
_LIST_LABEL_SUFFIX = re.compile(r"[.):][ \t]+\S")


def _is_label(text: str, m: re.Match[str]) -> bool:
    """`Step 2:`, `Question 3`, or a list marker `1.` at a line start: a label, not a quantity."""
    if m["den"] or m["exp"] or m["pow"] or m["s1"] or m["s2"] or not m["num"].isdigit():
        return False
    lo = max(0, m.start() - 200)  # look back a bounded way: every number of a long line must not rescan it
    newline = text.rfind("\n", lo, m.start())
    line_start_seen = newline >= 0 or lo == 0
    label = _LIST_LABEL_PREFIX.search(text, newline + 1 if newline >= 0 else lo, m.start())
    if label is None:
        return False
    if label.group().strip(" \t#*>-"):  # "Step ", "Question "
        return True
    return line_start_seen and _LIST_LABEL_SUFFIX.match(text, m.end()) is not None


def _last_line_equals(body: str) -> str | None:
    """`... = 18 dollars.` closing the last line."""
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines or not re.search(r"[=≈]", lines[-1]):
        return None
    return _essential_number(re.split(r"[=≈]", lines[-1])[-1])


def _number(text: str) -> str | None:
    """The final numeric answer. Precedence:

    1. the last `\\boxed{}` that holds a number (after `expr =` inside it, its first number);
    2. the last answer marker (`The answer is`, `Answer:`, `**Final Answer**`, `####`) whose line holds a number:
       the first number after it (after `expr =`, within its sentence);
    3. `= N` closing the last line;
    4. nothing when the reply opens with a refusal ("I'm sorry", "I cannot help");
    5. else the last number of the reply, skipping labels (`Step 2:`, list markers `1.` at a line start).
    """
    return _number_sourced(text)[0]


def _number_sourced(text: str) -> tuple[str | None, Source]:
    """`_number` and where its answer came from: 1-2 are marked, 3 and 5 only read from where the text stops."""
    body = _delatex(_strip_think(text))
    for content in reversed(_boxed_contents(body)):
        if (value := _span_number(content)) is not None:
            return value, "marked"
    for span in reversed(_marker_spans(body)):
        if (value := _span_number(span)) is not None:
            return value, "marked"
    if (value := _last_line_equals(body)) is not None:
        return value, "read"
    if _REFUSAL.match(body):
        return None, "read"
    for m in reversed(list(_NUMBER_TEXT.finditer(body))):
        if not _is_label(body, m) and (value := _token_value(m)) is not None:
            return value, "read"
    return None, "read"


# ---------------------------------------------------------------- multiple choice

_LETTER = re.compile(r"(?<![\w'’&-])([A-Ja-j])(?![\w'’&])")
# A verdict ("answer", "the correct option", "I choose") outranks a mere mention ("option A is 12, too small"):
# small models often explain the other options after giving their answer.
_CHOICE_MARKER = re.compile(
    r"\b(?P<adjective>(?:correct|right|best|final|my)\s+)?(?P<noun>answer|choice|option|letter)\b"
    r"|\bI(?:\s+would|\s+will|'d|'ll)?\s+(?:choose|pick|select|go\s+with)\b", re.I)
# Between a marker and its letter: "is", ":", "option", "(", "**" -- a letter this close can be lowercase.
_RIGHT_AFTER_MARKER = re.compile(
    r"[\s:=*_(\[-]*(?:(?:is|was|would\s+be|should\s+be|will\s+be|must\s+be|be)\b[\s:*_(\[]*)?"
    r"(?:(?:option|choice|letter)\b[\s:*_(\[]*)?", re.I)
_NAMED_BY = re.compile(r"\b(?:option|choice|letter)[\s:(*_\[]*$", re.I)  # "option A": a name, never an article
_LETTER_BEFORE_MARKER = re.compile(
    r"(?<![\w'’&(*_-])[(*_]*([A-J])[)*_]*\s+(?:is|would\s+be|seems\s+to\s+be)\s+(?:the\s+)?"
    r"(?:(?:correct|right|best|only\s+correct)\s+)?(?:answer|option|choice)\b", re.I)
# "Option A is incorrect": an explanation ruling a letter out, not a vote for it.
_RULED_OUT = re.compile(
    r"[)*_]*\s*(?:(?:is|was|are|seems|would\s+be)\s+(?:not\b|incorrect|wrong|false|invalid|ruled\s+out|eliminated)"
    r"|(?:isn'?t|doesn'?t|does\s+not|can'?t|cannot)\b)", re.I)
_OPTION_PUNCT = re.compile(r"(?:[).:\],;!?]|\*\*|__|\s*$)")
_A_CONNECTIVE = re.compile(r"\s+(?:because|since|as\b|[—–-]\s)")
_NOT_AN_OPTION = re.compile(r"\s*[=<>+*/^]|\.\s*[A-Z]\.|-\w|\+")  # "E = mc^2", initials "J. K.", "B-12", "C++"
_A_IN_LIST = re.compile(r"\s*(?:[,/&)]|\band\b|\bor\b)\s*\(?[A-J]\b|[).:]")
_ONLY_LETTER_LINE = re.compile(
    r"[\s*_`#>()\[\].:,!-]*(?:(?:final\s+|correct\s+)?(?:answer|option|choice)(?:\s+is\b)?[\s*_()\[\]:-]*)?"
    r"([A-Ja-j])[\s*_`()\[\].:,!]*", re.I)
_OPTION_LINE_START = re.compile(r"\s*[*_]*\(?([A-J])[).:\]]\s+\S")
_BOXED_LETTER = re.compile(r"\s*(?:\\text\s*\{)?\s*\(?([A-Ja-j])\)?\s*\}?\s*")


def _option_line_start(line: str) -> str | None:
    """`B) Paris`, `(C) 42`, `A. mitochondria` -> the letter; `J. K. Rowling` and `E = mc^2` are no options."""
    m = _OPTION_LINE_START.match(line)
    if m is None or _NOT_AN_OPTION.match(line, m.end(1)) or _RULED_OUT.match(line, m.end(1)):
        return None
    return m[1]


def _wrapped(s: str, m: re.Match[str]) -> bool:
    """`(B)`, `[B]`, `**B**`."""
    start, end = m.start(), m.end()
    return ((s[start - 1:start] in ("(", "[") and s[end:end + 1] in (")", "]"))
            or (s[max(0, start - 2):start] in ("**", "__") and s[end:end + 2] in ("**", "__")))


def _letter_in_span(span: str, naming: bool) -> str | None:
    """The first token after a choice marker that reads as an option letter; `naming`: the marker is a noun that
    names an option ("option", "choice", "letter"), so a capital right after it is that option's name."""
    for m in _LETTER.finditer(span):
        letter, after = m[1], span[m.end():]
        if _wrapped(span, m) and not _RULED_OUT.match(after):
            return letter.upper()
        if _NOT_AN_OPTION.match(after) or _RULED_OUT.match(after):
            continue
        if letter in "BCDEFGHJ":
            return letter
        close = _RIGHT_AFTER_MARKER.fullmatch(span, 0, m.start()) is not None
        named = (naming and re.fullmatch(r"[\s:(*_\[]*", span[:m.start()])) or _NAMED_BY.search(span, 0, m.start())
        punct = _OPTION_PUNCT.match(after) is not None
        if letter.isupper() and (punct or named or (close and _A_CONNECTIVE.match(after))):  # "A." but not "A cat"
            return letter
        if letter.islower() and (close or named) and punct:  # "The correct choice is b."
            return letter.upper()
    return None


def _marked_letter(body: str) -> str | None:
    """The letter of the last verdict (`answer is`, `the correct option`, `I choose`, `\\boxed{X}`, `X is the correct
    answer`) that names one, else the letter all mentions (`option X`) agree on."""
    return _marked_letter_sourced(body)[0]


def _marked_letter_sourced(body: str) -> tuple[str | None, Source]:
    """`_marked_letter` and where it came from: a verdict is marked, agreeing mentions only read."""
    verdicts: list[tuple[int, str]] = []
    mentions: list[tuple[int, str]] = []
    for m in _CHOICE_MARKER.finditer(body):
        noun = (m["noun"] or "").lower()
        naming = noun in ("option", "choice", "letter")
        if (letter := _letter_in_span(_span_after(body, m.end())[:120], naming)) is not None:
            (mentions if naming and not m["adjective"] else verdicts).append((m.start(), letter))
    verdicts += [(m.start(), m[1]) for m in _LETTER_BEFORE_MARKER.finditer(body)]
    verdicts += [(start, b[1].upper()) for start, content in _boxed(body) if (b := _BOXED_LETTER.fullmatch(content))]
    if verdicts:
        return max(verdicts)[1], "marked"
    named = {letter for _, letter in mentions}
    # "Choice A: 12. Choice B: 14." lists, it does not answer
    return (named.pop() if len(named) == 1 else None), "read"


def _choice(text: str, lenient: bool = True) -> str | None:
    """A multiple-choice letter. Precedence:

    1. the last verdict naming a letter ("answer is C", "the correct option is (b)", "I'd go with D", `\\boxed{B}`,
       "B is the correct answer"); without one, the letter that every "option X" / "choice X" mention agrees on,
       leaving out ruled-out ones ("Option A is incorrect");
    2. the last line that is only a letter (`B`, `**C**`, `(d)`, `Answer: A.`);
    3. a reply that opens with one option (`B) Paris`, `(C) 42`, `A. mitochondria`) unless it lists several;
    4. lenient only: the one letter the reply mentions as an option (`(B)`, `**B**`, a capital B-J standing alone);
       several different ones are ambiguous -> None.

    A bare capital "A" or "I" counts only where it cannot be English: wrapped, followed by `)`/`.`/`:`, alone on its
    line, named ("option A"), or right after a marker and not followed by a word ("The answer is A cat" is not a
    vote for A). Letters glued to maths or names are no options: "E = mc^2", "J. K. Rowling", "B-12", "C++".
    """
    return _choice_sourced(text, lenient)[0]


def _choice_sourced(text: str, lenient: bool = True) -> tuple[str | None, Source]:
    """`_choice` and where its letter came from: only a verdict (1.) is marked."""
    body = unicodedata.normalize("NFKC", _strip_think(text))
    letter, source = _marked_letter_sourced(body)
    if letter is not None:
        return letter, source
    lines = [line for line in body.splitlines() if line.strip()]
    for line in reversed(lines):
        if m := _ONLY_LETTER_LINE.fullmatch(line):
            return m[1].upper(), "read"
    starts = [_option_line_start(line) for line in lines]
    if starts and starts[0] is not None and len({s for s in starts if s is not None}) == 1:
        return starts[0], "read"
    if not lenient:
        return None, "read"
    mentioned = set()
    for m in _LETTER.finditer(body):
        letter = m[1]
        if _wrapped(body, m):
            mentioned.add(letter.upper())
        elif letter in "BCDEFGHJ" and not _NOT_AN_OPTION.match(body, m.end()):
            mentioned.add(letter)
        elif letter == "A" and _A_IN_LIST.match(body, m.end()):
            mentioned.add(letter)  # "A and B", "A, C" list options; "A cat" does not
    return (mentioned.pop() if len(mentioned) == 1 else None), "read"


# ---------------------------------------------------------------- free text

_MD_FENCE = re.compile(r"^[ \t]*(?:```|~~~)[^\n]*$", re.M)
_MD_IMAGE_LINK = re.compile(r"!?\[([^\[\]\n]*)\]\([^()\n]*\)")
_MD_HEADER = re.compile(r"^[ \t]*#{1,6}(?=\s|$)", re.M)
_MD_QUOTE = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.M)
_MD_BULLET = re.compile(r"^[ \t]*(?:(?:[-*+•‣◦▪]|[0-9]{1,3}[.)])[ \t]+)+", re.M)
_MD_EMPHASIS = re.compile(r"(?<!\w)(?:[*_]+|~~)|(?:[*_]+|~~)(?!\w)")
_EDGE_CHARS = ".,;:!?…¡¿ \t\n"
_EDGE_PUNCT = frozenset(_EDGE_CHARS)
_BRACKETS = {"(": ")", "[": "]", "{": "}", "“": "”", "‘": "’", "«": "»"}
_CLOSERS = {closing: opening for opening, closing in _BRACKETS.items()}
_QUOTES = frozenset("\"'`")


def _strip_edges(s: str) -> str:
    """Drop edge punctuation and brackets or quotes that wrap the whole string (`(a)` but not `(a) and (b)`), as
    often as they nest, in one pass: peeling one layer at a time and rescanning was quadratic on `((((x))))`."""
    core = s.strip(_EDGE_CHARS)
    if len(core) < 2 or (core[0] not in _BRACKETS and core[0] not in _QUOTES):
        return core  # nothing wraps it: the scan below, a Python loop over every character, would end here too
    match: dict[int, int] = {}
    open_at: dict[str, list[int]] = {opening: [] for opening in _BRACKETS}
    quotes_at: dict[str, list[int]] = {quote: [] for quote in _QUOTES}
    for i, ch in enumerate(s):
        if ch in open_at:
            open_at[ch].append(i)
        elif ch in _CLOSERS and open_at[_CLOSERS[ch]]:
            match[open_at[_CLOSERS[ch]].pop()] = i
        elif ch in quotes_at:
            quotes_at[ch].append(i)
    lo, hi = 0, len(s) - 1
    while True:
        while lo <= hi and s[lo] in _EDGE_PUNCT:
            lo += 1
        while hi >= lo and s[hi] in _EDGE_PUNCT:
            hi -= 1
        if hi - lo < 1:
            break
        ch = s[lo]
        if match.get(lo) == hi:
            lo, hi = lo + 1, hi - 1
        elif ch in _QUOTES and s[hi] == ch and bisect_right(quotes_at[ch], hi) - bisect_left(quotes_at[ch], lo) == 2:
            lo, hi = lo + 1, hi - 1  # a quote char in between would make this ambiguous ('a' and 'b')
        else:
            break
    return s[lo:hi + 1]


def _normalise_once(s: str) -> str:
    s = unicodedata.normalize("NFKC", _strip_think(s))
    s = _MD_FENCE.sub(" ", s)
    s = _MD_IMAGE_LINK.sub(r"\1", s)
    s = _MD_HEADER.sub("", s)
    s = _MD_QUOTE.sub("", s)
    s = _MD_BULLET.sub("", s)
    s = _MD_EMPHASIS.sub("", s).replace("`", "")
    return _strip_edges(" ".join(s.casefold().split()))


def _text(text: str) -> str | None:
    """Normalised free text; run to a fixed point so that normalising twice changes nothing."""
    s = text
    for _ in range(10):
        nxt = _normalise_once(s)
        if nxt == s:
            break
        s = nxt
    return s or None


# ---------------------------------------------------------------- auto

_TEXT_SENTENCE_END = re.compile(r"(?<=\w\w)[.!?](?=\s|$)")  # "J. K. Rowling" is one sentence


def _marked_answer(body: str) -> str | None:
    """The last `\\boxed{}` content, else the last answer marker's line: what the member calls its answer."""
    boxed = _boxed_contents(body)
    if boxed:
        return _delatex(boxed[-1])
    spans = _marker_spans(body)
    if not spans:
        return None
    m = _TEXT_SENTENCE_END.search(spans[-1])
    return spans[-1][:m.end()] if m else spans[-1]


def _auto(text: str) -> str | None:
    """Guess the kind of answer. Precedence, first that applies:

    1. `choice` when a letter is marked (marker, `\\boxed{B}`, a letter-only line, a reply opening with `B) ...`);
       the lenient "one letter mentioned somewhere" rule is not used here, so "Vitamin C helps" stays text;
    2. the marked answer (last `\\boxed{}`, else last answer marker's sentence): `number` if it is essentially a
       number (`42`, `$1,234.50`, `12 km`, `16 - 4 = 12`), else `text` of that answer only;
    3. `number` when `= N` closes the last line or the whole reply is essentially a number;
    4. None for a refusal ("I'm sorry, I can't help with that");
    5. `text` of the whole reply.
    """
    return _auto_sourced(text)[0]


def _auto_sourced(text: str) -> tuple[str | None, Source]:
    """`_auto` and where its answer came from: a verdict or the marked answer (1-2) is marked, a number read off
    the last line (3) or a letter-only line is read, the whole reply as text (5) is whole."""
    body = _strip_think(text)
    letter, source = _choice_sourced(body, lenient=False)
    if letter is not None:
        return letter, source
    marked = _marked_answer(body)
    if marked is not None and marked.strip():
        value = _essential_number(marked)
        return (value if value is not None else _text(marked)), "marked"
    delatexed = _delatex(body)
    for value in (_last_line_equals(delatexed), _essential_number(delatexed)):
        if value is not None:
            return value, "read"
    if _REFUSAL.match(body):
        return None, "read"
    return _text(body), "whole"


# ---------------------------------------------------------------- JSON

_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:```|\Z)", re.S)
_JSON_START = re.compile(r"[{\[]")
_MAX_JSON_TRIES = 200  # each failed try re-scans from one brace; bound the quadratic worst case


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal, parse_constant=_reject_constant)


def _json_candidates(text: str) -> list[object]:
    """JSON values of the reply: fenced blocks first, then every top-level object/array in the text, in order."""
    found: list[object] = []
    for m in _FENCE.finditer(text):
        with contextlib.suppress(ValueError, RecursionError):
            found.append(_DECODER.decode(m[1].strip()))
    pos, tries = 0, 0
    while tries < _MAX_JSON_TRIES and (m := _JSON_START.search(text, pos)):
        tries += 1
        try:
            value, end = _DECODER.raw_decode(text, m.start())
        except (ValueError, RecursionError):
            pos = m.start() + 1
            continue
        found.append(value)
        pos = end
    return found


def _canonical_json(value: object) -> str:
    """`json.dumps(sort_keys=True, separators=(",", ":"))`, but numbers exact and canonical (`1.0` == `1`)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("not a finite number")
        return _format_decimal(value)
    if isinstance(value, int):
        return _format_decimal(Decimal(value))
    if isinstance(value, float):
        return _canonical_json(Decimal(repr(value)))
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical_json(v) for v in value) + "]"
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("JSON object keys must be strings")
        return "{" + ",".join(f"{json.dumps(k)}:{_canonical_json(value[k])}" for k in sorted(value)) + "}"
    raise ValueError(f"{type(value).__name__} is not JSON")


_MISSING = object()


def _follow(value: object, path: tuple[str, ...]) -> object:
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and re.fullmatch(r"-?[0-9]+", key) and -len(value) <= int(key) < len(value):
            value = value[int(key)]
        else:
            return _MISSING
    return value


def _json(text: str, path: tuple[str, ...]) -> str | None:
    """The value at `path` in the first JSON value of the reply where that path exists."""
    for candidate in _json_candidates(_strip_think(text)):
        value = _follow(candidate, path)
        if value is _MISSING:
            continue
        if isinstance(value, str):
            return value.strip() or None
        try:
            return _canonical_json(value)
        except (ValueError, RecursionError):
            return None
    return None


def canonical_tool_call(name: str, arguments: str | dict) -> str | None:
    """`name(` + canonical JSON arguments + `)`, so that equal tool calls vote together; None when not JSON.

    Empty arguments (`""`) mean `{}`, as servers send for tools without parameters; arguments that are a JSON
    string holding a JSON object (double-encoded) are decoded once more. Numbers are canonical: `1.0` == `1`.
    """
    name = name.strip()
    if not name:
        return None
    args: object = arguments
    if isinstance(arguments, str):
        try:
            args = _DECODER.decode(arguments.strip()) if arguments.strip() else {}
            if isinstance(args, str) and args.strip().startswith("{"):
                args = _DECODER.decode(args.strip())
        except (ValueError, RecursionError):
            return None
    try:
        return f"{name}({_canonical_json(args)})"
    except (ValueError, RecursionError):
        return None


# ---------------------------------------------------------------- spec parsing


class _KindExtractor(Extractor):
    def __init__(self, name: str, fn: Callable[[str], str | None]) -> None:
        self.name, self._fn = name, fn

    def __call__(self, text: str) -> str | None:
        return None if text is None else self._fn(text)


class JsonExtractor(Extractor):
    """`json:PATH`: dot-separated keys and list indexes (negative counts from the end); empty PATH is the root."""

    def __init__(self, spec: ExtractorSpec) -> None:
        self.name, self.path = spec.name, spec.path

    def __call__(self, text: str) -> str | None:
        return None if text is None else _json(text, self.path)


class RegexExtractor(Extractor):
    """`regex:PATTERN`: the last match's first group, or the whole match when the pattern has no groups."""

    def __init__(self, spec: ExtractorSpec) -> None:
        assert spec.pattern is not None
        self.name, self.pattern = spec.name, spec.pattern

    def __call__(self, text: str) -> str | None:
        if text is None:
            return None
        last = None
        for last in self.pattern.finditer(text):  # noqa: B007 -- only the last match is wanted
            pass
        if last is None:
            return None
        value = last.group(1) if self.pattern.groups else last.group(0)
        return value.strip() or None if value is not None else None


_SIMPLE: dict[str, Callable[[str], str | None]] = {"auto": _auto, "number": _number, "choice": _choice, "text": _text}


@lru_cache(maxsize=256)
def parse_extractor(spec: str) -> Extractor:
    """An extractor from its spec (parsed and checked by the policy's own grammar)."""
    parsed = parse_extractor_spec(spec)
    if parsed.kind == "json":
        return JsonExtractor(parsed)
    if parsed.kind == "regex":
        return RegexExtractor(parsed)
    return _KindExtractor(parsed.kind, _SIMPLE[parsed.kind])


def extract(text: str | None, spec: str) -> str | None:
    """The normalised answer in `text` by the extractor `spec`; None (abstain) when there is none."""
    extractor = parse_extractor(spec)
    return None if text is None else extractor(text)


_SOURCED: dict[str, Callable[[str], tuple[str | None, Source]]] = {
    "auto": _auto_sourced, "number": _number_sourced, "choice": _choice_sourced}


def answer_source(text: str, spec: str) -> Source:
    """Where `extract(text, spec)` found its answer: `marked` (a `\\boxed{}`, an answer marker such as "The answer
    is" / "Final answer:" / `####`, a verdict naming a letter), `whole` (the reply itself is the answer: `text`,
    `auto`'s free-text fallback, a complete `json:` value, the policy's own `regex:`), or `read` (only read off
    where the text stops: the last number, `= N` closing the last line, a letter-only line). A reply cut off by
    `max_tokens` is unfinished, so a `read` answer there is whatever its reasoning wrote last."""
    kind = parse_extractor_spec(spec).kind
    return _SOURCED[kind](text)[1] if kind in _SOURCED else "whole"


def extract_cut(text: str | None, spec: str) -> str | None:
    """`extract()` for a reply cut off by `max_tokens` (finish_reason `length`): its answer only when the reply
    stated it (`marked`) or is the answer as a whole; a `read` answer abstains."""
    value = extract(text, spec)
    if value is None or text is None:
        return value
    return None if answer_source(text, spec) == "read" else value
