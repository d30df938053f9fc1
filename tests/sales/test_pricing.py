"""Quote arithmetic on its own: exact cents, round half up, the overall discount shared out exactly."""

from __future__ import annotations

from decimal import Decimal as D

from crm_sales.domain.pricing import Line, price, share_out


def line(qty: str, unit_price: str, discount: str = "0", tax: str = "13") -> Line:
    return Line("p", "SKU", "x", "台", D(qty), D(unit_price), D(discount), D(tax))


def test_line_and_overall_discounts_tax_and_totals_are_exact_to_the_cent():
    priced = price([line("3", "0.10"), line("1", "19.99", discount="10", tax="6")], D("5"))
    a, b = priced.lines
    assert (a["list_amount"], a["discount_amount"], a["net_amount"]) == ("0.30", "0.00", "0.30")
    assert (b["list_amount"], b["discount_amount"], b["net_amount"]) == ("19.99", "2.00", "17.99")
    assert priced.subtotal == D("18.29")
    assert priced.overall_discount_amount == D("0.91")  # 0.9145 → 0.91
    # Shares of 0.91 over nets 0.30 / 17.99: 0.01 and 0.90; tax 13 % of 0.29 = 0.04, 6 % of 17.09 = 1.03.
    assert (a["tax_amount"], b["tax_amount"]) == ("0.04", "1.03")
    assert priced.tax_total == D("1.07")
    assert priced.total == D("18.29") - D("0.91") + D("1.07") == D("18.45")
    assert priced.discount_total == D("2.91") and priced.list_total == D("20.29")
    assert priced.effective_discount_percent == D("14.34")


def test_half_a_cent_rounds_up():
    assert price([line("1", "0.005", tax="0")], D(0)).total == D("0.01")
    assert (
        price([line("1", "100.00", discount="12.345", tax="0")], D(0)).lines[0]["discount_amount"] == "12.35"
    )


def test_shares_always_add_up_to_the_amount():
    for amount, weights in (
        (D("1.00"), [D(1)] * 3),
        (D("0.05"), [D("0.01"), D("99.99")]),
        (D("10.01"), [D(3), D(3), D(3)]),
    ):
        parts = share_out(amount, weights)
        assert sum(parts) == amount and all(p >= 0 for p in parts)
    assert share_out(D("1.00"), [D(1), D(1), D(1)]) == [D("0.34"), D("0.33"), D("0.33")]


def test_the_threshold_compares_exactly():
    priced = price([line("1", "100", discount="15", tax="0")], D(0))
    assert not priced.exceeds(D("15")) and priced.exceeds(D("14.9999"))
