"""Worked example (in the style of django-hordak's): a purchase, a redemption
elsewhere, a return after the points were spent, and debt repaid by the next
earning. Every step's balances are asserted."""

from ledger.commands import Burn, Earn, Reverse


async def test_return_with_points_already_spent_then_debt_repaid(
    ledger, new_member, new_partner, assert_clean
):
    member, shop_a, shop_b = await new_member(), await new_partner("a"), await new_partner("b")

    # 1. Buys for 200 EUR at partner A: earns 100 points.
    purchase = await ledger.earn(Earn.simple(member, shop_a, "A-1001", 100))
    assert purchase.balances.available == 100
    assert (await ledger.account_balance(f"partner:{shop_a}:issued")).balances[0].balance == -100

    # 2. Redeems 30 points at partner B.
    await ledger.burn(Burn(member, shop_b, "B-77", 30))
    assert (await ledger.balances(member)).available == 70
    assert (await ledger.account_balance(f"partner:{shop_b}:redeemed")).balances[0].balance == 30

    # 3. Returns half the purchase at A: 50 points clawed back, 20 remain.
    half = await ledger.reverse(
        Reverse(purchase.entry_id, 50, partner_id=shop_a, partner_reference="A-RET-1"),
        f"partner:{shop_a}",
    )
    assert half.balances.available == 20
    assert (await ledger.account_balance(f"partner:{shop_a}:issued")).balances[0].balance == -50

    # 4. Spends 20 more, then returns the other half: 50 clawed back with
    #    none left, so the member owes 50.
    await ledger.burn(Burn(member, shop_b, "B-78", 20))
    rest = await ledger.reverse(
        Reverse(purchase.entry_id, partner_id=shop_a, partner_reference="A-RET-2"),
        f"partner:{shop_a}",
    )
    assert rest.balances.available == -50
    assert (await ledger.account_balance(f"partner:{shop_a}:issued")).balances[0].balance == 0

    # 5. The next earning (80 points) repays the debt first: 30 remain.
    later = await ledger.earn(Earn.simple(member, shop_a, "A-1002", 80))
    assert later.balances.available == 30
    expiring = await ledger.member_balances(member, within_days=365 * 4)
    assert expiring.expiring_total == 30  # only the 30 left after the debt are a lot

    # The partner issued 100 + 80 and took back 100; B redeemed 50.
    assert (await ledger.account_balance(f"partner:{shop_a}:issued")).balances[0].balance == -80
    assert (await ledger.account_balance(f"partner:{shop_b}:redeemed")).balances[0].balance == 50
    await assert_clean()
