"""The member registry: who the programme's members are (enrolment, status,
the little personal data the programme keeps), and the operations on a
member as a whole: close, merge two accounts of one person, erase personal
data. Points move only through the ledger's interface (`LedgerService`);
what belongs to the programme (tiers, cards, coupons) through the programme's."""
