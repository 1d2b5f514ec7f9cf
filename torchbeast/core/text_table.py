"""Plain-text tables for the terminal: the first column left-aligned, the others right-aligned."""
from typing import List, Optional, Sequence


def number(value: Optional[float], digits: int = 2) -> str:
    """`value` with `digits` decimals, or "-" where there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The header, a rule of dashes and the rows, each column as wide as its widest cell."""
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    rule: List[str] = ["-" * w for w in widths]
    return "\n".join([line(header), "  ".join(rule), *map(line, rows)])
