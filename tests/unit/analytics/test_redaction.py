import pytest

from shared.analytics.redaction import luhn, redact


@pytest.mark.parametrize("text, expected", [
    ("my card is 4111 1111 1111 1111 thanks", "my card is [CARD] thanks"),
    ("card 4111-1111-1111-1111", "card [CARD]"),
    ("card 4111 1111 1111 1112", "card [NUMBER]"),  # fails Luhn: a number, not a card
    ("call me on 555-123-4567 please", "call me on [PHONE] please"),
    ("or +44 20 7946 0958", "or [PHONE]"),
    ("write to jane.doe+x@mail.example.com today", "write to [EMAIL] today"),
    ("account number 12345678", "account number [NUMBER]"),
    ("four one one one one one one one one one one one one one one one", "[CARD]"),
    ("it is five five five double one two three four five six", "it is [PHONE]"),
    ("I waited 3 days and paid 250 dollars", "I waited 3 days and paid 250 dollars"),
    ("oh I see, one moment", "oh I see, one moment"),
    ("", ""),
])
def test_redact(text, expected):
    assert redact(text)[0] == expected


def test_spans_point_into_the_original():
    text = "card 4111111111111111 and mail a@b.io"
    _, spans = redact(text)
    assert [(s.kind, text[s.start:s.end]) for s in spans] == [("CARD", "4111111111111111"), ("EMAIL", "a@b.io")]


def test_luhn():
    assert luhn("4111111111111111") and luhn("79927398713") and not luhn("79927398710")
