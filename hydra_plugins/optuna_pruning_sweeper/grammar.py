"""Hydra's override grammar errors in one line: its message spans four to six lines (the index parsed, the
override again, the reason, the functions available, a link), of which one says what is wrong."""

import re

# Lines of Hydra's OverrideParseException that repeat the override or point to the documentation.
FRAME = ("Error when parsing index", "Error parsing override", "See https://")


def override_error_reason(error: BaseException) -> str:
    """`Unknown function 'intervl' (available: bool,choice,...)`, `no viable alternative at input ...`."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith(FRAME)]
    if not lines:
        return "Hydra's override grammar cannot read it"
    reason = re.sub(r"^\w+ while evaluating '.*?': ", "", lines[0])
    more = "; ".join(line[0].lower() + line[1:] for line in lines[1:])
    return f"{reason} ({more})" if more else reason
