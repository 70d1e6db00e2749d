"""Each vocabulary token's raw bytes, for the output evidence (troop_common.evidence): the
worker spells each token it generated with them, and the verifier checks a token's id
against them.

Byte-level BPE tokenizers (GPT-2's, SmolLM2's) spell every byte as one printable
character; undoing that map gives a token's exact bytes, even when it holds only part of
a multi-byte UTF-8 character (which decoding the single token would turn into U+FFFD).
Special tokens (end of sequence, chat markers) are never shown as text: their bytes are
empty. A token that is not spelled in byte-level characters (another tokenizer's) falls
back to the UTF-8 of its decoded text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-character map, inverted: the character each byte is spelled with."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


def token_bytes_table(
    pieces: list[str], special: set[int], decode: Callable[[int], str]
) -> list[bytes]:
    """The bytes of token id i at index i: `pieces` are the tokenizer's spellings of the
    ids (convert_ids_to_tokens), `special` the ids never shown, `decode` one id's text."""
    alphabet = byte_level_alphabet()
    table = []
    for token_id, piece in enumerate(pieces):
        if token_id in special:
            table.append(b"")
        elif piece and all(char in alphabet for char in piece):
            table.append(bytes(alphabet[char] for char in piece))
        else:
            table.append(decode(token_id).encode())
    return table


def vocabulary_bytes(tokenizer: Any) -> list[bytes]:
    """Every token id's raw bytes for a transformers tokenizer, special tokens empty."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = {i for i, added in tokenizer.added_tokens_decoder.items() if added.special}
    special |= set(tokenizer.all_special_ids)

    def decode(token_id: int) -> str:
        text = tokenizer.decode(
            [token_id], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return str(text)

    return token_bytes_table([p if isinstance(p, str) else "" for p in pieces], special, decode)
