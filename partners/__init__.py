"""Partners and the programme's economics: earn and burn rules, promotions,
coupons and tiers as versioned data, the pure earning engine, and the service
that applies them to the ledger. May import ledger; never api."""
