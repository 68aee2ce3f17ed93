"""Insights: what the programme's own data says about its members, partners
and offers (Pareto and Gini, RFM segments, lost members, churn and cohort
retention, cross-shopping, promotion uplift, tiers and the expiry outlook).

Reads only, each figure in one read-only snapshot (`insights.reading`), so
it can run on a replica (`LOYALTY_ANALYTICS_DATABASE_URL`). The heavy work is
set-based SQL (window functions, `ntile`); what is left (shares, Gini, the
segment mapping, tables for the terminal) are plain functions over plain
data. Imports neither litestar, redis nor jwt; api/ serves it over JSON
(api/routes/insights.py) and the command line (api/cli_insights.py)."""
