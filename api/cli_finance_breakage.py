"""`loyalty finance breakage`, `breakage-estimate` and `breakage-estimates`:
the IFRS 15 breakage report and the expected redemption rates finance sets
(finance/breakage.py; the API's /v1/finance/breakage gives the same figures).

Bad input (a period, a rate outside (0, 1], a back-dated estimate, an empty
reason, trailing months outside 1..120) is one line and exit code 2.
Imported from api/cli.py so the commands register on the `finance` group."""

import click

from api.cli_finance import BadInput, _json, _run, finance
from finance.errors import (
    BreakageEstimateBackdated,
    InvalidBreakageRate,
    InvalidPeriod,
    InvalidTrailingMonths,
)


def _bad(error) -> BadInput:
    return BadInput(f"{error.code}: {error.detail}")


def _rate_method(rate) -> str:
    history = rate.history
    if rate.method == "estimate":
        return f"estimate #{rate.estimate.id} by {rate.estimate.set_by}"
    if rate.method == "history":
        return (
            f"history, {history.months} months: {history.redeemed:,} redeemed, "
            f"{history.expired:,} expired"
        )
    return f"default (no redemptions in the {history.months} months before)"


def show_breakage(report) -> None:
    from partners.money import units

    click.echo(
        f"breakage (IFRS 15) {report.period_from} .. {report.period_to} (booking time), "
        f"history over {report.trailing_months} months"
    )
    start, end = report.start, report.end
    rows: list[tuple[str, str, str]] = [
        ("points issued", f"{start.issued:,}", f"{end.issued:,}"),
        ("  partner-funded", f"{start.issued_partner:,}", f"{end.issued_partner:,}"),
        ("  programme promotions", f"{start.issued_promotions:,}", f"{end.issued_promotions:,}"),
        ("points redeemed", f"{start.redeemed:,}", f"{end.redeemed:,}"),
        ("points expired", f"{start.expired:,}", f"{end.expired:,}"),
        ("expected redemption rate", str(start.rate.rate), str(end.rate.rate)),
        (
            "expected redemptions",
            f"{start.expected_redemptions:,}",
            f"{end.expected_redemptions:,}",
        ),
        ("expected breakage", f"{start.expected_breakage:,}", f"{end.expected_breakage:,}"),
    ]
    for line in report.currencies:
        c = line.currency

        def money(minor: int, currency: str = c) -> str:
            return f"{units(minor, currency):,}"

        rows += [
            (f"{c} consideration", money(line.consideration_start), money(line.consideration)),
            (
                f"{c} cumulative revenue",
                money(line.cumulative_revenue_start),
                money(line.cumulative_revenue),
            ),
            (
                f"{c} deferred revenue",
                money(line.deferred_revenue_start),
                money(line.deferred_revenue),
            ),
            (f"{c} revenue of the period", "", money(line.revenue)),
        ]
    width = max(len(r[0]) for r in rows) + 2
    click.echo(f"{'':<{width}}{'start':>16}{'end':>16}")
    for label, before, after in rows:
        click.echo(f"{label:<{width}}{before:>16}{after:>16}")
    click.echo(f"rate at the start: {_rate_method(start.rate)}")
    click.echo(f"rate at the end:   {_rate_method(end.rate)}")
    if not report.currencies:
        click.echo("no partner-funded points issued: no consideration to recognise")


@finance.command("breakage")
@click.option("--from", "start", default=None, help="First instant (default: the first entry).")
@click.option("--to", "end", default=None, help="End of the period, excluded (default: now).")
@click.option(
    "--trailing-months",
    "months",
    type=int,
    default=12,
    show_default=True,
    help="History window of the rate when finance set none.",
)
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def breakage(start: str | None, end: str | None, months: int, as_json: bool) -> None:
    """Breakage (IFRS 15) of [--from, --to): points issued and redeemed, the
    expected redemption rate at each end and where it comes from (finance's
    estimate, the trailing history or the default 0.95), the consideration,
    cumulative and period revenue and deferred revenue per currency."""
    from finance.breakage import (
        breakage_period,
        breakage_report,
        check_trailing_months,
    )

    try:
        period = breakage_period(start, end)
        check_trailing_months(months)
    except (InvalidPeriod, InvalidTrailingMonths) as error:
        raise _bad(error) from None
    report = _run(lambda engine: breakage_report(engine, period, months))
    if as_json:
        _json(report)
    else:
        show_breakage(report)


@finance.command("breakage-estimate")
@click.option("--rate", required=True, help="Expected redemption rate, in (0, 1], e.g. 0.97.")
@click.option("--reason", required=True, help="What the estimate is based on.")
@click.option(
    "--effective-from",
    "effective_from",
    default=None,
    help="When it takes effect (default: now; never earlier).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the stored estimate as JSON.")
def breakage_estimate(rate: str, reason: str, effective_from: str | None, as_json: bool) -> None:
    """Set the expected redemption rate: in force from now (or a later
    --effective-from) until a later estimate; it wins over the history."""
    from api.cli_support import actor
    from finance.breakage import (
        check_rate,
        check_reason,
        set_estimate,
    )
    from finance.period import parse_instant
    from ledger.errors import ReasonRequired

    try:
        checked, why = check_rate(rate), check_reason(reason)
        moment = (
            parse_instant(effective_from, "effective-from") if effective_from is not None else None
        )
    except (InvalidBreakageRate, ReasonRequired, InvalidPeriod) as error:
        raise _bad(error) from None
    try:
        estimate = _run(lambda engine: set_estimate(engine, checked, why, actor(), moment))
    except BreakageEstimateBackdated as error:
        raise _bad(error) from None
    if as_json:
        _json(estimate)
        return
    click.echo(
        f"estimate #{estimate.id}: rate {estimate.rate} from {estimate.effective_from} "
        f"(set by {estimate.set_by}: {estimate.reason})"
    )


@finance.command("breakage-estimates")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def breakage_estimates(as_json: bool) -> None:
    """Every expected redemption rate finance set, in the order they take effect."""
    from finance.breakage import list_estimates

    estimates = _run(list_estimates)
    if as_json:
        _json(estimates)
        return
    if not estimates:
        click.echo("no estimates: the rate comes from the history (or the default 0.95)")
    for e in estimates:
        click.echo(f"#{e.id}  {e.effective_from}  {e.rate}  {e.set_by}  {e.reason}")
