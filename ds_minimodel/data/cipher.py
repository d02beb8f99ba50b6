"""The cipher language: a Latin-script language written in Cyrillic letters, one letter for one.

A target language whose right answer is known (issue 25; the "fake English" of K et al. 2020 and
Dufter & Schütze 2020). Every ASCII Latin letter maps to its own Cyrillic letter, upper to upper
and lower to lower; everything else (digits, punctuation, spaces, and letters outside a-z such
as "æ") is kept. So:

- the ciphered text has exactly the source text's word, digit and punctuation structure, and
  sentencepiece's whitespace, digit and script splitting behave alike on both;
- the source sentencepiece model with the cipher applied to every piece segments ciphered text
  as the source segments the plain text (data/cipher_vocab.py checks that on every verse), so
  every row of the ciphered vocabulary has a known correct source row;
- the map is a bijection only where the source text holds none of the Cyrillic target letters:
  `check_plain` refuses text that does (a Russian Bible, say), since its cipher could not be read
  back.

The 26 + 26 targets are letters of the basic Russian alphabet (U+0410..U+044F), chosen by sound
so a ciphered text stays half-readable in logs. None has a canonical or compatibility
decomposition (Й is left out: NFD splits it into И and a combining breve), so NFKC, which
sentencepiece's default normalizer applies, leaves them as it leaves ASCII letters.

A cipher language's code is the source's with `CIPHER_SUFFIX` ("en-cipher", "sw-cipher"): the
recipe `bible-en-cipher`, the packs' language, and the tasks' target language.
"""

from __future__ import annotations

import string
import unicodedata
from typing import Iterable

from ds_minimodel.errors import InvalidValueError

CIPHER_SUFFIX = "-cipher"
NAME = "latin-to-cyrillic-v1"  # recorded in index.json and known_rows.json: a changed map is a new name

# a..z -> Cyrillic lower case, by sound where there is one (c -> ц, q -> щ, w -> ш, x -> ч, y -> ы).
_LOWER_TARGETS = "абцдефгхижклмнопщрстувшчыз"
LOWER = dict(zip(string.ascii_lowercase, _LOWER_TARGETS))
UPPER = {a.upper(): c.upper() for a, c in LOWER.items()}
ENCIPHER = {**LOWER, **UPPER}
DECIPHER = {c: a for a, c in ENCIPHER.items()}
TARGET_LETTERS = frozenset(DECIPHER)

_ENCIPHER_TABLE = str.maketrans(ENCIPHER)
_DECIPHER_TABLE = str.maketrans(DECIPHER)


def _check_map() -> None:
    # Internal invariants of the table above (a typo there would silently break the bijection).
    assert len(TARGET_LETTERS) == 52, "the cipher must map 52 letters onto 52 distinct letters"
    for latin, cyr in ENCIPHER.items():
        assert unicodedata.name(cyr).startswith("CYRILLIC"), cyr
        assert unicodedata.normalize("NFKD", cyr) == cyr, f"{cyr!r} decomposes under NFKD"
        assert cyr.isupper() == latin.isupper() and cyr.lower() == ENCIPHER[latin.lower()], (latin, cyr)


_check_map()


def encipher(text: str) -> str:
    """`text` with every a-z / A-Z letter replaced by its Cyrillic letter."""
    return text.translate(_ENCIPHER_TABLE)


def decipher(text: str) -> str:
    """The inverse of `encipher` (on text that `check_plain` accepts)."""
    return text.translate(_DECIPHER_TABLE)


def target_letters_in(text: str) -> list[str]:
    """The cipher's target letters that `text` contains, sorted (none for a Latin-script text)."""
    return sorted(TARGET_LETTERS.intersection(text))


def check_plain(texts: Iterable[str], what: str) -> None:
    """Refuse source text that already holds a target letter: its cipher would not be a bijection
    (deciphering would turn the source's own Cyrillic letters into Latin ones). `what` names the
    text in the error (a language and translation, a tokenizer file)."""
    found: set[str] = set()
    for text in texts:
        found.update(TARGET_LETTERS.intersection(text))
    if found:
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in sorted(found)[:5])
        raise InvalidValueError(f"{what} contains {len(found)} of the cipher's Cyrillic target letters ({shown}"
                                f"{', ...' if len(found) > 5 else ''}): its ciphered text could not be deciphered; "
                                f"the cipher is for text without Cyrillic letters")


def is_cipher_code(code: str) -> bool:
    return code.endswith(CIPHER_SUFFIX) and len(code) > len(CIPHER_SUFFIX)


def cipher_code(code: str) -> str:
    """"en" -> "en-cipher"."""
    return code + CIPHER_SUFFIX


def plain_code(code: str) -> str:
    """"en-cipher" -> "en" (the language that is ciphered)."""
    if not is_cipher_code(code):
        raise InvalidValueError(f"language {code!r} is not a cipher language (its code would end in {CIPHER_SUFFIX})")
    return code[:-len(CIPHER_SUFFIX)]


def describe() -> dict:
    """What index.json and known_rows.json record about the cipher."""
    return {"name": NAME, "map": "".join(string.ascii_lowercase) + " -> " + _LOWER_TARGETS + " (upper case alike)",
            "kept": "everything but a-z and A-Z (digits, punctuation, spaces, other letters)"}
