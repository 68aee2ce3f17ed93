"""Whole programmes as data (partners, contracts, rules, coupons, members,
rewards) with a worked example's story, loaded through the real services:
`loyalty demo --programme NAME` (api/cli_programmes.py).

A programme's module offers `EXPIRY_POLICY` (what its lots are posted
with), `async define(ledger, registry)` (its partners, rules, members and
catalogue, no story), `STORY` (steps, programmes/story.py) and
`StoryPlayer(ledger, registry)` (plays a step through the services),
`async load(ledger, registry)` (define it and play its story once; `[]`
when it is loaded already: one outcome per step otherwise, each with the
step's `at`, `what`, its `result` and the members' `available` points
after it) and `async available(ledger)` (its members' available points).
tests/programmes/http_player.py plays the same stories over the HTTP API."""
