"""Reading query plans in tests: what a statement's plan touched."""


def rows_touched(plan: dict, tables: set[str]) -> int:
    """Rows the plan's nodes on `tables` produced or threw away, over all loops."""
    touched = 0
    if plan.get("Relation Name") in tables:
        per_loop = (
            plan.get("Actual Rows", 0)
            + plan.get("Rows Removed by Filter", 0)
            + plan.get("Rows Removed by Index Recheck", 0)
        )
        touched += per_loop * plan.get("Actual Loops", 1)
    for child in plan.get("Plans", ()):
        touched += rows_touched(child, tables)
    return touched


def relations(plan: dict) -> set[str]:
    """Every table and partition the plan reads."""
    found = {plan["Relation Name"]} if "Relation Name" in plan else set()
    for child in plan.get("Plans", ()):
        found |= relations(child)
    return found
