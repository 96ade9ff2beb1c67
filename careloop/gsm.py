"""Text messages in GSM-7, the 7-bit alphabet that fits 160 characters in one SMS segment.

One character outside it (a curly quote, "ë", "ễ", a name in Cyrillic or Han script) makes
the whole text UCS-2, cut to 70 characters a segment, so a careloop text would cost two or
three. :func:`to_gsm7` is the one place a text is made GSM-7: look-alike punctuation is
replaced, anything else outside the alphabet is transliterated with ``anyascii`` ("Zoë" →
"Zoe", "Nguyễn" → "Nguyen", "Мария" → "Mariya"). The renderer, the Twilio channel and the
file outbox all call it, so ``sms.log`` holds exactly the text Twilio gets.
"""

from __future__ import annotations

import re

from anyascii import anyascii

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""GSM 03.38's basic character set: one septet each."""

GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
"""Reached through the escape character: two septets each."""

SEGMENT = 160
"""Septets in one single-part GSM-7 SMS."""

_WORD = re.compile(r"\S+")

_LOOK_ALIKES = str.maketrans(
    {
        "\u00a0": " ",  # no-break space
        "\u2002": " ",  # en space
        "\u2003": " ",  # em space
        "\u2007": " ",  # figure space
        "\u2009": " ",  # thin space
        "\u200a": " ",  # hair space
        "\u202f": " ",  # narrow no-break space
        "\u200b": "",  # zero-width space
        "\u00ad": "",  # soft hyphen
        "\ufeff": "",  # byte-order mark / zero-width no-break space
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "`": "'",
        "\u00b4": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
        "\u2033": '"',
        "\u2010": "-",  # hyphen
        "\u2011": "-",  # non-breaking hyphen
        "\u2012": "-",  # figure dash
        "\u2013": "-",  # en dash
        "\u2014": "-",  # em dash
        "\u2015": "-",  # horizontal bar
        "\u2212": "-",  # minus sign
        "\u2026": "...",
        "\t": " ",
    }
)


def sms_safe(text: str) -> str:
    """Replace look-alike characters that silently switch an SMS to UCS-2 with GSM-7 ones.

    One curly quote or no-break space makes Twilio encode the whole text as UCS-2, which
    cuts a segment from 160 to 70 characters and so multiplies the cost. Letters are left
    alone here; :func:`to_gsm7` transliterates them.
    """
    return text.translate(_LOOK_ALIKES)


def _gsm7_word(match: re.Match) -> str:
    word = match.group(0)
    if is_gsm7(word):
        return word
    # The whole word, not letter by letter: "Σωκράτης" becomes "Sokratis", not "Σokratis".
    spelled = anyascii(word).translate(_LOOK_ALIKES)
    return "".join(c for c in spelled if c in GSM7_BASIC or c in GSM7_EXTENSION)


def to_gsm7(text: str) -> str:
    """``text`` in GSM-7 characters only: look-alikes replaced, each word holding another
    character transliterated (``anyascii``), anything with no spelling in the alphabet
    dropped. GSM-7 text is returned unchanged, so calling it twice changes nothing."""
    return _WORD.sub(_gsm7_word, sms_safe(text))


def is_gsm7(text: str) -> bool:
    return all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text)


def gsm7_length(text: str) -> int:
    """Septets ``text`` takes in GSM-7 (extension characters count two)."""
    return sum(2 if char in GSM7_EXTENSION else 1 for char in text)
