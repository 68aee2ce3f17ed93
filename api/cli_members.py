"""`loyalty member`: the member registry from the command line: enrol, find,
show, close, merge, erase; issue and block cards."""

import click
import msgspec

from api.cli_support import actor, members_of, partner_registry, run, show, table


@click.group()
def member() -> None:
    """The member registry: enrol, find, close, merge, erase; cards."""


@member.command("enrol")
@click.argument("member_id", required=False)
@click.option("--name", "display_name", default=None, help="Display name (optional).")
@click.option("--email", default=None, help="E-mail address (optional).")
def enrol_member(member_id, display_name, email) -> None:
    """Enrol a member (MEMBER_ID, or a member number is assigned)."""
    from members.registry import MemberInput

    data = MemberInput(member_id, display_name, email)
    view = run(lambda s, ledger: members_of(s, ledger).enrol(data, actor()))
    show(view, "id", "status", "enrolled_at")


@member.command("list")
@click.option("--prefix", default=None, help="Member ids starting with this.")
@click.option("--card", default=None, help="The member holding this card number.")
@click.option("--email", default=None, help="Members with this e-mail address.")
@click.option("--status", type=click.Choice(("active", "closed", "merged")), default=None)
@click.option("--after", default=None, help="Start after this member id (the next page).")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
def list_members(prefix, card, email, status, after, limit) -> None:
    """List members in id order."""
    page = run(
        lambda s, ledger: members_of(s, ledger).search(
            prefix=prefix, card=card, email=email, status=status, after=after, limit=limit
        )
    )
    table(
        [msgspec.to_builtins(m) for m in page.members],
        ("id", "status", "enrolled_at", "display_name", "merged_into"),
    )
    if page.next_cursor:
        click.echo(f"more: --after {page.next_cursor}", err=True)


@member.command("show")
@click.argument("member_id")
def show_member(member_id) -> None:
    """A member's record, balances, cards and events."""

    async def read(settings, ledger):
        members = members_of(settings, ledger)
        return (
            await members.member(member_id),
            await ledger.balances(member_id),
            await partner_registry(settings, ledger).cards(member_id),
            await members.events(member_id),
        )

    view, balances, cards, events = run(read)
    show(view)
    show(balances, "available", "pending", "held", "qp")
    if cards:
        table(cards, ("card_number", "status", "issued_at"))
    table(
        [
            {**msgspec.to_builtins(e), "detail": msgspec.json.encode(e.detail).decode()}
            for e in events
        ],
        ("at", "event", "actor", "entry_id", "detail"),
    )


@member.command("close")
@click.argument("member_id")
@click.option("--reason", required=True, help="Why (kept in the journal and the member's events).")
@click.option(
    "--forfeit",
    is_flag=True,
    help="Forfeit points left to program:expired (without it, points left refuse the close).",
)
def close_member(member_id, reason, forfeit) -> None:
    """Close a member's account."""
    from members.registry import CloseInput

    data = CloseInput(reason, "forfeit" if forfeit else "refuse")
    closure = run(lambda s, ledger: members_of(s, ledger).close(member_id, data, actor()))
    show(closure.member, "id", "status", "closed_at")
    click.echo(f"forfeit entry: {closure.forfeit_entry_id or '-'}")


@member.command("merge")
@click.argument("source")
@click.argument("into")
@click.option("--reason", required=True, help="Why (kept in the journal and both members' events).")
def merge_members(source, into, reason) -> None:
    """Merge SOURCE into INTO (two accounts of one person): points, pending
    points, QP, the higher tier, cards and unused coupons move; SOURCE closes."""
    from members.registry import MergeInput

    merger = run(
        lambda s, ledger: members_of(s, ledger).merge(source, MergeInput(into, reason), actor())
    )
    click.echo(f"{source} merged into {into}; entries: {merger.entry_ids or '-'}")
    click.echo("moved:")
    show({f"  {name}": value for name, value in merger.moved.items()})


@member.command("erase")
@click.argument("member_id")
def erase_member(member_id) -> None:
    """Erase a closed member's personal data (GDPR art. 17); the journal stays."""
    view = run(lambda s, ledger: members_of(s, ledger).erase(member_id, actor()))
    show(view, "id", "status", "erased_at")


@member.command("issue-card")
@click.argument("member_id")
@click.argument("card_number")
def issue_card(member_id, card_number) -> None:
    """Issue a card (8 to 19 digits) to an active member."""
    card = run(
        lambda s, ledger: partner_registry(s, ledger).issue_card(member_id, card_number, actor())
    )
    click.echo(f"card {card['card_number']} issued to {card['member_id']}")


@member.command("block-card")
@click.argument("member_id")
@click.argument("card_number")
def block_card(member_id, card_number) -> None:
    """Block a member's card (lost or stolen)."""
    run(lambda s, ledger: partner_registry(s, ledger).block_card(member_id, card_number, actor()))
    click.echo(f"card {card_number} blocked")
