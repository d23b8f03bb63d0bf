"""Reading the user's text files (prompt files, JSONL prompt lists, ``<image>.txt`` sidecars) with one
rule: UTF-8 unless an encoding is given, and a clear error naming the file, the byte offset and the
fix when the bytes are not in that encoding (Windows-1252 files are common)."""

from __future__ import annotations

import codecs
from pathlib import Path

from ..errors import InputError


def check_encoding(encoding: str | None) -> str | None:
    """Return ``encoding`` if Python knows it (None stays None = UTF-8).

    Raises:
        InputError: an unknown codec name (names the common ones).
    """
    if encoding is None:
        return None
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise InputError(f"Unknown text encoding {encoding[:40]!r}: use a Python codec name such as utf-8, cp1252, "
                         "latin-1 or utf-16.") from None
    return encoding


def read_text_file(path: str | Path, what: str = "Text file", encoding: str | None = None) -> str:
    """The text of a user's file.

    Args:
        path: the file. what: how the error messages name it (e.g. ``"--prompt-file"``).
        encoding: a Python codec name, or None for UTF-8 (a UTF-8 byte-order mark is dropped, as
            Windows editors write one).
    Returns:
        the decoded text (newlines as in the file).
    Raises:
        InputError: missing file, a folder, an unreadable file, or bytes that are not valid in the
            encoding (the message gives the byte offset and value and says to save the file as
            UTF-8 or to pass ``--encoding``).
    """
    encoding = check_encoding(encoding)
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder; give the text file itself.")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} not found: {p}.") from None
    except OSError as exc:
        raise InputError(f"{what} {p} cannot be read ({exc.strerror or exc}).") from None
    codec = encoding or "utf-8-sig"
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        name = encoding or "UTF-8"
        raise InputError(f"{what} {p} is not {name} text (byte 0x{bad} at offset {exc.start} cannot be decoded). Save "
                         "it as UTF-8, or give its encoding with --encoding (e.g. --encoding cp1252 for a Windows "
                         "text file).") from None
