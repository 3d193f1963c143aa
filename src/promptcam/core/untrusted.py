"""JSON from outside (sidecars, detector files, journals, request bodies) parsed without letting it crash a process.

``json.loads`` raises ``RecursionError`` on deep nesting (``[[[[...]]]]`` 100,000 deep is 200 KB) and
``MemoryError`` on a value too large to build; neither is a ``ValueError``, so a caller that catches
only that lets one hostile file stop a station. ``loads_untrusted`` turns all three into one
``UntrustedJSONError`` (a ``ValueError``) that names where the text came from.
"""

from __future__ import annotations

import json
from typing import Any


class UntrustedJSONError(ValueError):
    """Text from outside that is not JSON this program can take: malformed, too deep or too large."""

    malformed = False


def loads_untrusted(text: str | bytes, where: str) -> Any:
    """``json.loads`` of text from outside.

    Raises:
        UntrustedJSONError: malformed (its ``malformed`` is True: possibly an upload still in progress),
            nested too deeply, or too large to hold (``malformed`` False: no wait will mend it).
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise UntrustedJSONError(f"{where}: JSON nested too deeply") from None
    except MemoryError:
        raise UntrustedJSONError(f"{where}: JSON too large to hold in memory") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError of bytes
        error = UntrustedJSONError(f"{where}: not JSON ({exc})")
        error.malformed = True
        raise error from exc
