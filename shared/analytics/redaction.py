"""PII in transcripts: digit runs (cards, phone numbers, account and other numbers), e-mail addresses and
numbers still spelled out after ITN become typed placeholders such as [CARD] (docs/METRICS.md, Redaction).

`redact(text)` returns the redacted text and the spans it replaced (character offsets in the original).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("CARD", "PHONE", "EMAIL", "NUMBER")
MIN_DIGITS = 4  # shorter digit runs (counts, days, amounts under 1000) are kept

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
# Digits, optionally grouped by single spaces, dashes, dots or brackets, as ITN writes card and phone numbers
# ("4111 1111 1111 1111", "+1 (555) 123-4567"). A leading + is kept for phones.
DIGIT_RUN = re.compile(r"\+?\(?\d(?:[\d]|[ .\-/]?\(?\d|\)[ .\-]?\d)*")
SPELLED = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "nine": "9"}
MULTIPLIERS = {"double": 2, "triple": 3}
_SPELLED_WORD = "|".join(sorted(list(SPELLED) + list(MULTIPLIERS), key=len, reverse=True))
# A run of spelled-out digits ("four one one one ...", "double five"), with spaces, commas or dashes between.
SPELLED_RUN = re.compile(rf"\b(?:{_SPELLED_WORD})(?:[\s,\-]+(?:{_SPELLED_WORD}))+\b", re.IGNORECASE)


_ANY_DIGIT = re.compile(r"\d")
_WORDS = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Span:
    kind: str
    start: int  # character offsets in the original text
    end: int


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def classify(digits: str, raw: str) -> str | None:
    """The kind of a digit run, or None if it is too short to be personal data."""
    n = len(digits)
    if n < MIN_DIGITS:
        return None
    if 13 <= n <= 19 and luhn(digits):
        return "CARD"
    if raw.startswith("+") and 8 <= n <= 15:
        return "PHONE"
    grouped = re.search(r"[ .\-()]", raw) is not None
    if 10 <= n <= 11 and (grouped or n == 10 or digits.startswith("1") or digits.startswith("0")):
        return "PHONE"
    if n == 7 and grouped:
        return "PHONE"
    return "NUMBER"


def spelled_digits(run: str) -> str:
    out = []
    pending = 1
    for word in re.findall(r"[a-z]+", run.lower()):
        if word in MULTIPLIERS:
            pending = MULTIPLIERS[word]
        else:
            out.append(SPELLED[word] * pending)
            pending = 1
    return "".join(out)


def find(text: str) -> list[Span]:
    """PII spans in `text`, in order, never overlapping (e-mail addresses first, then digits, then words)."""
    spans: list[Span] = []

    def free(s: int, e: int) -> bool:
        return all(e <= x.start or s >= x.end for x in spans)

    for m in EMAIL.finditer(text) if "@" in text else ():
        spans.append(Span("EMAIL", m.start(), m.end()))
    for m in DIGIT_RUN.finditer(text) if _ANY_DIGIT.search(text) else ():
        raw = m.group().rstrip(" .-/")
        digits = re.sub(r"\D", "", raw)
        kind = classify(digits, raw)
        if kind and free(m.start(), m.start() + len(raw)):
            spans.append(Span(kind, m.start(), m.start() + len(raw)))
    words = _WORDS.findall(text.lower())
    spelled = sum(w in SPELLED or w in MULTIPLIERS for w in words)
    for m in SPELLED_RUN.finditer(text) if spelled >= 2 else ():
        digits = spelled_digits(m.group())
        kind = classify(digits, m.group())
        if kind and free(m.start(), m.end()):
            spans.append(Span(kind, m.start(), m.end()))
    return sorted(spans, key=lambda s: s.start)


def redact(text: str | None) -> tuple[str | None, list[Span]]:
    """The text with every PII span replaced by its placeholder, and the spans (offsets in the original)."""
    if not text:
        return text, []
    spans = find(text)
    out, at = [], 0
    for s in spans:
        out.append(text[at:s.start])
        out.append(f"[{s.kind}]")
        at = s.end
    out.append(text[at:])
    return "".join(out), spans
