"""Paid brand clubs (a fee in money, member-only benefits as rules) and a
producer's service module (members' registered products, a service bonus at
its dealers)."""
