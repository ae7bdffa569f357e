"""Kubernetes resource quantities (``512Mi``, ``1.5``, ``250m``, ``1e3``).

The syntax follows Kubernetes' ``resource.Quantity``: a non-negative decimal
number with at most one suffix, binary (``Ki`` … ``Ei``), decimal (``n u m k M
G T P E``) or an exponent (``e3``, ``E-2``).
https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/
"""

from __future__ import annotations

import re
from decimal import Decimal, DecimalException

_QUANTITY = re.compile(
    r"\+?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,3})?"
)

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12}
_DECIMAL |= {"P": 15, "E": 18}


def parse(text: str) -> Decimal:
    """The value of a quantity, in base units (bytes, cores).

    Raises:
        ValueError: ``text`` is not a non-negative Kubernetes quantity.
    """
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (like 512Mi or 0.5)")

    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["number"])
        if suffix in _BINARY:
            return number * Decimal(1024) ** _BINARY[suffix]
        if suffix in _DECIMAL:
            return number.scaleb(_DECIMAL[suffix])
        if suffix:
            return number.scaleb(int(suffix[1:]))
    except DecimalException as err:
        raise ValueError(f"{text!r} is out of range") from err

    return number


def is_valid(text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False

    return True
