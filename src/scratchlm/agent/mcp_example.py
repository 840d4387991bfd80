"""A small example MCP server (stdio) for the agent: word counting and unit conversion.
Run it with `python -m scratchlm.agent.mcp_example`; the agent starts it with `--mcp "python -m
scratchlm.agent.mcp_example"`."""

from __future__ import annotations

# Length units in metres, mass units in kilograms: a conversion is value × from / to within one family.
LENGTH = {"mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0, "in": 0.0254, "ft": 0.3048, "mi": 1609.344}
MASS = {"g": 0.001, "kg": 1.0, "lb": 0.45359237, "oz": 0.028349523125}


def word_count(text: str) -> int:
    """Count the words in a text (runs of non-space characters; each CJK character counts as one word).

    Args:
        text: The text whose words are counted.
    """
    words = 0
    for token in text.split():
        cjk = sum(1 for ch in token if "\u4e00" <= ch <= "\u9fff")
        words += cjk + (1 if len(token) > cjk else 0)
    return words


def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """Convert a length (mm, cm, m, km, in, ft, mi) or a mass (g, kg, lb, oz) to another unit of the same kind.

    Args:
        value: The amount to convert.
        from_unit: The unit the value is in.
        to_unit: The unit to convert to.
    """
    for family in (LENGTH, MASS):
        if from_unit in family and to_unit in family:
            return f"{value * family[from_unit] / family[to_unit]:.6g} {to_unit}"
    from mcp.server.mcpserver.exceptions import ToolError  # an anticipated failure: its message reaches the model

    known = ", ".join(list(LENGTH) + list(MASS))
    raise ToolError(f"cannot convert {from_unit!r} to {to_unit!r}; units of one kind only, from: {known}")


def build_server():
    """The MCPServer with both tools registered."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("scratchlm-example", log_level="WARNING")  # its INFO lines would fill the agent's terminal
    server.tool()(word_count)
    server.tool()(convert_units)
    return server


if __name__ == "__main__":
    build_server().run("stdio")
